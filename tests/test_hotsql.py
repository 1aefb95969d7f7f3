"""Hot statements (maildesk/hotsql.py) write and read what SQLAlchemy's own execution
would, on SQLite and PostgreSQL, and refuse what they cannot do the same way."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any, cast

import pytest
from sqlalchemy import DateTime, Table, bindparam, event, insert, select
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from maildesk.hotsql import Hot, _bind_processor, connection_of
from maildesk.models import Outbox, Person, Ticket
from maildesk.services import Services
from maildesk.states import OutboxState, TicketStatus
from maildesk.tickets.agents import Agents
from maildesk.tickets.service import Tickets

OUTBOX = cast(Table, Outbox.__table__)
WHEN = datetime(2026, 11, 30, 9, 15, 42, 123456, tzinfo=UTC)


def outbox_values(message_id: str) -> dict[str, Any]:
    return {
        "ticket_id": None,
        "message_id": message_id,
        "kind": "acknowledgement",
        "sender": "support@example.test",
        "recipients": ["alice@customer.test", "bob@customer.test"],
        "auto_to": "alice@customer.test",
        "state": OutboxState.PENDING,
        "attempts": 0,
        "next_attempt_at": WHEN,
        "last_error": "",
        "created_at": WHEN + timedelta(seconds=1),
    }


def test_a_hot_insert_stores_what_sqlalchemy_stores(services: Services) -> None:
    """Dates, JSON lists and enum states come back through the ORM alike, and the
    compared columns hold the same values as a row SQLAlchemy inserted itself."""
    hot = Hot(insert(OUTBOX).returning(OUTBOX.c.id))
    with services.db.transaction() as session:
        pk = hot.scalar(session.connection(), outbox_values("hot@example.test"))
        session.connection().execute(insert(OUTBOX), outbox_values("core@example.test"))
    with services.db.transaction() as session:
        rows = {row.message_id: row for row in session.scalars(select(Outbox))}
        hot_row, core_row = rows["hot@example.test"], rows["core@example.test"]
        assert hot_row.id == pk
        for column in ("recipients", "auto_to", "state", "attempts", "kind", "ticket_id"):
            assert getattr(hot_row, column) == getattr(core_row, column), column
        assert hot_row.recipients == ["alice@customer.test", "bob@customer.test"]
        assert hot_row.state == OutboxState.PENDING
        for column in ("next_attempt_at", "created_at"):
            hot_value, core_value = getattr(hot_row, column), getattr(core_row, column)
            assert hot_value == core_value, column
            assert hot_value.replace(tzinfo=UTC) == outbox_values("x")[column].replace(tzinfo=UTC)


def test_a_hot_select_binds_the_statements_own_values(services: Services) -> None:
    """A LIMIT written into the statement goes with it; the caller's values bind by name."""
    hot = Hot(insert(OUTBOX))
    due = Hot(
        select(Outbox.message_id)
        .where(Outbox.next_attempt_at <= WHEN + timedelta(hours=1), Outbox.auto_to == "x")
        .order_by(Outbox.id)
        .limit(1)
    )
    with services.db.transaction() as session:
        rows = [{**outbox_values(f"m{n}@example.test"), "auto_to": "x"} for n in range(3)]
        hot.run_many(session.connection(), rows)
        assert due.first(session.connection(), {}) == ("m0@example.test",)


def test_a_column_left_to_its_default_is_refused_not_written_null(services: Services) -> None:
    """`Hot` runs no Python-side default: a row without `attempts` would have stored NULL."""
    hot = Hot(insert(OUTBOX))
    values = outbox_values("no-attempts@example.test")
    del values["attempts"]
    with services.db.transaction() as session:
        with pytest.raises(ValueError, match="attempts"):
            hot.run(session.connection(), values)


def test_a_missing_parameter_is_named(services: Services) -> None:
    by_email = Hot(select(Person.id).where(Person.email == bindparam("email")))
    with services.db.transaction() as session:
        assert by_email.first(session.connection(), {"email": "alice@customer.test"}) is None
        with pytest.raises(ValueError, match="email"):
            by_email.first(session.connection(), {"mail": "alice@customer.test"})


