"""A sender who opens ticket after ticket: agents hear of the first ones, then once of the rest.

A monitoring system opening a ticket per alert (or a customer's mail loop with a new
subject each time) must not put one mail per ticket in every agent's inbox: past
`[limits] new_ticket_notices_per_hour` (10), one notice says the sender's further new
tickets are filed quietly for an hour. Every ticket is still opened, and everyone
else's mail still reaches the agents. The clock is the test's ManualClock.
"""

from __future__ import annotations

import json
import re
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import insert, inspect, select, text

from maildesk import jobs, schema
from maildesk.cli import main
from maildesk.clock import ManualClock
from maildesk.models import Outbox, Person, Ticket
from maildesk.pipeline import quiet
from maildesk.pipeline.quiet import Notice
from maildesk.services import Services
from maildesk.tickets import cleanup, commands
from maildesk.tickets.lifecycle import Lifecycle
from maildesk.tickets.service import Tickets
from tests.conftest import PG_URL, make_mail, wait_for
from tests.helpers import (
    outbox_mail,
    outbox_rows,
    outbox_text,
    receive,
    sqlite_plans,
    ticket,
    tickets,
)

AGNES = "agnes@example.test"
BOB = "bob@example.test"
MONITOR = "Monitoring <alerts@monitor.test>"
ALERTS = "alerts@monitor.test"


@pytest.fixture
def config_values(config_values: dict[str, Any], request: pytest.FixtureRequest) -> dict[str, Any]:
    config_values["agents"]["addresses"] = [AGNES, BOB]
    if hasattr(request, "param"):  # the cap, for a test that sets one
        config_values["limits"]["new_ticket_notices_per_hour"] = request.param
    return config_values


def to_agent(services: Services, agent: str = AGNES) -> list[Outbox]:
    return [row for row in outbox_rows(services) if row.recipients == [agent]]


def alert(services: Services, n: int, sender: str = MONITOR) -> None:
    receive(services, make_mail(subject=f"Disk full on host{n}", sender=sender, body=f"alert {n}"))


def test_a_flood_of_new_tickets_reaches_agents_as_ten_notices_and_one_summary(
    services: Services, clock: ManualClock
) -> None:
    assert services.settings.limits.new_ticket_notices_per_hour == 10
    for n in range(1, 26):
        alert(services, n)
        clock.advance(timedelta(seconds=30))
        if n == 15:  # a customer writes in the middle of the flood
            receive(services, make_mail(subject="Printer broken"))

    assert len(tickets(services)) == 26  # every mail has its ticket
    for agent in (AGNES, BOB):
        mail = to_agent(services, agent)
        kinds = [row.kind for row in mail]
        assert kinds == ["agent_notification"] * 10 + ["agent_quiet", "agent_notification"]
        # The monitor's first ten, then the summary on its 11th ticket, then the customer.
        assert [row.ticket_id for row in mail] == [*range(1, 12), 16]
    [summary] = [row for row in to_agent(services) if row.kind == "agent_quiet"]
    subject = str(outbox_mail(summary)["Subject"])
    assert subject == f"[#11] Filed quietly: more than 10 new tickets from {ALERTS} in an hour"
    text = outbox_text(summary)
    assert "For the next hour, their new tickets are opened" in text
    assert '"#list from=alerts@monitor.test"' in text
    assert "alert 11" in text  # what the flood looks like
    assert "Since the last notice" not in text  # the first one
    # Its Reply-To is Agnes's own for ticket 11: a reply answers that ticket.
    assert outbox_mail(summary)["Reply-To"].addresses[0].addr_spec.startswith("support+t11a")


