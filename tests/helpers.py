"""Helpers for tests that drive the pipeline without sockets."""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from email.message import EmailMessage
from typing import Any

from sqlalchemy import create_engine, event, insert, select, text
from sqlalchemy.orm import selectinload

from maildesk.inbound.store import Envelope
from maildesk.models import Inbound, Outbox, Participant, Person, Ticket
from maildesk.services import Services
from maildesk.tickets import views

# The authserv-id of the MTA that pipes mail into the tests' desk with `maildesk deliver`
# (a desk trusts it with `[trust] authserv_ids`), and what it stamps on mail whose
# `domain` signature it verified: proof of a From in that domain (mailauth.py).
OUR_MTA = "mx.example.test"


def verified_by_our_mta(domain: str) -> str:
    return f"{OUR_MTA}; dkim=pass header.d={domain}"


def receive(
    services: Services,
    raw: bytes,
    mail_from: str = "alice@customer.test",
    rcpt_to: tuple[str, ...] = ("support@example.test",),
    source: str = "smtp",
    notify: bool = True,
) -> int:
    """Store a message as a route would, then run the pipeline; returns the spool id."""
    spool_id = services.store.put(raw, Envelope(source, mail_from, rcpt_to, notify))
    services.drain_inbound()
    return spool_id


def ticket(services: Services, number: int) -> dict[str, Any]:
    with services.db.transaction() as session:
        found = session.get(Ticket, number)
        assert found is not None, f"no ticket {number}"
        return views.detail(found)


def participants(services: Services, number: int) -> set[str]:
    """Who may write into (and read, in the portal) ticket `number`."""
    with services.db.reading() as session:
        query = (
            select(Person.email)
            .join(Participant, Participant.person_id == Person.id)
            .where(Participant.ticket_id == number)
        )
        return set(session.scalars(query))


def person_name(services: Services, address: str) -> str:
    """The name agents and our mail give `address`."""
    with services.db.reading() as session:
        name = session.scalar(select(Person.name).where(Person.email == address.lower()))
        assert name is not None, f"nobody is {address}"
        return name


def tickets(services: Services) -> list[dict[str, Any]]:
    with services.db.transaction() as session:
        return views.list_tickets(session)


def outbox_rows(services: Services) -> list[Outbox]:
    with services.db.transaction() as session:
        # The bytes too (`Outbox.raw`), which the daemon itself only reads in slices.
        query = select(Outbox).options(selectinload(Outbox.body)).order_by(Outbox.id)
        return list(session.scalars(query))


def outbox_mail(row: Outbox) -> EmailMessage:
    """An outbox row's mail, parsed as a mail client would."""
    msg = email.message_from_bytes(row.raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def outbox_text(row: Outbox) -> str:
    """An outbox row's plain-text body."""
    part = outbox_mail(row).get_body(("plain",))
    assert part is not None
    return str(part.get_content())


def inbound_row(services: Services, spool_id: int) -> Inbound:
    with services.db.transaction() as session:
        row = session.get(Inbound, spool_id)
        assert row is not None
        return row


def sqlite_plans(services: Services, call: Callable[[], Any], tables: str) -> list[tuple[str, str]]:
    """(plan line, statement) of each statement `call` ran that names one of `tables`
    (a regex alternation), as SQLite's EXPLAIN QUERY PLAN gives them."""
    statements: list[tuple[str, Any]] = []

    def note(
        _conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, many: bool
    ) -> None:
        if not many:  # an executemany is an INSERT's rows: no plan to read
            statements.append((statement, parameters))

    event.listen(services.db.engine, "before_cursor_execute", note)
    try:
        call()
    finally:
        event.remove(services.db.engine, "before_cursor_execute", note)
    plans = []
    with services.db.engine.connect() as conn:
        for statement, parameters in statements:
            if re.search(rf"\b({tables})\b", statement):
                cursor = conn.connection.cursor()
                found = cursor.execute(f"EXPLAIN QUERY PLAN {statement}", parameters).fetchall()
                plans += [(row[-1], statement) for row in found]
    assert plans, statements
    return plans


def history_with_waiting_rows(services: Services, now: datetime, history: int = 3000) -> None:
    """`history` processed messages with three sent mails each, analysed by SQLite
    while nothing waited; then three messages and three mails waiting."""
    with services.db.transaction() as session:
        session.execute(
            insert(Inbound), [inbound_values(i, "done", now) for i in range(1, history)]
        )
        session.execute(
            insert(Outbox),
            [outbox_values(i, "sent", now - timedelta(days=1)) for i in range(3 * history)],
        )
        session.execute(text("ANALYZE"))  # a quiet desk's statistics: one state each
    with services.db.transaction() as session:
        session.execute(
            insert(Inbound), [inbound_values(history + i, "pending", now) for i in range(3)]
        )
        session.execute(
            insert(Outbox), [outbox_values(3 * history + i, "pending", now) for i in range(3)]
        )


def inbound_values(i: int, state: str, now: datetime) -> dict[str, Any]:
    """Inbound row `i` in `state`, for a bulk insert (no bytes: never processed)."""
    return {
        "id": i,
        "received_at": now,
        "source": "smtp",
        "mail_from": f"c{i}@customer.test",
        "rcpt_to": ["support@example.test"],
        "size": 100,
        "digest": f"{i:064x}",
        "state": state,
        "processed_at": now if state != "pending" else None,
    }


def outbox_values(i: int, state: str, created: datetime) -> dict[str, Any]:
    """An acknowledgement's outbox row in `state`, for a bulk insert (no bytes)."""
    return {
        "message_id": f"md.{i}@example.test",
        "kind": "acknowledgement",
        "sender": "support@example.test",
        "recipients": [f"c{i}@customer.test"],
        "state": state,
        "next_attempt_at": created,
        "created_at": created,
    }


@contextmanager
def inbound_table_locked(url: str) -> Iterator[Callable[[], int]]:
    """PostgreSQL's inbound table locked against reads, as a hung database looks to its
    readers, until the block ends; yields how many reads of it wait now (a claim of
    the daemon's own processor, `FOR UPDATE`, may wait beside them: it is no read)."""
    hang = create_engine(url)
    try:
        with hang.connect() as conn:
            conn.execute(text("LOCK TABLE inbound IN ACCESS EXCLUSIVE MODE"))
            waiting = text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE wait_event_type = 'Lock' AND query ILIKE '%FROM inbound%'"
                " AND query NOT ILIKE '%FOR UPDATE%'"
            )
            yield lambda: int(conn.execute(waiting).scalar() or 0)
            conn.rollback()  # the database answers again
    finally:
        hang.dispose()
