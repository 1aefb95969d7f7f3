"""Service levels on a ManualClock: working hours across a weekend, the pause while the
ticket waits for the customer, reminders at 75 %, breach notices and events, once each."""

from __future__ import annotations

import email
import email.message
import email.policy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from maildesk import jobs
from maildesk.clock import ManualClock
from maildesk.config import Settings, SlaSettings
from maildesk.models import Event, Ticket
from maildesk.services import Services, build
from maildesk.tickets import sla
from maildesk.tickets.lifecycle import Lifecycle
from tests.conftest import make_mail
from tests.helpers import outbox_rows, receive

# Friday 9 January 2026, 15:00 in Prague (UTC+1 in winter).
FRIDAY_3PM = datetime(2026, 1, 9, 14, 0, tzinfo=UTC)
AGENTS = ["ann@example.test", "ben@example.test"]


def prague(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 1, day, hour - 1, minute, tzinfo=UTC)


POLICY = sla.policy_from(SlaSettings(holidays=("2026-01-12",)))


def test_a_working_day_target_skips_the_weekend_and_holidays() -> None:
    cal = sla.policy_from(SlaSettings()).calendar
    # Friday 15:00 + 8 working hours: 2 h on Friday, 6 h on Monday -> Monday 14:00.
    assert cal.add(FRIDAY_3PM, timedelta(hours=8)) == prague(12, 14)
    # With Monday a holiday, Tuesday 14:00.
    assert POLICY.calendar.add(FRIDAY_3PM, timedelta(hours=8)) == prague(13, 14)
    assert cal.working(FRIDAY_3PM, prague(12, 9)) == timedelta(hours=3)


def test_the_clock_pauses_while_waiting_for_the_customer() -> None:
    policy = sla.policy_from(SlaSettings())
    waiting = [
        sla.StatusChange(prague(9, 16), "waiting_customer"),
        sla.StatusChange(prague(13, 10), "accepted"),  # the customer answered Tuesday 10:00
    ]
    # The first response came when the agent asked the customer (Friday 16:00).
    state = sla.state(
        policy, "normal", FRIDAY_3PM, waiting, prague(9, 16), prague(13, 12), "accepted"
    )
    assert state.first_response.met_at == prague(9, 16) and not state.first_response.breached
    # Resolution: 1 h on Friday, paused over Monday, 2 h on Tuesday = 3 h of 5 days.
    assert state.resolution.used == timedelta(hours=3)
    assert state.resolution.running and not state.resolution.breached
    # 45 h - 3 h = 42 h from Tuesday 12:00: 5 h that day, then Wed, Thu, Fri and Monday
    # (36 h), and 1 h on Tuesday 20 January -> 09:00.
    assert state.resolution.due == prague(20, 9)
    paused = sla.state(
        policy, "normal", FRIDAY_3PM, waiting[:1], prague(9, 16), prague(13, 12), "waiting_customer"
    )
    assert not paused.resolution.running and paused.resolution.due is None
    assert paused.as_json()["paused"] is True


# Friday 9 January 2026, 18:00 in Prague: after working hours, before a weekend.
FRIDAY_6PM = prague(9, 18)


def test_a_critical_first_response_counts_around_the_clock_its_resolution_working_days() -> None:
    policy = sla.policy_from(SlaSettings())  # shipped: critical 1 h / 1 working day
    state = sla.state(policy, "critical", FRIDAY_6PM, [], None, prague(9, 18, 30), "new")
    # 1 h from Friday 18:00, nights and weekends counted: Friday 19:00, half used by 18:30.
    assert state.first_response.due == prague(9, 19)
    assert state.first_response.share == 0.5
    # One working day (08:00-17:00) from Monday 08:00: Monday 17:00, nothing used yet.
    assert state.resolution.due == prague(12, 17)
    assert state.resolution.used == timedelta()
    # Normal priority keeps working hours for both: 8 h from Monday 08:00.
    normal = sla.state(policy, "normal", FRIDAY_6PM, [], None, prague(9, 18, 30), "new")
    assert normal.first_response.due == prague(12, 16)
    # With the setting emptied, a critical first response waits for Monday 09:00.
    working = sla.policy_from(SlaSettings(first_response_around_the_clock=()))
    late = sla.state(working, "critical", FRIDAY_6PM, [], None, prague(9, 18, 30), "new")
    assert late.first_response.due == prague(12, 9)


