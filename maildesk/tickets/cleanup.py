"""Closing what a flood opened, many tickets at a time, mailing no one.

The clean-up after a monitor mailed each alert, or a customer's mail loop opened a
ticket per turn (`pipeline/quiet.py` kept the agents' inboxes quiet meanwhile).
Nobody is mailed: a "closed" notice to a loop's sender is how the loop goes on, and
the agents asked for it. Each ticket gets its status event, by whoever ran it.

Two ways in: ops run `maildesk tickets close --from ADDRESS` (every ticket the
address opened, in batches of their own transactions, so the desk's writers are
not held up for the whole clean-up), and an agent replies `#closeall` on one of
the flood's tickets (`close_flood`: the tickets nobody took, of the same sender and
the same proof, at most `MAX_BY_MAIL` inside the processing's transaction).
Both close the same way (`_close`): three statements for a batch, not one ORM
change per ticket: 2,000 tickets hold SQLite's write lock about 45 ms, where an ORM
change per ticket took about 270 (`bench/closeall.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import ColumnElement, Table, func, insert, or_, select, update
from sqlalchemy.orm import Session

from maildesk.db import Database
from maildesk.models import Event, Person, Ticket
from maildesk.states import TicketStatus

BATCH = 200
# Tickets one `#closeall` closes: the rest wait for the next one (the answer says how
# many), so an agent's reply never holds the write lock for long.
MAX_BY_MAIL = 2000

_TICKETS = cast(Table, Ticket.__table__)
_EVENTS = cast(Table, Event.__table__)


def _opened_by(email: str) -> ColumnElement[bool]:
    """Tickets the address `email` opened (whatever their status)."""
    requester = select(Person.id).where(Person.email == email.lower())
    return Ticket.requester_id.in_(requester.scalar_subquery())


def open_tickets_of(session: Session, email: str) -> list[Ticket]:
    """The tickets `email` opened that are not closed, oldest first: what
    `close_all_from` closes (`tickets close --from --dry-run` lists them)."""
    query = (
        select(Ticket)
        .where(_opened_by(email), Ticket.status != TicketStatus.CLOSED)
        .order_by(Ticket.id)
    )
    return list(session.scalars(query))


def close_all_from(db: Database, email: str, now: datetime, actor: str) -> list[int]:
    """Close every ticket `email` opened that is not closed yet; their numbers."""
    closed: list[int] = []
    while True:
        with db.transaction() as session:
            after = closed[-1] if closed else 0
            batch = _close(
                session, [_opened_by(email), Ticket.id > after], BATCH, now, actor, "cli"
            )
        closed += batch
        if len(batch) < BATCH:
            return closed


@dataclass(frozen=True)
class Flood:
    """What one `#closeall` did, for the agent's answer."""

    sender: str
    proven: bool  # the sender's proof (DKIM/DMARC) of the tickets closed
    closed: tuple[int, ...]  # ticket numbers, oldest first
    remaining: int  # more of them, past `MAX_BY_MAIL`: the next #closeall closes them
    owned: int  # open tickets of the same sender and proof that an agent owns: kept
    other_proof: int  # open tickets of the address with the other proof: kept


def close_flood(session: Session, ticket: Ticket, now: datetime, actor: str) -> Flood:
    """Close `ticket` and every other open ticket its requester opened with the same proof
    that nobody owns, up to `MAX_BY_MAIL`, in the caller's transaction.

    The same proof: the From is anyone's to write, so a stranger's flood in a customer's
    name is closed without the customer's own signed mail (`quiet.py` counts them apart
    too). Owned tickets are someone's work, and stay."""
    sender = [
        Ticket.requester_id == ticket.requester_id,
        Ticket.status != TicketStatus.CLOSED,
    ]
    same_proof = Ticket.sender_proven == ticket.sender_proven
    unowned = or_(Ticket.owner_id.is_(None), Ticket.id == ticket.id)
    closed = _close(session, [*sender, same_proof, unowned], MAX_BY_MAIL, now, actor, "command")

    def count(*where: ColumnElement[bool]) -> int:
        return int(session.scalar(select(func.count()).where(*sender, *where)) or 0)

    requester = ticket.requester.email
    return Flood(
        sender=requester,
        proven=bool(ticket.sender_proven),
        closed=tuple(closed),
        remaining=count(same_proof, unowned),
        owned=count(same_proof, Ticket.owner_id.is_not(None)),
        other_proof=count(Ticket.sender_proven != ticket.sender_proven),
    )


def _close(
    session: Session,
    where: Sequence[ColumnElement[bool]],
    limit: int,
    now: datetime,
    actor: str,
    via: str,
) -> list[int]:
    """Close the first `limit` open tickets matching `where` (by number), each with its
    status event, in three statements; their numbers. Tickets loaded in `session` are
    refreshed from the database when next read."""
    session.flush()  # the ORM's pending changes first: Core writes below it
    # Locked as read (PostgreSQL): a second clean-up at the same moment waits here, then
    # finds them closed, instead of closing them again with a second, stale event.
    found = session.execute(
        select(Ticket.id, Ticket.status)
        .where(Ticket.status != TicketStatus.CLOSED, *where)
        .order_by(Ticket.id)
        .limit(limit)
        .with_for_update()
    ).all()
    if not found:
        return []
    ids = [number for number, _status in found]
    events: list[dict[str, Any]] = [
        {"ticket_id": number, "at": now, "actor": actor, "field": "status",
         "old": status, "new": TicketStatus.CLOSED.value, "via": via}
        for number, status in found
    ]  # fmt: skip
    connection = session.connection()
    connection.execute(insert(_EVENTS), events)
    connection.execute(
        update(_TICKETS)
        .where(_TICKETS.c.id.in_(ids))
        .values(status=TicketStatus.CLOSED.value, closed_at=now, updated_at=now)
    )
    closed = set(ids)
    for loaded in list(session.identity_map.values()):
        if isinstance(loaded, Ticket) and loaded.id in closed:
            session.expire(loaded)  # Core wrote past the ORM: what it holds is stale
    return ids
