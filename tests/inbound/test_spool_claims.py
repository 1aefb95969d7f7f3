"""A claim is the right to finish a row: a worker whose lease ran out (it hung, or
was paused) finds, when it finally takes the write lock, that the rows a new claim
took are no longer its own, and a load of a claimed row reads its envelope from the
claim."""

from __future__ import annotations

from maildesk import leases
from maildesk.clock import ManualClock
from maildesk.inbound.store import Envelope
from maildesk.services import Services


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
