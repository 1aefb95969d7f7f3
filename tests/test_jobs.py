"""Scheduled jobs: autoclose of undisputed resolved tickets, the agents' daily digest."""

from __future__ import annotations

import email
import email.policy
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, text, update

from maildesk import jobs
from maildesk.clock import ManualClock
from maildesk.config import Settings, from_mapping
from maildesk.models import Ticket
from maildesk.services import Services, build
from maildesk.tickets import digest as digest_limits
from maildesk.tickets.agents import Agents
from maildesk.tickets.lifecycle import Lifecycle
from tests.conftest import PG_URL, make_mail
from tests.helpers import outbox_rows, receive, sqlite_plans, ticket


@pytest.fixture
def config_values(config_values: dict[str, Any]) -> dict[str, Any]:
    config_values["agents"]["addresses"] = ["agent@example.test"]
    return config_values


def resolve(services: Services, number: int) -> None:
    with services.db.transaction() as session:
        found = session.get(Ticket, number)
        assert found is not None
        Lifecycle(session, services.clock.now()).change(
            found, "status", "resolved", "agent@example.test", "command"
        )


def subjects(services: Services) -> list[str]:
    return [
        str(email.message_from_bytes(r.raw, policy=email.policy.default)["Subject"])
        for r in outbox_rows(services)
    ]


def test_resolved_ticket_closes_after_autoclose_days_across_a_restart(
    services: Services, settings: Settings, clock: ManualClock
) -> None:
    receive(services, make_mail())
    resolve(services, 1)
    clock.advance(timedelta(days=6, hours=23))
    assert jobs.autoclose(services) == 0

    # The daemon restarts: a new set of services over the same database.
    services.db.dispose()
    restarted = build(settings, clock)
    clock.advance(timedelta(hours=2))
    assert jobs.autoclose(restarted) == 1
    assert jobs.autoclose(restarted) == 0  # never twice for one ticket

    state = ticket(restarted, 1)
    assert state["status"] == "closed"
    [event] = [e for e in state["events"] if e["new"] == "closed"]
    assert (event["actor"], event["via"]) == ("system", "schedule")
    assert sum("Closed:" in s for s in subjects(restarted)) == 1


def test_a_disputed_resolution_does_not_autoclose(services: Services, clock: ManualClock) -> None:
    receive(services, make_mail(message_id="<m1@customer.test>"))
    resolve(services, 1)
    receive(services, make_mail(body="It is still broken.", In_Reply_To="<m1@customer.test>"))
    clock.advance(timedelta(days=30))
    assert jobs.autoclose(services) == 0
    assert ticket(services, 1)["status"] == "accepted"


def test_digest_lists_waiting_tickets_once_a_day(services: Services, clock: ManualClock) -> None:
    receive(services, make_mail(subject="Printer broken"))
    receive(services, make_mail(subject="Scanner broken", sender="bob@customer.test"))

    assert jobs.digest(services) == 1
    assert jobs.digest(services) == 0  # the same day again: nothing

    [digest] = [r for r in outbox_rows(services) if r.kind == "agent_digest"]
    text = (
        email.message_from_bytes(digest.raw, policy=email.policy.default)
        .get_body(("plain",))
        .get_content()
    )  # type: ignore[union-attr]
    assert "[#1]" in text and "Printer broken" in text and "Scanner broken" in text
    clock.advance(timedelta(days=1))
    assert jobs.digest(services) == 1


def test_digest_skips_agents_with_nothing_waiting(services: Services) -> None:
    with services.db.transaction() as session:
        Agents(session).add("idle@example.test", "Idle", services.clock.now())
    assert jobs.digest(services) == 0


@pytest.mark.skipif(bool(PG_URL), reason="reads SQLite's query plans")
def test_jobs_find_open_tickets_by_index_on_a_quiet_desks_statistics(
    config_values: dict[str, Any], tmp_path: Path, clock: ManualClock
) -> None:
    """`ANALYZE` run when every ticket was closed says the status index narrows
    nothing. Autoclose, the service-level check and the digest (every few minutes,
    daily per agent) then read every ticket ever opened to find the few still open."""
    config_values["sla"] = {"enabled": True}
    services = build(from_mapping(config_values, base_dir=tmp_path), clock)
    services.prepare()
    receive(services, make_mail())
    now = clock.now()
    with services.db.transaction() as session:
        requester = session.get(Ticket, 1).requester_id  # type: ignore[union-attr]
        closed = {
            "status": "closed",
            "requester_id": requester,
            "created_at": now,
            "updated_at": now,
        }
        session.execute(insert(Ticket), [closed] * 3000)
        session.execute(update(Ticket).values(status="closed"))
        session.execute(text("ANALYZE"))  # a quiet desk's statistics: every ticket closed
        session.execute(update(Ticket).where(Ticket.id == 1).values(status="new"))
    resolve(services, 2)
    clock.advance(timedelta(days=8))

    closed_now: list[int] = []

    def run_jobs() -> None:
        closed_now.append(jobs.autoclose(services))
        jobs.sla(services)
        jobs.digest(services)

    plans = sqlite_plans(services, run_jobs, "tickets")
    assert closed_now == [1]
    assert "[#1]" in " ".join(subjects(services))  # the digest and the breach name it
    assert not [(plan, statement) for plan, statement in plans if plan.startswith("SCAN tickets")]
    services.db.dispose()


def test_a_flood_is_one_line_of_the_digest_and_the_digest_has_an_end(
    services: Services, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A monitor's 13 tickets are one line with their range; its critical one and the
    customers' tickets are rows; past the digest's limit, the rest are counted."""
    for n in range(1, 14):
        receive(services, make_mail(subject=f"Disk full {n}", sender="alerts@monitor.test"))
    with services.db.transaction() as session:
        found = session.get(Ticket, 4)
        assert found is not None
        Lifecycle(session, clock.now()).change(found, "priority", "critical", "agent", "mail")
    for n in range(3):
        receive(services, make_mail(subject=f"Printer {n}", sender=f"c{n}@customer.test"))

    assert jobs.digest(services) == 1

    text = digest_text(services)
    assert "Tickets waiting on you (16):" in text
    assert "alerts@monitor.test: 12 tickets, [#1] to [#13]" in text
    listed = [line.split()[0] for line in text.splitlines() if line.startswith("[#")]
    assert listed == ["[#4]", "[#14]", "[#15]", "[#16]"]  # critical first

    monkeypatch.setattr(digest_limits, "MAX_ROWS", 2)
    clock.advance(timedelta(days=1))
    assert jobs.digest(services) == 1
    text = digest_text(services)
    assert [line.split()[0] for line in text.splitlines() if line.startswith("[#")] == [
        "[#4]",
        "[#14]",
    ]
    assert "… and 2 more tickets." in text


def digest_text(services: Services) -> str:
    *_, digest = [r for r in outbox_rows(services) if r.kind == "agent_digest"]
    part = email.message_from_bytes(digest.raw, policy=email.policy.default).get_body(("plain",))  # type: ignore[attr-defined]
    assert part is not None
    return str(part.get_content())