def test_a_flood_that_outlasts_the_hour_gets_one_more_summary_with_its_count(
    services: Services, clock: ManualClock
) -> None:
    for n in range(1, 12):  # 11 tickets, a minute apart: the 11th is the summary
        alert(services, n)
        clock.advance(timedelta(minutes=1))
    # One alert a minute for the next hour: more than 10 an hour all along.
    for n in range(12, 72):
        alert(services, n)
        clock.advance(timedelta(minutes=1))

    summaries = [row for row in to_agent(services) if row.kind == "agent_quiet"]
    assert [row.ticket_id for row in summaries] == [11, 71]
    # Tickets 12-70 came between the two summaries.
    assert "Since the last notice like this one (" in outbox_text(summaries[1])
    assert "), 59 more new tickets came from them." in outbox_text(summaries[1])
    assert len(to_agent(services)) == 12


def test_a_sender_who_slows_down_is_heard_of_one_by_one_again(
    services: Services, clock: ManualClock
) -> None:
    for n in range(1, 14):
        alert(services, n)
    assert [row.kind for row in to_agent(services)][-1] == "agent_quiet"
    clock.advance(timedelta(hours=1, minutes=1))

    alert(services, 14)

    last = to_agent(services)[-1]
    assert (last.kind, last.ticket_id) == ("agent_notification", 14)
    assert "alert 14" in outbox_text(last)


def test_replies_in_the_senders_open_tickets_still_reach_the_agents(
    services: Services, clock: ManualClock
) -> None:
    for n in range(1, 14):
        alert(services, n)
    first_ack = next(row for row in outbox_rows(services) if row.kind == "acknowledgement")
    reply_to = outbox_mail(first_ack)["Reply-To"].addresses[0].addr_spec

    receive(
        services,
        make_mail(
            subject="Re: Disk full on host1",
            sender=MONITOR,
            to=reply_to,
            body="Resolved on host1 itself.",
            In_Reply_To=first_ack.message_id,
        ),
        rcpt_to=(reply_to,),
    )

    last = to_agent(services)[-1]
    assert (last.kind, last.ticket_id) == ("agent_notification", 1)
    assert "Resolved on host1 itself." in outbox_text(last)
    assert len(ticket(services, 1)["messages"]) == 3  # the alert, the ack, the reply


def test_other_senders_and_spellings_of_case(services: Services, clock: ManualClock) -> None:
    # The flood's sender in two spellings of case is one sender ...
    for n in range(1, 12):
        alert(services, n, sender=MONITOR if n % 2 else "ALERTS@Monitor.TEST")
    assert [row.kind for row in to_agent(services)][-1] == "agent_quiet"
    # ... and another sender of the same domain is somebody else.
    alert(services, 12, sender="ops@monitor.test")
    assert [row.kind for row in to_agent(services)][-1] == "agent_notification"


@pytest.mark.parametrize("config_values", [0, 3], indirect=True)
def test_the_cap_is_the_admins(services: Services, clock: ManualClock) -> None:
    cap = services.settings.limits.new_ticket_notices_per_hour
    for n in range(1, 16):
        alert(services, n)
    kinds = [row.kind for row in to_agent(services)]
    if cap == 0:  # no cap: every ticket, one by one
        assert kinds == ["agent_notification"] * 15
    else:
        assert kinds == ["agent_notification"] * 3 + ["agent_quiet"]
        assert "more than 3 new tickets" in str(outbox_mail(to_agent(services)[-1])["Subject"])


def test_two_writers_past_the_cap_at_once_tell_the_agents_once(
    services: Services, clock: ManualClock
) -> None:
    """On PostgreSQL two workers' transactions can cross the cap at the same moment: the
    later one's UPDATE waits for the first and then matches no row. (On SQLite the write
    lock orders them whole; the test runs there too.)"""
    for n in range(1, 11):
        alert(services, n)  # unproven: the tests' desk checks no DKIM
    now = clock.now()
    second: dict[str, Any] = {}

    def open_one(session: Any) -> Notice:
        tickets_ = Tickets(session)
        requester = tickets_.person(ALERTS, "", now)
        opened = tickets_.open(requester, "Disk full", "en", now, sender_proven=False)
        return quiet.decide(session, opened, 10, now).notice

    def later_writer() -> None:
        with services.db.transaction() as session:
            second["notice"] = open_one(session)

    with services.db.transaction() as session:
        first = open_one(session)
        thread = threading.Thread(target=later_writer)
        thread.start()
        if PG_URL:  # it reached the UPDATE and waits for the first writer's row lock
            wait_for(lambda: _waiting_for_a_lock(services), 10, "the second UPDATE to wait")
    thread.join(10)

    assert first is Notice.QUIET
    assert second["notice"] is Notice.NONE


