"""`#closeall`: an agent closes what a flood opened by replying to one of its tickets.

A monitor mailing each alert (or a customer's mail loop) opens ticket after ticket;
agents hear of the first ten and get one "Filed quietly" notice (`test_quiet.py`).
Replying `#closeall` to it closes every open ticket of that sender that nobody owns,
mailing no one but the agent, who learns what was closed and what was kept. A mail
that does not prove the agent closes nothing until the agent's mailbox confirms.
The clock is the test's ManualClock; the database is SQLite or PostgreSQL.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import text, update
from sqlalchemy.orm import Session

from maildesk.clock import ManualClock
from maildesk.models import Outbox, Ticket
from maildesk.services import Services
from maildesk.tickets import cleanup
from tests.conftest import PG_URL, make_mail, wait_for
from tests.helpers import outbox_mail, outbox_rows, outbox_text, receive, ticket, tickets

AGNES = "agnes@example.test"
BOB = "bob@example.test"
ALERTS = "alerts@monitor.test"
ALICE = "alice@customer.test"


@pytest.fixture
def config_values(config_values: dict[str, Any]) -> dict[str, Any]:
    config_values["agents"]["addresses"] = [AGNES, BOB]
    return config_values


def to(services: Services, address: str, kind: str | None = None) -> list[Outbox]:
    rows = [row for row in outbox_rows(services) if row.recipients == [address]]
    return [row for row in rows if kind is None or row.kind == kind]


def flood(services: Services, clock: ManualClock, count: int) -> None:
    for n in range(1, count + 1):
        alert = make_mail(subject=f"Disk full on host{n}", sender=f"Monitoring <{ALERTS}>",
                          body=f"alert {n}")  # fmt: skip
        receive(services, alert)
        clock.advance(timedelta(seconds=20))


def reply(services: Services, agent: str, to_mail: Outbox, text: str) -> None:
    """`agent` answers `to_mail` from their mail client (its signed Reply-To: proven)."""
    notice = outbox_mail(to_mail)
    address = notice["Reply-To"].addresses[0].addr_spec
    raw = make_mail(subject=f"Re: {notice['Subject']}", sender=agent, to=address, body=text,
                    In_Reply_To=notice["Message-ID"], References=notice["Message-ID"])  # fmt: skip
    receive(services, raw, mail_from=agent, rcpt_to=(address,))


def statuses(services: Services) -> dict[int, str]:
    return {t["number"]: t["status"] for t in tickets(services)}


def test_closeall_in_a_reply_to_the_quiet_notice_closes_the_flood_and_mails_only_the_agent(
    services: Services, clock: ManualClock
) -> None:
    flood(services, clock, 12)
    receive(services, make_mail(subject="Printer broken"))  # a customer, ticket 13
    flood_mail = len(to(services, ALERTS))
    [quiet] = to(services, AGNES, "agent_quiet")
    assert '"#closeall"' in outbox_text(quiet)  # the notice says how
    bob_before = len(to(services, BOB))

    reply(services, AGNES, quiet, "#closeall\n\nAgnes")

    assert statuses(services) == {**dict.fromkeys(range(1, 13), "closed"), 13: "new"}
    assert len(to(services, ALERTS)) == flood_mail  # no "closed" notice feeds a loop
    assert len(to(services, BOB)) == bob_before
    assert to(services, ALICE, "closed") == []
    [answer] = to(services, AGNES, "agent_closed_all")
    assert str(outbox_mail(answer)["Subject"]) == (
        f"[#11] #closeall: 12 tickets from {ALERTS} closed"
    )
    text = outbox_text(answer)
    assert f"Closed 12 tickets from {ALERTS} ([#1] to [#12])" in text
    assert "did not prove its sender" in text
    assert "kept open" not in text
    # Each ticket's history says who closed it and how; none of them was taken.
    first = ticket(services, 1)
    assert first["owner"] is None
    [event] = [e for e in first["events"] if e["new"] == "closed"]
    assert (event["old"], event["actor"], event["via"]) == ("new", AGNES, "command")
    # Agnes's mail is kept on the ticket she answered, as an internal note.
    last = ticket(services, 11)["messages"][-1]
    assert (last["kind"], last["direction"]) == ("note", "in")


def test_a_ticket_closed_by_mistake_is_reopened_with_a_status_command(
    services: Services, clock: ManualClock
) -> None:
    flood(services, clock, 12)
    [quiet] = to(services, AGNES, "agent_quiet")
    reply(services, AGNES, quiet, "#closeall")
    [note_5] = [row for row in to(services, BOB) if row.ticket_id == 5]

    reply(services, BOB, note_5, "#status accepted")

    assert statuses(services)[5] == "accepted"
    assert ticket(services, 5)["events"][-1]["actor"] == BOB


def test_tickets_an_agent_owns_and_mail_of_the_other_proof_stay_open(
    services: Services, clock: ManualClock
) -> None:
    flood(services, clock, 12)
    [note_3] = [row for row in to(services, BOB) if row.ticket_id == 3]
    reply(services, BOB, note_3, "#take")
    # Tickets 1 and 2 came with a DKIM signature of the monitor's domain.
    with services.db.transaction() as session:
        session.execute(update(Ticket).where(Ticket.id <= 2).values(sender_proven=True))
    [quiet] = to(services, AGNES, "agent_quiet")

    reply(services, AGNES, quiet, "#closeall")

    assert statuses(services) == {
        **dict.fromkeys(range(1, 13), "closed"), 1: "new", 2: "new", 3: "accepted",
    }  # fmt: skip
    text = outbox_text(to(services, AGNES, "agent_closed_all")[0])
    assert f"Closed 9 tickets from {ALERTS} ([#4] to [#12])" in text
    assert f"1 open tickets from {ALERTS} have an owner and were kept open." in text
    assert f"2 open tickets from {ALERTS} proved their sender and were kept open" in text
    assert f'"#list from={ALERTS}"' in text


def test_one_closeall_closes_at_most_its_share_and_says_how_many_are_left(
    services: Services, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cleanup, "MAX_BY_MAIL", 5)
    flood(services, clock, 12)
    [quiet] = to(services, AGNES, "agent_quiet")

    reply(services, AGNES, quiet, "#closeall")
    assert list(statuses(services).values()).count("closed") == 5
    [answer] = to(services, AGNES, "agent_closed_all")
    assert "7 more of them are still open" in outbox_text(answer)

    reply(services, AGNES, quiet, "#closeall")
    reply(services, AGNES, quiet, "#closeall")
    assert set(statuses(services).values()) == {"closed"}
    answers = to(services, AGNES, "agent_closed_all")
    assert "Closed 2 tickets" in outbox_text(answers[2])


def test_closeall_goes_alone(services: Services, clock: ManualClock) -> None:
    flood(services, clock, 12)
    [quiet] = to(services, AGNES, "agent_quiet")

    reply(services, AGNES, quiet, "#closeall\n#priority low")

    assert "closed" not in statuses(services).values()
    [refused] = to(services, AGNES, "agent_error")
    assert "#closeall: closes many tickets; write it alone" in outbox_text(refused)


def test_a_forged_closeall_closes_nothing_until_the_agents_mailbox_confirms(
    services: Services, clock: ManualClock
) -> None:
    flood(services, clock, 12)
    forged = make_mail(subject="[#11] clean up", sender=AGNES, body="#closeall")
    receive(services, forged, mail_from="mallory@stranger.test")

    assert "closed" not in statuses(services).values()
    [ask] = to(services, AGNES, "agent_confirm")
    assert "#closeall" in outbox_text(ask)
    address = outbox_mail(ask)["Reply-To"].addresses[0].addr_spec
    assert address.startswith("support+c")

    yes = make_mail(subject="Re: confirm", sender=AGNES, to=address, body="yes",
                    In_Reply_To=outbox_mail(ask)["Message-ID"])  # fmt: skip
    receive(services, yes, mail_from=AGNES, rcpt_to=(address,))

    assert set(statuses(services).values()) == {"closed"}
    assert [row.kind for row in to(services, AGNES)][-2:] == ["agent_closed_all", "agent_confirmed"]


def test_a_customer_writing_closeall_closes_nothing(services: Services, clock: ManualClock) -> None:
    receive(services, make_mail(subject="Printer broken"))  # Alice's ticket 1
    flood(services, clock, 3)
    [ack] = to(services, ALICE, "acknowledgement")
    address = outbox_mail(ack)["Reply-To"].addresses[0].addr_spec
    raw = make_mail(subject="Re: [#1] Printer broken", to=address, body="#closeall")
    receive(services, raw, rcpt_to=(address,))
    # The monitor itself, in its own ticket.
    receive(services, make_mail(subject="Re: [#2] Disk full on host1", sender=ALERTS,
                                body="#closeall"))  # fmt: skip

    assert "closed" not in statuses(services).values()
    assert ticket(services, 1)["messages"][-1]["body_text"].startswith("#closeall")
    assert to(services, AGNES, "agent_closed_all") == []


def test_two_agents_closing_the_same_flood_at_once_close_each_ticket_once(
    services: Services, clock: ManualClock
) -> None:
    """On PostgreSQL two workers (or instances) may run two agents' #closeall at the same
    moment: the later one waits for the first one's row locks, then finds the tickets
    closed, and writes no second status event for them. (On SQLite the write lock
    orders the two whole; the test runs there too.)"""
    flood(services, clock, 12)
    now = clock.now()
    later: dict[str, cleanup.Flood] = {}

    def close(session: Session, actor: str) -> cleanup.Flood:
        first = session.get(Ticket, 1)
        assert first is not None
        return cleanup.close_flood(session, first, now, actor)

    def later_agent() -> None:
        with services.db.transaction() as session:
            later["flood"] = close(session, BOB)

    with services.db.transaction() as session:
        earlier = close(session, AGNES)
        thread = threading.Thread(target=later_agent)
        thread.start()
        if PG_URL:  # it reached its reads and waits for the first one's row locks
            wait_for(lambda: waiting_for_a_lock(services), 10, "the second #closeall to wait")
    thread.join(10)

    assert len(earlier.closed) == 12
    assert later["flood"].closed == ()
    for number in range(1, 13):
        closing = [e for e in ticket(services, number)["events"] if e["new"] == "closed"]
        assert [(e["old"], e["actor"]) for e in closing] == [("new", AGNES)]


def waiting_for_a_lock(services: Services) -> bool:
    with services.db.engine.connect() as connection:
        query = text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
        return bool(connection.scalar(query))