def test_a_ticket_opened_this_very_moment_has_running_clocks() -> None:
    # #show right after the ticket opened said "paused": no time had run yet.
    state = sla.state(sla.policy_from(SlaSettings()), "normal", FRIDAY_3PM, [], None,
                      FRIDAY_3PM, "new")  # fmt: skip
    assert state.first_response.running and state.first_response.due == prague(12, 14)
    assert state.as_json()["paused"] is False


def test_first_response_around_the_clock_names_priorities_only() -> None:
    with pytest.raises(ValueError, match="not a priority: urgent"):
        sla.policy_from(SlaSettings(first_response_around_the_clock=("critical", "urgent")))


@pytest.fixture
def config_values(config_values: dict[str, Any]) -> dict[str, Any]:
    config_values["agents"]["addresses"] = AGENTS
    config_values["sla"] = {"hours": "08:00-17:00", "timezone": "Europe/Prague"}
    return config_values


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(FRIDAY_3PM)


def sla_mail(services: Services) -> list[tuple[str, list[str]]]:
    out = []
    for row in outbox_rows(services):
        if row.kind == "agent_sla":
            message = email.message_from_bytes(row.raw, policy=email.policy.default)
            out.append((str(message["Subject"]), row.recipients))
    return out


def sla_texts(services: Services) -> list[str]:
    """The plain text of each SLA mail, in the order queued."""
    out = []
    for row in outbox_rows(services):
        if row.kind == "agent_sla":
            message = email.message_from_bytes(row.raw, policy=email.policy.default)
            assert isinstance(message, email.message.EmailMessage)
            part = message.get_body(("plain",))
            assert part is not None
            out.append(str(part.get_content()))
    return out


def set_status(services: Services, number: int, status: str, actor: str) -> None:
    with services.db.transaction() as session:
        found = session.get(Ticket, number)
        assert found is not None
        Lifecycle(session, services.clock.now()).change(found, "status", status, actor, "command")


def test_reminder_then_breach_across_a_weekend_once_each(
    services: Services, clock: ManualClock, settings: Settings
) -> None:
    receive(
        services, make_mail("Invoices do not print")
    )  # Friday 15:00, normal: 8 h first response
    assert jobs.sla(services) == 0

    # 75 % of 8 h is 6 h: 2 h on Friday, 4 h on Monday -> Monday 12:00. The weekend is free.
    clock.advance(prague(12, 11, 59) - clock.now())
    assert jobs.sla(services) == 0
    clock.advance(timedelta(minutes=1))
    assert jobs.sla(services) == 2  # nobody owns it: both agents are reminded
    [(subject, to_ann), (_, to_ben)] = sla_mail(services)
    assert "SLA reminder (first response)" in subject and "[#1]" in subject
    assert {to_ann[0], to_ben[0]} == set(AGENTS)
    assert jobs.sla(services) == 0  # once

    # Monday 14:00 is the due time; a minute later every agent hears of the breach.
    clock.advance(prague(12, 14, 1) - clock.now())
    assert jobs.sla(services) == 2
    breaches = [s for s, _ in sla_mail(services) if "BREACHED" in s]
    assert len(breaches) == 2 and "first response" in breaches[0]
    with services.db.reading() as session:
        events = session.scalars(select(Event).where(Event.field == "sla")).all()
        assert [(e.new, e.via) for e in events] == [("first_response breached", "schedule")]
        assert [t.id for t in sla.overdue(session)] == [1]

    # A restarted daemon (new services on the same database) sends nothing again.
    again = build(settings, clock)
    assert jobs.sla(again) == 0
    again.db.dispose()