def _waiting_for_a_lock(services: Services) -> bool:
    with services.db.engine.connect() as connection:
        query = text(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND query LIKE 'UPDATE people%'"
        )
        return bool(connection.scalar(query))


def test_tickets_opened_before_the_upgrade_count_and_the_downgrade_undoes_it(
    services: Services, clock: ManualClock
) -> None:
    """Migration 0017 adds `people.quiet_since` and the index that counts a sender's
    tickets; it keeps every row both ways."""
    for n in range(1, 6):
        alert(services, n)
    schema.downgrade(services.db, "0016")
    with services.db.engine.connect() as connection:
        assert "quiet_since" not in {c["name"] for c in inspect(connection).get_columns("people")}
    schema.upgrade(services.db)

    for n in range(6, 12):
        alert(services, n)

    assert len(tickets(services)) == 11
    assert [row.kind for row in to_agent(services)] == ["agent_notification"] * 10 + ["agent_quiet"]


@pytest.fixture
def clock() -> ManualClock:
    """Now: `maildesk status` reads the real clock (the flood must be within its hour)."""
    return ManualClock(datetime.now(UTC).replace(microsecond=0))


def test_status_names_the_senders_whose_new_tickets_are_filed_quietly(
    services: Services, config_file: Path, clock: ManualClock
) -> None:
    """Ops want to know who is flooding (to block them at the MTA, or fix their monitor)."""
    for n in range(1, 12):
        alert(services, n)
    alert(services, 1, sender="Alice <alice@customer.test>")

    result = CliRunner().invoke(main, ["--config", str(config_file), "status"])

    assert result.exit_code in (0, 1), result.output
    told = f"{ALERTS} (unproven mail, since {clock.now():%H:%M} UTC)"
    assert f"new tickets filed quietly, agents told once: {told}" in result.stdout.splitlines()
    as_json = CliRunner().invoke(main, ["--config", str(config_file), "status", "--json"])
    assert json.loads(as_json.stdout)["quiet_senders"] == [
        {"sender": ALERTS, "since": clock.now().isoformat(), "proven": False}
    ]


@pytest.mark.parametrize(
    ("line", "accepted"),
    [
        ("#list from=alerts@monitor.test", True),
        ("#list from=Alerts@Monitor.TEST", True),
        ("#list from=", False),
        ("#list from=alerts", False),
        ("#list from=a@b.test c@d.test", False),
        ("#list from=a@b.test'--", False),
    ],
)
def test_list_from_takes_one_plain_address(line: str, accepted: bool) -> None:
    parsed_commands = commands.parse(line)
    assert (not parsed_commands.errors) is accepted
    if accepted:
        assert parsed_commands.commands[0].arg == "from=alerts@monitor.test"


