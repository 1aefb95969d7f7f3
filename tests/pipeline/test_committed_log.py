"""What processing logs about a message is logged once the transaction that wrote it
has committed, and only then.

Messages are written in groups, in one transaction. Lines used to be logged while the
transaction ran: when it was rolled back (a message of the group failed and the group
was written again, each in a savepoint; the commit itself failed), the log named
tickets that were never there, and whose numbers the next tickets got, and a group
written again told each message's fate twice: two "is a duplicate", two warnings of a
taken Message-ID, two quarantines, a console confirmation asked for that no longer
existed. The failures here are the database's own, made by a trigger the test adds:
on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from maildesk import leases
from maildesk.clock import ManualClock
from maildesk.inbound.store import Envelope
from maildesk.models import Confirmation, Inbound, Message, Ticket
from maildesk.services import Services
from tests.conftest import eml, make_mail
from tests.helpers import inbound_row, receive

SUPPORT = ("support@example.test",)
AGENT = "agent@example.test"
ROUTED = re.compile(r"inbound (\d+) -> ticket (\d+) \(")
# The lines that tell what became of a message, each with the id it names.
LINES = {
    "duplicate": re.compile(r"inbound (\d+) is a duplicate of <"),
    "taken id": re.compile(r"inbound (\d+): <[^>]*> was first used by "),
    "quarantined": re.compile(r"inbound (\d+) quarantined: "),
    "will retry": re.compile(r"inbound (\d+) failed \(attempt 1\), will retry"),
    "confirmation": re.compile(r"console: confirmation (\d+) asked of "),
}


@pytest.fixture
def config_values(config_values: dict[str, Any]) -> dict[str, Any]:
    config_values["agents"]["addresses"] = [AGENT]
    return config_values


def store(services: Services, customer: str, raw: bytes | None = None) -> int:
    raw = raw or make_mail(sender=customer, subject=f"Help for {customer}")
    return services.store.put(raw, Envelope("smtp", customer, SUPPORT))


def logged_routes(caplog: pytest.LogCaptureFixture) -> Counter[tuple[int, int]]:
    """(inbound id, ticket id) of each `-> ticket` line logged."""
    found = (ROUTED.match(r.getMessage()) for r in caplog.records)
    return Counter((int(m[1]), int(m[2])) for m in found if m)


def logged(caplog: pytest.LogCaptureFixture, kind: str) -> Counter[int]:
    """The id each line of `kind` names, counted."""
    found = (LINES[kind].match(r.getMessage()) for r in caplog.records)
    return Counter(int(m[1]) for m in found if m)


def filed(services: Services) -> Counter[tuple[int, int]]:
    """(inbound id, ticket id) of each stored message: where the mail really is."""
    with services.db.reading() as session:
        rows = session.execute(
            select(Message.inbound_id, Message.ticket_id).where(Message.inbound_id.is_not(None))
        ).all()
    return Counter((int(inbound), ticket) for inbound, ticket in rows)


def in_state(services: Services, state: str) -> Counter[int]:
    with services.db.reading() as session:
        return Counter(session.scalars(select(Inbound.id).where(Inbound.state == state)))


def run_sql(services: Services, *statements: str) -> None:
    with services.db.transaction() as session:
        for statement in statements:
            session.execute(text(statement))


def refuse_mail_to(services: Services, address: str) -> None:
    """The database refuses to queue mail to `address`: a failure in the middle of the
    database stages of a message whose ticket is already made."""
    recipients = "NEW.recipients" if services.db.is_sqlite else "NEW.recipients::text"
    refuse_mail(services, f"{recipients} LIKE '%{address}%'")


def refuse_mail(services: Services, condition: str) -> None:
    """The database refuses to queue mail when `condition` (on NEW) holds."""
    if services.db.is_sqlite:
        run_sql(
            services,
            f"""CREATE TRIGGER refuse BEFORE INSERT ON outbox WHEN {condition}
                BEGIN SELECT RAISE(ABORT, 'refused by the test'); END""",
        )
        return
    run_sql(
        services,
        f"""CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF {condition} THEN
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

    caplog.clear()  # what the set-up logged (at INFO after a CLI test) is not counted
    with caplog.at_level(logging.INFO, logger="maildesk"):
        assert services.processor.process_pending().processed == 3

    where = filed(services)
    assert [inbound for inbound, _ticket in where] == [alice, carol]
    assert inbound_row(services, bob).state == "pending"  # to be tried again
    # Each message filed is logged once, with its ticket; bob's, rolled back, not at all.
    assert logged_routes(caplog) == where, "the log names tickets the mail is not in"
    assert logged(caplog, "will retry") == Counter([bob])


