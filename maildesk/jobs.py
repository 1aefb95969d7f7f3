"""Scheduled work, each job one service call in its own transaction.

Jobs keep their state in the database, not in the scheduler: a restart loses
nothing, and running a job twice does nothing twice. Autoclose moves a ticket
only while it is still `resolved` (rows locked, SKIP LOCKED on PostgreSQL);
the digest records the day it was sent in `job_runs` in the same transaction
as its mail. So does the SLA job, for each reminder and breach notice (one per
ticket, priority, target and kind), and a breach is also a ticket event.
The purge (`retention.py`) deletes in short batches and counts what it removed,
so two runs at once remove each row once.
`one_instance` wraps a job so that, when several instances share PostgreSQL,
one of them runs it at a time (`maildesk/exclusive.py`); the daemon schedules
the wrapped jobs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import date, datetime
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from maildesk.clock import as_utc
from maildesk.db import rare
from maildesk.exclusive import singly
from maildesk.models import Agent, Event, JobRun, Ticket
from maildesk.outbound.catalogue import AgentDigest, AgentSla, DigestGroup, DigestRow, SlaState
from maildesk.outbound.notify import Recipient
from maildesk.states import TicketStatus
from maildesk.tickets import sla as service_levels
from maildesk.tickets.agents import Agents
from maildesk.tickets.digest import summarize
from maildesk.tickets.lifecycle import Lifecycle

if TYPE_CHECKING:
    from maildesk.services import Services

log = logging.getLogger("maildesk.jobs")

AUTOCLOSE_EVERY_MINUTES = 10
SLA_EVERY_MINUTES = 1
PURGE_EVERY_MINUTES = 60


def one_instance(name: str, job: Callable[[Services], object]) -> Callable[[Services], None]:
    """`job`, run on one instance at a time: skipped here while another instance runs it."""

    def run(services: Services) -> None:
        singly(services.db, f"maildesk:job:{name}", lambda: job(services))

    return run


def autoclose(services: Services) -> int:
    """Close resolved tickets nobody disputed within `[lifecycle] autoclose_days`."""
    days = services.settings.lifecycle.autoclose_days
    closed = 0
    with services.db.transaction() as session:
        lifecycle = Lifecycle(session, services.clock.now())
        for ticket in lifecycle.autoclose_candidates(days):
            lifecycle.change(ticket, "status", TicketStatus.CLOSED, "system", "schedule")
            services.notices.status_notice(session, ticket)
            closed += 1
    if closed:
        log.info("closed %d resolved tickets after %d days", closed, days)
    return closed


def purge(services: Services, stopping: Callable[[], bool] = lambda: False) -> int:
    """Forget what `[retention]` says is old enough (maildesk/retention.py); returns rows.
    `stopping`: serve is shutting down (the purge returns between two batches)."""
    from maildesk import retention

    clock = services.clock
    return retention.purge(services.db, services.settings, clock.now(), stopping=stopping).total


def digest(services: Services, day: date | None = None) -> int:
    """Mail each agent the tickets waiting on them, once per day.

    The tickets are read before the write transaction, outside SQLite's write lock:
    after a flood thousands wait, and reading them inside held the desk's writers
    (a 250 at the door among them) for as long as it took."""
    day = day or services.clock.now().date()
    with services.db.reading() as session:
        digests = _digests(services, session, services.clock.now())
    try:
        with services.db.transaction() as session:
            session.add(JobRun(name="digest", key=day.isoformat(), at=services.clock.now()))
            session.flush()
            for to, (rows, total, groups, unlisted) in digests:
                note = AgentDigest(day.isoformat(), rows, total, groups, unlisted)
                services.notifier.notify(session, note, to)
    except IntegrityError:
        log.info("digest for %s was already sent", day)
        return 0
    return len(digests)


_Digest = tuple[tuple[DigestRow, ...], int, tuple[DigestGroup, ...], int]


def _digests(
    services: Services, session: Session, now: datetime
) -> list[tuple[Recipient, _Digest]]:
    """Each agent with tickets waiting, and what their digest lists (rows, how many wait,
    the senders shown as one line, the rows left out)."""
    # Read once for every agent: after a flood, thousands wait unassigned.
    open_now = list(
        session.scalars(
            select(Ticket)
            .where(rare(Ticket.status.in_((TicketStatus.NEW, TicketStatus.ACCEPTED))))
            .order_by(Ticket.priority != "critical", Ticket.id)
            .options(selectinload(Ticket.requester), selectinload(Ticket.owner))
        )
    )
    digests = []
    for agent in Agents(session).active():
        waiting = [t for t in open_now if t.owner_id in (None, agent.id)]
        if not waiting:
            continue
        summary = summarize(waiting)
        rows = tuple(
            DigestRow(
                tag=services.notifier.tag(t),
                subject=t.subject,
                status=t.status,
                priority=t.priority,
                requester=t.requester.email,
                owner=t.owner.email if t.owner else "",
                age=age(t.created_at, now),
            )
            for t in summary.listed
        )
        groups = tuple(
            DigestGroup(
                requester=g.requester,
                count=g.count,
                first=services.notifier.tag_of(g.first),
                last=services.notifier.tag_of(g.last),
            )
            for g in summary.groups
        )
        digest = (rows, len(waiting), groups, summary.unlisted)
        digests.append((Recipient.of_agent(agent), digest))
    return digests


def sla(services: Services) -> int:
    """Remind at 75 % of a service-level target and tell every agent of a breach, once each.

    The reminder goes to the ticket's owner, or to every active agent while nobody
    owns it; a breach notice goes to every active agent and is recorded as an
    event (`sla`: `first_response breached`, `resolution breached`). A ticket filed
    quietly (one of a flood, `pipeline/quiet.py`) that nobody owns is recorded alike
    but mailed to no one. What was sent
    is a `job_runs` row written with the mail, so a restart or a second instance
    sends nothing twice (on PostgreSQL a concurrent run fails on the key and
    rolls back). Returns how many notices were queued.
    """
    settings = services.settings
    if not settings.sla.enabled:
        return 0
    policy = service_levels.policy_from(settings.sla)
    now = services.clock.now()
    try:
        with services.db.transaction() as session:
            tickets = list(
                session.scalars(
                    select(Ticket).where(rare(Ticket.status.in_(service_levels.RUNNING)))
                )
            )
            states = service_levels.states(session, policy, now, tickets)
            agents = Agents(session).active()
            queued = 0
            for ticket in tickets:
                for clock in states[ticket.id].clocks:
                    queued += _sla_notice(services, session, ticket, clock, agents, policy)
    except IntegrityError:
        log.info("another run sent these SLA notices")
        return 0
    if queued:
        log.info("queued %d service-level notices", queued)
    return queued


def _sla_notice(
    services: Services,
    session: Session,
    ticket: Ticket,
    clock: service_levels.Clock,
    agents: list[Agent],
    policy: service_levels.Policy,
) -> int:
    if clock.met_at is not None:
        return 0
    if clock.breached:
        kind, audience = "breach", agents
    elif clock.share >= service_levels.REMIND_AT:
        owner = [a for a in agents if a.id == ticket.owner_id]
        kind, audience = "reminder", owner or agents
    else:
        return 0
    if ticket.filed_quietly and ticket.owner_id is None:
        # One of a flood the agents were told of once (pipeline/quiet.py): a notice per
        # ticket would be the flood again, hours later. Recorded, not mailed.
        audience = []
    now = services.clock.now()
    key = f"{ticket.id}:{ticket.priority}:{clock.name}"
    if session.get(JobRun, ("sla", f"{key}:{kind}")) is not None:
        return 0
    session.add(JobRun(name="sla", key=f"{key}:{kind}", at=now))
    if kind == "breach":
        # Both thresholds may have passed since the last run: the breach says it all.
        if session.get(JobRun, ("sla", f"{key}:reminder")) is None:
            session.add(JobRun(name="sla", key=f"{key}:reminder", at=now))
        new = f"{clock.name} {service_levels.BREACH}"
        session.add(
            Event(ticket_id=ticket.id, at=now, actor="system", field="sla", new=new, via="schedule")
        )
    session.flush()
    due = clock.due.astimezone(policy.calendar.zone).strftime("%Y-%m-%d %H:%M") if clock.due else ""
    note = AgentSla(
        SlaState(
            kind=kind,
            target=clock.name,
            due=due,
            used_percent=int(clock.share * 100),
            age=age(ticket.created_at, now),
            around_the_clock=(
                policy.hours(ticket.priority, clock.name) is service_levels.AROUND_THE_CLOCK
            ),
        )
    )
    for agent in audience:
        services.notifier.notify(session, note, Recipient.of_agent(agent), ticket=ticket)
    return len(audience)


def age(since: datetime, now: datetime) -> str:
    """A short age for mail: `45m`, `5h`, `3d 4h` (calendar time since `since`)."""
    minutes = max(int((now - as_utc(since)).total_seconds() // 60), 0)
    if minutes < 60:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 24:
        return f"{hours}h"
    days, rest = divmod(hours, 24)
    return f"{days}d {rest}h" if rest else f"{days}d"