@pytest.mark.skipif(bool(PG_URL), reason="reads SQLite's query plans")
def test_counting_a_senders_tickets_is_an_index_search_on_a_long_history(
    services: Services, clock: ManualClock
) -> None:
    """Every new ticket asks how many its sender opened this hour: a flood must not make
    that question walk the history, nor status's question walk the people."""
    now = clock.now()
    with services.db.transaction() as session:
        session.execute(
            insert(Person),
            [{"email": f"c{n}@customer.test", "created_at": now} for n in range(300)],
        )
        people = session.scalars(select(Person.id)).all()
        session.execute(
            insert(Ticket),
            [
                {
                    "subject": f"t{n}",
                    "requester_id": people[n % len(people)],
                    "created_at": now - timedelta(minutes=n % 600),
                    "updated_at": now,
                }
                for n in range(6000)
            ],
        )
        session.execute(text("ANALYZE"))
    for n in range(1, 12):
        alert(services, n)
    found: dict[str, Any] = {}

    def decide_and_list() -> None:
        later = now + timedelta(hours=2)
        with services.db.transaction() as session:
            tickets_ = Tickets(session)
            opened = tickets_.open(tickets_.person(ALERTS, "", later), "Disk full", "en", later)
            found["notice"] = quiet.decide(session, opened, 10, later).notice
        with services.db.reading() as session:
            found["quiet"] = quiet.quiet_senders(session, now)

    plans = sqlite_plans(services, decide_and_list, "tickets|people")

    assert found["notice"] is Notice.EACH  # two hours on, the 11 are out of the hour
    assert [quiet.sender for quiet in found["quiet"]] == [ALERTS]
    # (An INSERT … RETURNING's plan reads "SCAN tickets": it walks only the new row.)
    reads = [(plan, sql) for plan, sql in plans if not sql.lstrip().startswith("INSERT")]
    scans = [(plan, sql) for plan, sql in reads if re.match(r"SCAN (tickets|people)\b", plan)]
    assert not scans
    assert any("ix_tickets_requester_proof_created" in plan for plan, _ in plans), plans
    assert any("ix_people_quiet_since" in plan for plan, _ in plans), plans


def test_ops_close_what_a_flood_opened_and_nobody_is_mailed(
    services: Services, config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(1, 14):
        alert(services, n)
    receive(services, make_mail(subject="Printer broken"))  # Alice's, ticket 14
    queued = len(outbox_rows(services))
    monkeypatch.setattr(cleanup, "BATCH", 5)  # three transactions
    monkeypatch.setenv("USER", "ops-anna")

    def run(*args: str) -> str:
        result = CliRunner().invoke(main, ["--config", str(config_file), "tickets", "close", *args])
        assert result.exit_code == 0, result.output
        return result.stdout

    dry = run("--from", ALERTS, "--dry-run")
    assert dry.startswith(f"would close 13 tickets of {ALERTS}: #1 #2 #3")
    assert {t["status"] for t in tickets(services) if t["number"] <= 13} == {"new"}

    assert run("--from", ALERTS.upper()).startswith(f"closed 13 tickets of {ALERTS}: #1 #2")

    states = {t["number"]: t["status"] for t in tickets(services)}
    assert states == {**dict.fromkeys(range(1, 14), "closed"), 14: "new"}
    assert ticket(services, 7)["events"][-1] | {"at": None} == {
        "at": None,
        "actor": "ops-anna",
        "field": "status",
        "old": "new",
        "new": "closed",
        "via": "cli",
    }
    assert len(outbox_rows(services)) == queued  # no "closed" notice feeds the loop
    assert run("--from", ALERTS) == f"closed 0 tickets of {ALERTS}\n"
    refused = CliRunner().invoke(
        main, ["--config", str(config_file), "tickets", "close", "--from", "x@y.test\n#1"]
    )
    assert refused.exit_code != 0
    assert "not an e-mail address" in refused.output


def test_a_floods_tickets_do_not_come_back_as_service_level_notices(
    services: Services, clock: ManualClock
) -> None:
    """Hours later, the tickets filed quietly would each breach their first-response
    target: their breaches are recorded, not mailed, until someone owns the ticket."""
    for n in range(1, 14):
        alert(services, n)  # 1-10 told one by one, 11 the summary, 12 and 13 quietly
    with services.db.transaction() as session:
        taken = session.get(Ticket, 13)
        assert taken is not None
        Lifecycle(session, clock.now()).change(taken, "owner", AGNES, AGNES, "mail")
    before = len(outbox_rows(services))
    clock.advance(timedelta(days=1))  # past the 8 working hours of a normal first response

    jobs.sla(services)

    breaches = [row for row in outbox_rows(services)[before:] if row.kind == "agent_sla"]
    assert sorted({row.ticket_id for row in breaches}) == [*range(1, 12), 13]
    assert len(breaches) == 2 * 12  # each to both agents
    assert ticket(services, 12)["events"][-1]["new"] == "first_response breached"
