"""Closing what a flood opened: every ticket one address opened that is not closed yet.

The clean-up after a monitor mailed each alert, or a customer's mail loop opened a
ticket per turn (`pipeline/quiet.py` kept the agents' inboxes quiet meanwhile).
Nobody is mailed: a "closed" notice to a loop's sender is how the loop goes on, and
the agents asked for it. Each ticket gets its status event, by whoever ran it.
Tickets are closed in batches of their own transactions, so the desk's writers
(a 250 waiting at the door) are not held up for the whole clean-up.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from maildesk.db import Database
from maildesk.models import Person, Ticket
from maildesk.states import TicketStatus
from maildesk.tickets.lifecycle import Lifecycle

BATCH = 200


def open_tickets_of(
    session: Session, email: str, after: int = 0, limit: int | None = None
) -> list[Ticket]:
    """The tickets `email` opened that are not closed, oldest first (after ticket `after`)."""
    query = (
        select(Ticket)
        .join(Person, Ticket.requester_id == Person.id)
        .where(
            Person.email == email.lower(),
            Ticket.status != TicketStatus.CLOSED,
            Ticket.id > after,
        )
        .order_by(Ticket.id)
        .limit(limit)
    )
    return list(session.scalars(query))


def close_all_from(db: Database, email: str, now: datetime, actor: str) -> list[int]:
    """Close every ticket `email` opened that is not closed yet; their numbers."""
    closed: list[int] = []
    while True:
        with db.transaction() as session:
            batch = open_tickets_of(session, email, closed[-1] if closed else 0, BATCH)
            lifecycle = Lifecycle(session, now)
            for ticket in batch:
                lifecycle.change(ticket, "status", TicketStatus.CLOSED, actor, "cli")
        closed += [ticket.id for ticket in batch]
        if len(batch) < BATCH:
            return closed