def test_a_driver_error_is_raised_as_sqlalchemys(services: Services) -> None:
    """Callers catch SQLAlchemy's errors (a duplicate key, PostgreSQL's deadlock sqlstate):
    a hot statement's driver error is raised as the same class, with the driver's inside."""
    hot = Hot(insert(OUTBOX))
    with services.db.transaction() as session:
        hot.run(session.connection(), outbox_values("twice@example.test"))
        with pytest.raises(IntegrityError) as raised:
            hot.run(session.connection(), outbox_values("twice@example.test"))
        assert raised.value.orig is not None
        session.rollback()


def test_the_engines_cursor_listeners_see_hot_statements(services: Services) -> None:
    """A benchmark counting statements (bench/scaleout.py) or explaining them
    (bench/threading_lookup.py) listens on the engine: hot statements must not slip past
    it, one by one and as an executemany alike."""
    seen: list[tuple[str, bool]] = []

    def listener(conn: Any, cursor: Any, sql: str, params: Any, context: Any, many: bool) -> None:
        seen.append((sql, many))

    hot = Hot(insert(OUTBOX))
    by_email = Hot(select(Person.id).where(Person.email == bindparam("email")))
    event.listen(services.db.engine, "before_cursor_execute", listener)
    try:
        with services.db.transaction() as session:
            hot.run(session.connection(), outbox_values("one@example.test"))
            hot.run_many(
                session.connection(),
                [outbox_values("two@example.test"), outbox_values("three@example.test")],
            )
            assert by_email.first(session.connection(), {"email": "x@customer.test"}) is None
    finally:
        event.remove(services.db.engine, "before_cursor_execute", listener)
    ours = [(sql.split()[0], many) for sql, many in seen if "outbox" in sql or "people" in sql]
    assert ours == [("INSERT", False), ("INSERT", True), ("SELECT", False)]


def test_a_hot_select_reads_what_sqlalchemy_reads(services: Services) -> None:
    """Dates, JSON lists and enum states read on the driver's cursor come back as the
    ORM's own select returns them, a NULL stays None."""
    columns = (OUTBOX.c.next_attempt_at, OUTBOX.c.created_at, OUTBOX.c.recipients)
    columns += (OUTBOX.c.state, OUTBOX.c.ticket_id, OUTBOX.c.message_id)
    hot = Hot(select(*columns).where(OUTBOX.c.message_id == bindparam("mid")))
    with services.db.transaction() as session:
        session.connection().execute(insert(OUTBOX), outbox_values("core@example.test"))
    with services.db.transaction() as session:
        read = hot.first(session.connection(), {"mid": "core@example.test"})
        expected = session.execute(select(*columns)).one()
    assert read == tuple(expected)
    assert read is not None
    assert read[0].replace(tzinfo=UTC) == WHEN
    assert read[2] == ["alice@customer.test", "bob@customer.test"]
    assert (read[3], read[4]) == (OutboxState.PENDING, None)


@contextmanager
def orm_statements() -> Iterator[list[str]]:
    """The statements the ORM runs meanwhile (loads and reloads included)."""
    seen: list[str] = []

    def note(state: Any) -> None:
        seen.append(str(state.statement))

    event.listen(Session, "do_orm_execute", note)
    try:
        yield seen
    finally:
        event.remove(Session, "do_orm_execute", note)


def test_a_known_sender_is_looked_up_without_the_orm_and_acts_as_loaded(
    services: Services,
) -> None:
    """`Tickets.person` reads a known person on the driver's cursor (every processed
    message looks up its sender), yet what it returns is the session's Person: its
    creation date loads when read, a change is saved, and one lookup in a transaction
    is the object a second one returns. What an acknowledgement reads (has the person
    an account, an invitation?) is loaded with it, dates converted as the ORM would."""
    with services.db.transaction() as session:
        alice = Tickets(session).person("Alice@Customer.test", "", WHEN)
        alice.language = "cs"
        alice.invited_at = WHEN + timedelta(minutes=5)
    with orm_statements() as statements:
        with services.db.transaction() as session:
            tickets = Tickets(session)
            alice = tickets.person("alice@customer.test", "Alice Nováková", WHEN, proven=True)
            assert statements == []
            assert (alice.email, alice.language) == ("alice@customer.test", "cs")
            assert alice.password_hash is None
            assert alice.invited_at is not None
            assert alice.invited_at.replace(tzinfo=UTC) == WHEN + timedelta(minutes=5)
            assert statements == []  # no reload of the row for those
            assert alice.created_at.replace(tzinfo=UTC) == WHEN  # loaded when read
            assert tickets.person("ALICE@customer.test", "", WHEN) is alice
    with services.db.transaction() as session:
        stored = session.scalars(select(Person).where(Person.email == "alice@customer.test"))
        assert [(p.name, p.language) for p in stored] == [("Alice Nováková", "cs")]