def test_waiting_for_the_customer_pauses_reminders(services: Services, clock: ManualClock) -> None:
    receive(services, make_mail("Export fails"))  # Friday 15:00
    with services.db.transaction() as session:
        ticket = session.get(Ticket, 1)
        assert ticket is not None
        ticket.owner_id = 1  # ann owns it: only she is reminded
    clock.advance(timedelta(minutes=30))
    set_status(services, 1, "waiting_customer", AGENTS[0])  # the first response, 15:30
    # The resolution clock used 30 min; it stays paused over the weekend and Monday.
    clock.advance(prague(13, 9) - clock.now())
    assert jobs.sla(services) == 0
    set_status(services, 1, "accepted", "alice@customer.test")  # the customer answers Tuesday 9:00
    # Resolution target 5 days = 45 h; 75 % = 33 h 45 min; 33 h 15 min left from Tuesday 9:00:
    # Tue 8 h, Wed 9 h, Thu 9 h (26 h), Fri 7 h 15 min -> Friday 16 January 15:15.
    clock.advance(prague(16, 15, 14) - clock.now())
    assert jobs.sla(services) == 0
    clock.advance(timedelta(minutes=1))
    assert jobs.sla(services) == 1
    [(subject, recipients)] = sla_mail(services)
    assert "SLA reminder (resolution)" in subject and recipients == [AGENTS[0]]
    with services.db.reading() as session:
        assert sla.overdue(session) == []


def test_tickets_list_json_has_the_sla_object(services: Services, config_file: Any) -> None:
    import json

    from click.testing import CliRunner

    from maildesk.cli import main

    receive(services, make_mail("Old request"))  # January 2026: long past due by the real clock
    result = CliRunner().invoke(main, ["--config", str(config_file), "tickets", "list", "--json"])
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.output)
    assert row["sla"]["first_response_breached"] is True
    assert row["sla"]["first_response_due"] == prague(12, 14).isoformat()
    assert row["sla"]["resolution_breached"] is True and row["sla"]["paused"] is False


def set_priority(services: Services, number: int, priority: str) -> None:
    with services.db.transaction() as session:
        found = session.get(Ticket, number)
        assert found is not None
        Lifecycle(session, services.clock.now()).change(
            found, "priority", priority, AGENTS[0], "cli"
        )


def test_a_critical_bug_mailed_on_friday_evening_is_chased_that_evening(
    services: Services, clock: ManualClock
) -> None:
    clock.advance(FRIDAY_6PM - clock.now())
    receive(services, make_mail("Production is down"))
    set_priority(services, 1, "critical")

    # 75 % of 1 h, counted around the clock: Friday 18:45, not Monday morning.
    clock.advance(timedelta(minutes=44))
    assert jobs.sla(services) == 0
    clock.advance(timedelta(minutes=1))
    assert jobs.sla(services) == 2  # nobody owns it: both agents
    assert all("SLA reminder (first response)" in s for s, _ in sla_mail(services))
    # The reminder says why it comes on a Friday evening.
    assert all("counts every hour, nights, weekends" in t for t in sla_texts(services))
    clock.advance(prague(9, 19, 1) - clock.now())
    assert jobs.sla(services) == 2
    assert ["BREACHED (first response)" in s for s, _ in sla_mail(services)][2:] == [True, True]
    with services.db.reading() as session:
        assert [t.id for t in sla.overdue(session)] == [1]

    # The resolution target is one working day: the weekend is quiet, and Monday's
    # reminder comes at 75 % of 9 working hours, 14:45.
    clock.advance(prague(12, 14, 44) - clock.now())
    assert jobs.sla(services) == 0
    clock.advance(timedelta(minutes=1))
    assert jobs.sla(services) == 2
    [*_, (subject, _)] = sla_mail(services)
    assert "SLA reminder (resolution)" in subject
    assert "This target counts working hours only." in sla_texts(services)[-1]
