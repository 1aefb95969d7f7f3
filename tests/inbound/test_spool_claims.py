"""A claim is the right to finish a row: a worker whose lease ran out (it hung, or
was paused) finds, when it finally takes the write lock, that the rows a new claim
took are no longer its own, and a load of a claimed row reads its envelope from the
claim."""

from __future__ import annotations

from typing import Any

import pytest

from maildesk import leases
from maildesk.clock import ManualClock
from maildesk.inbound.store import Envelope
from maildesk.services import Services
from tests.conftest import PG_URL
from tests.helpers import history_with_waiting_rows, sqlite_plans


def test_a_worker_that_lost_its_lease_locks_only_what_nobody_claimed_since(
    services: Services, clock: ManualClock
) -> None:
    store = services.store
    ids = store.put_many([b"Subject: a\r\n\r\na\r\n", b"Subject: b\r\n\r\nb\r\n"], Envelope("smtp"))
    first = store.claim(10)
    assert [row.id for row in first.rows] == ids
    clock.advance(leases.length() * 2)  # the first worker hung past its lease
    # Claimed before and never finished: it may be what hung the worker, so alone.
    second = store.claim(10)
    assert [row.id for row in second.rows] == ids[:1]
    with services.db.transaction() as session:
        # The first worker keeps only the row nobody took from it.
        assert list(store.lock(session, ids, first.claim.token)) == ids[1:]
        assert list(store.lock(session, ids, second.claim.token)) == ids[:1]


def test_a_claimed_row_loads_with_the_envelope_it_was_stored_with(services: Services) -> None:
    raw = b"Subject: hi\r\n\r\nhello\r\n"
    envelope = Envelope("lmtp", mail_from="alice@customer.test", peer="192.0.2.7")
    stored = services.store.put(raw, envelope)
    [claimed] = services.store.claim(10).rows
    loaded = services.store.load(claimed)
    assert (loaded.id, loaded.raw, loaded.mail_from, loaded.source, loaded.peer) == (
        stored,
        raw,
        "alice@customer.test",
        "lmtp",
        "192.0.2.7",
    )
    assert services.store.load(stored) == loaded  # by id alone: the envelope is read


@pytest.mark.skipif(bool(PG_URL), reason="reads SQLite's query plans")
def test_claims_of_either_queue_find_the_waiting_rows_by_index_on_a_quiet_desks_statistics(
    services: Services, clock: ManualClock
) -> None:
    """`ANALYZE` run while every row was processed and sent says the state index
    narrows nothing; SQLite then claimed outbox rows by walking the whole history in id
    order, on every claim, to find the few pending at its end. Both queues' claims (and
    the sender's look for its next due row) must search the state index."""
    history_with_waiting_rows(services, clock.now())
    sender = services.sender()
    found: dict[str, Any] = {}

    def claim() -> None:
        found["inbound"] = services.store.claim(16).rows
        found["outbox"] = sender.claim(16)[1]
        found["next"] = sender.next_due()

    plans = sqlite_plans(services, claim, "inbound|outbox")
    assert (len(found["inbound"]), len(found["outbox"])) == (3, 3)
    assert found["next"] is not None
    assert not [(plan, statement) for plan, statement in plans if plan.startswith("SCAN")]
    # Nor sort what waits: the outbox is taken in its state index's own order.
    assert not [(plan, statement) for plan, statement in plans if "TEMP B-TREE" in plan]