def test_a_ticket_is_looked_up_without_the_orm_and_acts_as_loaded(services: Services) -> None:
    """`Tickets.get` (every reply threaded by its references) reads the ticket and its
    requester on the driver's cursor; what it returns is the session's Ticket, as
    `session.get` returned it: every column converted, its requester and an owner the
    session holds without a statement, an owner it does not hold loaded when read,
    one object per ticket in a transaction, and changes saved."""
    with services.db.transaction() as session:
        tickets = Tickets(session)
        alice = tickets.person("alice@customer.test", "Alice", WHEN)
        owned, unowned = (
            tickets.open(alice, "Owned", "cs", WHEN),
            tickets.open(alice, "", "en", WHEN),
        )
        agent = Agents(session).add("agent@example.test", "Agent", WHEN)
        owned.owner_id, owned.paid_note, owned.closed_at = agent.id, "500 CZK", WHEN
        numbers = owned.id, unowned.id
    with services.db.transaction() as session:
        expected = {n: session.get(Ticket, n) for n in numbers}
        columns = [c.key for c in Ticket.__table__.columns]
        expected_values = {n: [getattr(t, c) for c in columns] for n, t in expected.items()}
        expected_owner = expected[numbers[0]].owner
        assert expected_owner is not None
        owner_email = expected_owner.email
    with orm_statements() as statements:
        with services.db.transaction() as session:
            tickets = Tickets(session)
            found = {n: tickets.get(n) for n in numbers}
            unowned_ticket = found[numbers[1]]
            assert unowned_ticket is not None
            assert unowned_ticket.owner is None
            assert unowned_ticket.requester.email == "alice@customer.test"
            assert unowned_ticket.requester.invited_at is None
            assert statements == []
            for number, ticket in found.items():
                assert ticket is not None
                assert [getattr(ticket, c) for c in columns] == expected_values[number]
            owned_ticket = found[numbers[0]]
            assert owned_ticket is not None
            assert owned_ticket.requester is unowned_ticket.requester
            assert statements == []
            assert owned_ticket.owner is not None
            assert owned_ticket.owner.email == owner_email  # loaded when read
            assert tickets.get(numbers[0]) is owned_ticket
            assert tickets.get(10_000) is None
            owned_ticket.status = TicketStatus.ACCEPTED
        with services.db.transaction() as session:
            held = Agents(session).by_email(owner_email)
            statements.clear()
            ticket = Tickets(session).get(numbers[0])
            assert ticket is not None and held is not None
            assert ticket.owner is held
            assert statements == []
    with services.db.transaction() as session:
        assert session.get(Ticket, numbers[0]).status == TicketStatus.ACCEPTED  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "value",
    [
        WHEN,
        datetime(2026, 1, 2, 3, 4, 5),  # naive, whole second
        datetime(1, 1, 1, tzinfo=UTC),  # the smallest year, padded
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-7))),
        date(2026, 1, 2),  # a date: SQLAlchemy's own text, midnight
        None,
    ],
)
def test_a_datetime_is_bound_as_sqlalchemys_text(value: Any) -> None:
    """SQLite's datetime text is made without SQLAlchemy's processor, to the same text."""
    dialect = sqlite.dialect()
    for type_ in (DateTime(), DateTime(timezone=True)):
        ours = _bind_processor(type_, dialect)
        theirs = type_.dialect_impl(dialect).bind_processor(dialect)
        assert ours is not None and theirs is not None
        assert ours(value) == theirs(value)


def test_the_connection_is_remembered_for_its_transaction_only(services: Services) -> None:
    """`connection_of` gives what `session.connection()` gives: the same connection all
    through one transaction and its savepoints, the session's new one after a commit
    or a rollback."""
    session = services.db._sessions()
    try:
        first = connection_of(session)
        assert first is session.connection() and connection_of(session) is first
        with session.begin_nested():
            assert connection_of(session) is session.connection() is first
        session.commit()
        second = connection_of(session)
        assert second is session.connection() and second is not first
        assert not first.in_transaction() and second.in_transaction()
        session.rollback()
        third = connection_of(session)
        assert third is session.connection() and third is not second
    finally:
        session.close()
