"""What `#list` shows an agent: which tickets each filter means, as compact rows.

Filters: `mine` (open tickets the agent owns), `unassigned` (open, nobody
owns them), `open` (the default: new, accepted, waiting for the customer),
`waiting` (waiting for the customer), `status=S`, `from=EMAIL` (open tickets that
address opened: a sender whose new tickets are filed quietly, `pipeline/quiet.py`),
`all`, and `overdue`
(breached service levels, `tickets/sla.py`; an error while `[sla]` is off).
Rows are newest activity first; "last activity" is the ticket's `updated_at`
(every message and every change moves it).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from maildesk.clock import as_utc
from maildesk.models import Agent, Person, Ticket
from maildesk.states import TicketStatus
from maildesk.tickets import sla
from maildesk.tickets.command_errors import Code, CommandError, error
from maildesk.tickets.lifecycle import OPEN_STATUSES

MAX_ROWS = 50


class ListError(Exception):
    """The filter cannot be answered (e.g. `overdue` without service levels)."""

    def __init__(self, problem: CommandError) -> None:
        super().__init__(str(problem))
        self.error = problem


@dataclass(frozen=True)
class Row:
    number: int
    status: str
    priority: str
    owner: str  # "" when unassigned
    created_at: datetime
    last_activity: datetime
    subject: str


def row(ticket: Ticket) -> Row:
    return Row(
        number=ticket.id,
        status=ticket.status,
        priority=ticket.priority,
        owner=ticket.owner.email if ticket.owner else "",
        created_at=as_utc(ticket.created_at),
        last_activity=as_utc(ticket.updated_at),
        subject=ticket.subject,
    )


def tickets_for(
    session: Session, agent: Agent, wanted: str, limit: int = MAX_ROWS, *, sla_enabled: bool
) -> list[Row]:
    """The rows of `#list wanted` for `agent` (at most `limit`; raises ListError)."""
    query = select(Ticket)
    wanted = wanted or "open"
    if wanted == "mine":
        query = query.where(Ticket.owner_id == agent.id, Ticket.status.in_(OPEN_STATUSES))
    elif wanted == "unassigned":
        query = query.where(Ticket.owner_id.is_(None), Ticket.status.in_(OPEN_STATUSES))
    elif wanted == "open":
        query = query.where(Ticket.status.in_(OPEN_STATUSES))
    elif wanted == "waiting":
        query = query.where(Ticket.status == TicketStatus.WAITING_CUSTOMER)
    elif wanted.startswith("status="):
        query = query.where(Ticket.status == wanted.removeprefix("status="))
    elif wanted.startswith("from="):
        address = wanted.removeprefix("from=").lower()
        requester = select(Person.id).where(Person.email == address)
        query = query.where(
            Ticket.requester_id == requester.scalar_subquery(), Ticket.status.in_(OPEN_STATUSES)
        )
    elif wanted == "overdue":
        if not sla_enabled:
            raise ListError(error(Code.OVERDUE_WITHOUT_SLA, "#list overdue"))
        return [row(t) for t in sla.overdue(session)[:limit]]
    elif wanted != "all":
        raise ListError(error(Code.UNKNOWN_FILTER, f"#list {wanted}"))
    query = query.order_by(Ticket.updated_at.desc(), Ticket.id.desc()).limit(limit)
    return [row(t) for t in session.scalars(query)]


def age(since: datetime, now: datetime) -> str:
    """A short age for a table cell: `45m`, `5h`, `3d 4h`."""
    delta = max(now - as_utc(since), timedelta(0))
    minutes = int(delta.total_seconds() // 60)
    if minutes < 60:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 24:
        return f"{hours}h"
    days, rest = divmod(hours, 24)
    return f"{days}d {rest}h" if rest else f"{days}d"
