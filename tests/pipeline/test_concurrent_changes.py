"""Two workers changing one ticket at the same moment (PostgreSQL).

On PostgreSQL two workers (or two instances) write at once. An agent closes a
resolved ticket while its customer's answer to the resolution is processed by
another worker: the later one must decide on the ticket as the earlier one left
it, not as it read it before. Otherwise the customer's "Thanks!" closes the ticket
a second time (a second "closed" mail to the customer, a status event whose old
value is stale), and a dispute reopens it with the agent's `closed_at` still set.

The first worker is held at its commit, with its ticket row locked, until the
second one is seen waiting for a lock in `pg_stat_activity`; then it commits.
SQLite has one writer, which orders the two whole: nothing to test there.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sqlalchemy import Connection, event, text

from maildesk.inbound.store import Envelope
from maildesk.models import Outbox, Ticket
from maildesk.services import Services
from tests.conftest import PG_URL, make_mail, wait_for
from tests.helpers import outbox_mail, outbox_rows, outbox_text, receive, ticket

pytestmark = pytest.mark.skipif(not PG_URL, reason="SQLite's one writer orders writes whole")

AGNES = "agnes@example.test"
ALICE = "alice@customer.test"


@pytest.fixture
def config_values(config_values: dict[str, Any]) -> dict[str, Any]:
    config_values["agents"]["addresses"] = [AGNES]
    return config_values


def mails_to(services: Services, address: str, kind: str | None = None) -> list[Outbox]:
    rows = [row for row in outbox_rows(services) if row.recipients == [address]]
    return [row for row in rows if kind is None or row.kind == kind]


def answer(to_mail: Outbox, sender: str, body: str) -> bytes:
    """`sender` answers `to_mail` from their mail client, to its signed Reply-To."""
    mail = outbox_mail(to_mail)
    address = mail["Reply-To"].addresses[0].addr_spec
    return make_mail(subject=f"Re: {mail['Subject']}", sender=sender, to=address, body=body,
                     In_Reply_To=mail["Message-ID"], References=mail["Message-ID"])  # fmt: skip


def put(services: Services, raw: bytes, sender: str, to_mail: Outbox) -> None:
    address = outbox_mail(to_mail)["Reply-To"].addresses[0].addr_spec
    services.store.put(raw, Envelope("smtp", sender, (address,), True))


@pytest.fixture
def resolved(services: Services) -> Outbox:
    """Alice's ticket 1, resolved by Agnes; returns the mail that told Alice."""
    receive(services, make_mail(sender=ALICE))
    notice = mails_to(services, AGNES)[-1]
    receive(services, answer(notice, AGNES, "#status resolved"), mail_from=AGNES,
            rcpt_to=(outbox_mail(notice)["Reply-To"].addresses[0].addr_spec,))  # fmt: skip
    assert ticket(services, 1)["status"] == "resolved"
    return mails_to(services, ALICE)[-1]


def at_once(services: Services, second: Services, agnes: bytes, alice: bytes) -> None:
    """Agnes's mail processed by `services`, held at its commit while Alice's is
    processed by `second` up to the point where it waits for a lock."""
    notice = mails_to(services, AGNES)[-1]
    to_alice = mails_to(services, ALICE)[-1]
    held, go = threading.Event(), threading.Event()

    def mark(conn: Connection, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.startswith("UPDATE tickets"):
            conn.info["changed_ticket"] = True

    def hold(conn: Connection) -> None:
        if conn.info.pop("changed_ticket", False) and not held.is_set():
            held.set()
            go.wait(20)

    engine = services.db.engine
    event.listen(engine, "before_cursor_execute", mark)
    event.listen(engine, "commit", hold)
    try:
        put(services, agnes, AGNES, notice)
        first = threading.Thread(target=services.drain_inbound)
        first.start()
        assert held.wait(20), "Agnes's change never reached its commit"
        put(second, alice, ALICE, to_alice)
        later = threading.Thread(target=second.drain_inbound)
        later.start()
        wait_for(lambda: waiting_for_a_lock(services), 20, "Alice's mail to wait for a lock")
        go.set()
        first.join(20)
        later.join(20)
    finally:
        go.set()
        event.remove(engine, "before_cursor_execute", mark)
        event.remove(engine, "commit", hold)


def waiting_for_a_lock(services: Services) -> bool:
    with services.db.engine.connect() as connection:
        query = text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
        return bool(connection.scalar(query))


def status_events(services: Services) -> list[tuple[str, str, str]]:
    events = ticket(services, 1)["events"]
    return [(e["old"], e["new"], e["actor"]) for e in events if e["field"] == "status"]


def test_thanks_while_the_agent_closes_closes_once_and_tells_the_customer_once(
    services: Services, second: Services, resolved: Outbox
) -> None:
    closed_before = len(mails_to(services, ALICE, "closed"))

    at_once(services, second, answer(mails_to(services, AGNES)[-1], AGNES, "#status closed"),
            answer(resolved, ALICE, "Thanks!"))  # fmt: skip

    found = ticket(services, 1)
    assert found["status"] == "closed"
    assert [m for m in found["messages"] if m["body_text"].startswith("Thanks!")]
    assert status_events(services)[-1] == ("resolved", "closed", AGNES)
    assert [e for e in status_events(services) if e[1] == "closed"] == [
        ("resolved", "closed", AGNES)
    ]
    assert len(mails_to(services, ALICE, "closed")) == closed_before + 1
    told = outbox_text(mails_to(services, AGNES)[-1])  # the owner hears of the thanks
    assert "Status: Closed" in told and "Thanks!" in told


def test_a_dispute_while_the_agent_closes_reopens_the_ticket_whole(
    services: Services, second: Services, resolved: Outbox
) -> None:
    at_once(services, second, answer(mails_to(services, AGNES)[-1], AGNES, "#status closed"),
            answer(resolved, ALICE, "It still prints blank pages."))  # fmt: skip

    found = ticket(services, 1)
    assert found["status"] == "accepted"
    with services.db.reading() as session:
        assert session.get_one(Ticket, 1).closed_at is None
    assert status_events(services)[-2:] == [
        ("resolved", "closed", AGNES),
        ("closed", "accepted", ALICE),
    ]
