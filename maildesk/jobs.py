"""Scheduled work, each job one service call in its own transaction.

Jobs keep their state in the database, not in the scheduler: a restart loses
nothing, and running a job twice does nothing twice. Autoclose moves a ticket
only while it is still `resolved` (rows locked, SKIP LOCKED on PostgreSQL);
the digest records the day it was sent in `job_runs` in the same transaction
as its mail.
"""

from __future__ import annotations

import logging
from datetime import date
from typing import TYPE_CHECKING

from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError

from maildesk.models import JobRun, Ticket
from maildesk.outbound.notify import Recipient
from maildesk.tickets.agents import Agents
from maildesk.tickets.lifecycle import Lifecycle

if TYPE_CHECKING:
    from maildesk.services import Services

log = logging.getLogger("maildesk.jobs")

AUTOCLOSE_EVERY_MINUTES = 10


def autoclose(services: Services) -> int:
    """Close resolved tickets nobody disputed within `[lifecycle] autoclose_days`."""
    days = services.settings.lifecycle.autoclose_days
    closed = 0
    with services.db.transaction() as session:
        lifecycle = Lifecycle(session, services.clock.now())
        for ticket in lifecycle.autoclose_candidates(days):
            lifecycle.change(ticket, "status", "closed", "system", "schedule")
            services.notices.status_notice(session, ticket)
            closed += 1
    if closed:
        log.info("closed %d resolved tickets after %d days", closed, days)
    return closed


def digest(services: Services, day: date | None = None) -> int:
    """Mail each agent the tickets waiting on them, once per day."""
    day = day or services.clock.now().date()
    try:
        with services.db.transaction() as session:
            session.add(JobRun(name="digest", key=day.isoformat(), at=services.clock.now()))
            session.flush()
            sent = 0
            for agent in Agents(session).active():
                waiting = list(
                    session.scalars(
                        select(Ticket)
                        .where(
                            Ticket.status.in_(("new", "accepted")),
                            or_(Ticket.owner_id == agent.id, Ticket.owner_id.is_(None)),
                        )
                        .order_by(Ticket.priority != "critical", Ticket.id)
                    )
                )
                if not waiting:
                    continue
                services.notifier.notify_untied(
                    session,
                    None,
                    "agent_digest",
                    Recipient(agent.email, agent.name, agent_id=agent.id),
                    language=services.settings.support.language,
                    answering=None,
                    extra={
                        "day": day.isoformat(),
                        "tickets": [
                            {
                                "tag": services.notifier.tag(t),
                                "subject": t.subject,
                                "status": t.status,
                                "priority": t.priority,
                                "requester": t.requester.email,
                                "owner": t.owner.email if t.owner else "",
                            }
                            for t in waiting
                        ],
                    },
                )
                sent += 1
    except IntegrityError:
        log.info("digest for %s was already sent", day)
        return 0
    return sent