def test_a_group_written_again_tells_each_messages_fate_once(
    services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    """The first try of the group is rolled back (bob's acknowledgement is refused), and
    the group is written again, each message in a savepoint: the lines of the first
    try are not logged, those of the second once."""
    first = make_mail(message_id="<first@customer.test>")
    receive(services, first)  # ticket 1
    before = filed(services)
    again = store(services, "alice@customer.test", first)  # the same mail once more
    # Another sender's mail with her Message-ID, and a text of its own.
    hers = make_mail(sender="mallory@evil.test", message_id="<first@customer.test>", body="Mine.")
    taken = store(services, "mallory@evil.test", hers)
    unreadable = store(services, "alice@customer.test", eml("unparseable-from-no-address.eml"))
    bob = store(services, "bob@customer.test")
    refuse_mail_to(services, "bob@customer.test")

    caplog.clear()  # what the set-up logged (at INFO after a CLI test) is not counted
    with caplog.at_level(logging.INFO, logger="maildesk"):
        assert services.processor.process_pending().processed == 4

    assert in_state(services, "duplicate") == Counter([again])
    assert in_state(services, "quarantined") == Counter([unreadable])
    assert inbound_row(services, bob).state == "pending"
    assert logged(caplog, "duplicate") == Counter([again])
    assert logged(caplog, "taken id") == Counter([taken])
    assert logged(caplog, "quarantined") == Counter([unreadable])
    assert logged(caplog, "will retry") == Counter([bob])
    assert logged_routes(caplog) == filed(services) - before


def test_a_console_request_rolled_back_in_its_savepoint_names_no_confirmation(
    services: Services, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """An unproven request asks the agent's mailbox to confirm: a confirmation row, then
    its mail. When that mail cannot be queued, the request is rolled back with its
    confirmation, and the log must not name one (its number is the next one's)."""
    receive(services, make_mail())  # ticket 1
    unproven = make_mail(subject="[#1] Printer broken", sender=AGENT, body="#cc mallory@evil.test")
    request = store(services, AGENT, unproven)
    carol = store(services, "carol@customer.test")
    refuse_mail(services, "NEW.kind = 'agent_confirm'")  # the request's, not carol's

    caplog.clear()  # what the set-up logged (at INFO after a CLI test) is not counted
    with caplog.at_level(logging.INFO, logger="maildesk"):
        assert services.processor.process_pending().processed == 2

    with services.db.reading() as session:
        assert session.scalars(select(Confirmation.id)).all() == []
    assert logged(caplog, "confirmation") == Counter(), "the log names a confirmation not there"
    assert logged(caplog, "will retry") == Counter([request])
    assert [inbound for inbound, _ticket in logged_routes(caplog)] == [carol]

    # The agent's mail is queued again: the request is asked once, by the number it has.
    stop_refusing_mail(services)
    clock.advance(leases.length() * 2)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="maildesk"):
        services.drain_inbound()
    with services.db.reading() as session:
        asked = session.scalars(select(Confirmation.id)).all()
    assert len(asked) == 1
    assert logged(caplog, "confirmation") == Counter(asked)


def stop_refusing_mail(services: Services) -> None:
    if services.db.is_sqlite:
        run_sql(services, "DROP TRIGGER refuse")
    else:
        run_sql(services, "DROP TRIGGER refuse ON outbox", "DROP FUNCTION refuse()")


def test_a_commit_that_fails_logs_no_ticket_and_the_retry_logs_them(
    services: Services, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    first = make_mail(message_id="<first@customer.test>")
    earlier = receive(services, first)
    again = store(services, "alice@customer.test", first)
    ids = [store(services, f"{name}@customer.test") for name in ("alice", "bob")]
    fail_commits_that_open_tickets(services)

    caplog.clear()  # what the set-up logged (at INFO after a CLI test) is not counted
    with caplog.at_level(logging.INFO, logger="maildesk"):
        with pytest.raises(DBAPIError):
            services.processor.process_pending()
    with services.db.reading() as session:
        assert session.scalars(select(Ticket.id)).all() == [1]
    assert logged_routes(caplog) == Counter(), "the log names tickets that do not exist"
    assert logged(caplog, "duplicate") == Counter(), "the log names a duplicate still pending"

    # The database is well again; the claims of the failed batch run out.
    stop_failing(services)
    clock.advance(leases.length() * 2)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="maildesk"):
        while services.processor.process_pending().processed:
            pass
    where = filed(services)
    assert sorted(inbound for inbound, _ticket in where) == [earlier, *ids]
    assert logged_routes(caplog) == Counter(
        {key: n for key, n in where.items() if key[0] != earlier}
    ), "the log does not say where the mail was filed"
    assert logged(caplog, "duplicate") == Counter([again])


def test_a_database_error_names_its_statement_but_none_of_the_mails_values(
    services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    """The error a refused insert raised quoted its parameters: bob's address, and the
    Message-ID of our acknowledgement, a secret of his ticket (whoever answers it
    writes as his correspondent). Its text goes to the log and to the row's error."""
    bob = store(services, "bob@customer.test")
    refuse_mail_to(services, "bob@customer.test")

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="maildesk"):
        services.processor.process_pending()

    error = inbound_row(services, bob).error
    assert "refused by the test" in error and "INSERT INTO outbox" in error
    for told in (error, caplog.text):
        assert "bob@customer.test" not in told.split("refused by the test", 1)[1]
        assert "md." not in told
