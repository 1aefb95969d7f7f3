"""`inbound N -> ticket M (rule)` is logged once the transaction that files the message
has committed, and only then.

Messages are written in groups, in one transaction. The line used to be logged while
the transaction ran: when it was rolled back (a message of the group failed and the
group was written again, each in a savepoint; the commit itself failed), the log named
tickets that were never there, and whose numbers the next tickets got. The failures
here are the database's own, made by a trigger the test adds: on SQLite and
PostgreSQL alike.
"""

from __future__ import annotations

import logging
import re
from collections import Counter

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from maildesk import leases
from maildesk.clock import ManualClock
from maildesk.inbound.store import Envelope
from maildesk.models import Message, Ticket
from maildesk.services import Services
from tests.conftest import make_mail
from tests.helpers import inbound_row

SUPPORT = ("support@example.test",)
ROUTED = re.compile(r"inbound (\d+) -> ticket (\d+) \(")


def store(services: Services, customer: str) -> int:
    raw = make_mail(sender=customer, subject=f"Help for {customer}")
    return services.store.put(raw, Envelope("smtp", customer, SUPPORT))


def logged_routes(caplog: pytest.LogCaptureFixture) -> Counter[tuple[int, int]]:
    """(inbound id, ticket id) of each `-> ticket` line logged."""
    found = (ROUTED.match(r.getMessage()) for r in caplog.records)
    return Counter((int(m[1]), int(m[2])) for m in found if m)


def filed(services: Services) -> Counter[tuple[int, int]]:
    """(inbound id, ticket id) of each stored message: where the mail really is."""
    with services.db.reading() as session:
        rows = session.execute(
            select(Message.inbound_id, Message.ticket_id).where(Message.inbound_id.is_not(None))
        ).all()
    return Counter((int(inbound), ticket) for inbound, ticket in rows)


def run_sql(services: Services, *statements: str) -> None:
    with services.db.transaction() as session:
        for statement in statements:
            session.execute(text(statement))


def refuse_mail_to(services: Services, address: str) -> None:
    """The database refuses to queue mail to `address`: a failure in the middle of the
    database stages of a message whose ticket is already made."""
    if services.db.is_sqlite:
        run_sql(
            services,
            f"""CREATE TRIGGER refuse BEFORE INSERT ON outbox
                WHEN NEW.recipients LIKE '%{address}%'
                BEGIN SELECT RAISE(ABORT, 'refused by the test'); END""",
        )
        return
    run_sql(
        services,
        f"""CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.recipients::text LIKE '%{address}%' THEN
                    RAISE EXCEPTION 'refused by the test';
                END IF;
                RETURN NEW;
            END $$""",
        "CREATE TRIGGER refuse BEFORE INSERT ON outbox FOR EACH ROW EXECUTE FUNCTION refuse()",
    )


def fail_commits_that_open_tickets(services: Services) -> None:
    """A transaction that made a ticket fails at its COMMIT (a deferred constraint)."""
    if services.db.is_sqlite:
        run_sql(
            services,
            "CREATE TABLE never_there (id INTEGER PRIMARY KEY)",
            """CREATE TABLE refusals
               (ticket INTEGER REFERENCES never_there (id) DEFERRABLE INITIALLY DEFERRED)""",
            """CREATE TRIGGER refuse AFTER INSERT ON tickets
               BEGIN INSERT INTO refusals VALUES (NEW.id); END""",
        )
        return
    run_sql(
        services,
        """CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN RAISE EXCEPTION 'refused by the test at commit'; END $$""",
        """CREATE CONSTRAINT TRIGGER refuse AFTER INSERT ON tickets
           DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse()""",
    )


def stop_failing(services: Services) -> None:
    if services.db.is_sqlite:
        run_sql(services, "DROP TRIGGER refuse")
    else:
        run_sql(services, "DROP TRIGGER refuse ON tickets", "DROP FUNCTION refuse()")


def test_a_group_rolled_back_for_one_message_logs_only_where_the_others_were_filed(
    services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    alice = store(services, "alice@customer.test")
    bob = store(services, "bob@customer.test")  # his acknowledgement is refused
    carol = store(services, "carol@customer.test")
    refuse_mail_to(services, "bob@customer.test")

    with caplog.at_level(logging.INFO, logger="maildesk.pipeline"):
        assert services.processor.process_pending().processed == 3

    where = filed(services)
    assert [inbound for inbound, _ticket in where] == [alice, carol]
    assert inbound_row(services, bob).state == "pending"  # to be tried again
    # Each message filed is logged once, with its ticket; bob's, rolled back, not at all.
    assert logged_routes(caplog) == where, "the log names tickets the mail is not in"


def test_a_commit_that_fails_logs_no_ticket_and_the_retry_logs_them(
    services: Services, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    ids = [store(services, f"{name}@customer.test") for name in ("alice", "bob")]
    fail_commits_that_open_tickets(services)

    with caplog.at_level(logging.INFO, logger="maildesk.pipeline"):
        with pytest.raises(DBAPIError):
            services.processor.process_pending()
    with services.db.reading() as session:
        assert session.scalars(select(Ticket.id)).all() == []
    assert logged_routes(caplog) == Counter(), "the log names tickets that do not exist"

    # The database is well again; the claims of the failed batch run out.
    stop_failing(services)
    clock.advance(leases.length() * 2)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="maildesk.pipeline"):
        while services.processor.process_pending().processed:
            pass
    where = filed(services)
    assert sorted(inbound for inbound, _ticket in where) == ids
    assert logged_routes(caplog) == where, "the log does not say where the mail was filed"
