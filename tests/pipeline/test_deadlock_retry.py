"""Deadlocks between workers on PostgreSQL.

Two workers meeting the same new senders in opposite orders no longer deadlock: new
senders are locked up front, in one order (`Tickets.lock_new_people`; every deadlock
bench/scaleout.py met with two and three instances was of this kind). A message whose
transaction still loses one (two workers locking rows in opposite orders) is tried
again within a second, its attempt not counted: a deadlock says nothing about the
message, and a back-off of 5 s and more only stretched the acknowledgement's p99."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from maildesk.clock import ManualClock
from maildesk.inbound.store import Envelope
from maildesk.models import Inbound, Message, Participant, Person, Ticket
from maildesk.services import Services
from maildesk.states import InboundState
from maildesk.tickets.service import Tickets
from tests.conftest import PG_URL, make_mail, wait_for
from tests.helpers import receive

pytestmark = pytest.mark.skipif(not PG_URL, reason="SQLite's one writer never deadlocks")


def test_a_message_that_lost_a_deadlock_is_processed_again_within_a_second(
    services: Services, clock: ManualClock
) -> None:
    receive(services, make_mail(message_id="<first@customer.test>"))
    reply = make_mail(subject="Re: [#1] Printer broken", message_id="<reply@customer.test>")
    reply_id = services.store.put(
        reply.replace(b"Subject:", b"In-Reply-To: <first@customer.test>\r\nSubject:", 1),
        Envelope("smtp", "alice@customer.test", ("support@example.test",)),
    )

    # Another transaction holds the ticket (as another worker filing mail in it would);
    # it waits out a deadlock longer than the processor's, so the processor's backend is
    # the one that finds the deadlock and loses it.
    other = services.db.engine.connect()
    other.execute(text("SET deadlock_timeout = '20s'"))
    other.execute(text("SELECT id FROM tickets WHERE id = 1 FOR UPDATE"))
    first_pass: list[int] = []
    processing = threading.Thread(
        target=lambda: first_pass.append(services.processor.process_pending().processed)
    )
    processing.start()
    try:
        wait_for(lambda: _waiting_on_a_lock(services), 10, "the processor to wait for the ticket")
        # Now take the inbound row the processor holds: a cycle, which its backend breaks.
        other.execute(text("SELECT id FROM inbound WHERE id = :id FOR UPDATE"), {"id": reply_id})
    finally:
        other.rollback()
        other.close()
        processing.join(30)
    assert first_pass == [1]

    lost = _inbound(services, reply_id)
    assert lost.state == InboundState.PENDING
    assert "DeadlockDetected" in lost.error
    assert lost.attempts == 0  # given back: the next claim is not its last

    clock.advance(timedelta(seconds=1))
    services.drain_inbound()
    assert _inbound(services, reply_id).state == InboundState.DONE
    with services.db.reading() as session:
        filed = session.scalars(select(Message.ticket_id).where(Message.inbound_id == reply_id))
        assert list(filed) == [1]


def test_two_workers_meeting_new_senders_in_opposite_orders_do_not_deadlock(
    services: Services, clock: ManualClock
) -> None:
    first, second = "x@newcomer.test", "y@newcomer.test"
    envelope = Envelope("smtp", "bounces@newcomer.test", ("support@example.test",))
    ids = [services.store.put(make_mail(sender=address), envelope) for address in (second, first)]

    assert _process_beside_another_worker(services, clock, first, second) == 2
    rows = [_inbound(services, spool_id) for spool_id in ids]
    assert [(row.state, row.attempts, row.error) for row in rows] == [
        (InboundState.DONE, 1, ""),
        (InboundState.DONE, 1, ""),
    ]
    with services.db.reading() as session:
        assert session.scalar(select(func.count()).select_from(Ticket)) == 2


def test_two_workers_meeting_new_people_in_cc_in_opposite_orders_do_not_deadlock(
    services: Services, clock: ManualClock
) -> None:
    """As above, for the colleagues a proven sender copied: they become people
    (participants) in the processor's transaction too. An imported archive is proven by
    the operator, and `maildesk import --processes N` on PostgreSQL is where workers
    meet the same colleagues at once."""
    first, second = "x@colleague.test", "y@colleague.test"
    mail = make_mail(sender="carol@newcomer.test", cc=f"{second}, {first}")
    envelope = Envelope("import", "carol@newcomer.test", ("support@example.test",), notify=False)
    spool_id = services.store.put(mail, envelope)

    assert _process_beside_another_worker(services, clock, first, second) == 1
    row = _inbound(services, spool_id)
    assert (row.state, row.attempts, row.error) == (InboundState.DONE, 1, "")
    with services.db.reading() as session:
        copied = session.scalars(
            select(Person.email)
            .join(Participant, Participant.person_id == Person.id)
            .where(Participant.ticket_id == 1, Participant.role == "cc")
            .order_by(Person.email)
        )
        assert list(copied) == [first, second]


def _process_beside_another_worker(
    services: Services, clock: ManualClock, first: str, second: str
) -> int:
    """Process what is due while another worker's transaction meets the two new people
    the other way round: it has inserted `first` and inserts `second` once the processor
    waits in the middle of its group. It waits out a deadlock longer than the processor,
    whose backend would be the one to find it. Returns how many rows were processed."""
    other = Session(services.db.engine)
    other.execute(text("SET deadlock_timeout = '20s'"))
    theirs = Tickets(other)
    theirs.lock_new_people([first, second])
    theirs.person(first, "", clock.now())
    passes: list[int] = []
    processing = threading.Thread(
        target=lambda: passes.append(services.processor.process_pending().processed)
    )
    processing.start()
    try:
        wait_for(lambda: _waiting_on_a_lock(services), 10, "the processor to wait for people")
        theirs.person(second, "", clock.now())  # would close a cycle without the locks
        other.commit()
    finally:
        other.close()
        processing.join(30)
    [processed] = passes
    return processed


def _inbound(services: Services, spool_id: int) -> Inbound:
    with services.db.reading() as session:
        row = session.get(Inbound, spool_id)
        assert row is not None
        return row


def _waiting_on_a_lock(services: Services) -> bool:
    with services.db.engine.connect() as conn:
        waiting = conn.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE wait_event_type = 'Lock' AND datname = current_database()"
            )
        )
        return bool(waiting)
