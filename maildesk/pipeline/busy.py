"""A ticket that gets mail after mail: agents hear of its first ones of an hour, then once.

Every customer's mail into a ticket reaches its owner and watchers (or every agent)
as a notification with up to 10 MB of its files: a stranger's replies into his own
ticket, or a customer's script gone wrong, cost each of them one mail per mail,
10,000 for 10,000, where `quiet.py` caps only new tickets. Now agents hear of a
ticket's first `[limits] reply_notices_per_ticket_hour` such mails of an hour one by
one, as before; the next one comes as one "busy ticket" notice (its text quoted, its
Reply-To to answer the customer or close the ticket), and the rest of that hour's
reach no agent's inbox. They are in the ticket as always (`#show`, the portal).

The hour is a fixed window: the first counted mail after the last window ended opens
the next, so a flood that goes on is told once an hour, after that hour's first ones.
The count is one UPDATE of the ticket's row, which workers and instances take turns
at, so each mail is counted once and the notice goes once. Mail that proved its
sender and mail that did not are counted apart: anyone can write the customer's From
and the ticket's tag, and a stranger's unproven mail past the cap silenced her own
replies for the hour. Counted are plain replies, mail that proved nothing, and
unproven mail From an agent's address (a warning each, which a stranger could send in
a loop); mail that changes the ticket (a confirmation, a dispute, an answer to paid
work) is told whatever the count.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, cast

from sqlalchemy import Column, Table, bindparam, case, or_, update
from sqlalchemy.orm import Session

from maildesk.hotsql import Hot, connection_of
from maildesk.models import Ticket, Timestamp

WINDOW = timedelta(hours=1)

_TICKETS = cast(Table, Ticket.__table__)


def _counter(began: Column[Any], counted: Column[Any]) -> Hot:
    """The mail's place in its ticket's hour (`began`, `counted`), this mail counted."""
    opens = or_(began.is_(None), began <= bindparam("window_ended", type_=Timestamp))
    return Hot(
        update(_TICKETS)
        .where(_TICKETS.c.id == bindparam("ticket"))
        .values(
            {
                began: case((opens, bindparam("now", type_=Timestamp)), else_=began),
                counted: case((opens, 1), else_=counted + 1),
            }
        )
        .returning(counted, began)
    )


# By whether the mail proved its sender: anyone can write the customer's From and the
# ticket's tag, and a stranger's few mails an hour must not silence her own.
_COUNTERS = {
    True: _counter(_TICKETS.c.reply_window_at, _TICKETS.c.replies_in_window),
    False: _counter(_TICKETS.c.unproven_window_at, _TICKETS.c.unproven_in_window),
}


class Told(StrEnum):
    EACH = "each"  # within the cap: the agents' usual notice of this mail
    BUSY = "busy"  # the first past it this hour: one notice that the rest go unsaid
    NONE = "none"  # past it, and the agents were told


def count(
    session: Session, ticket: Ticket, cap: int, now: datetime, *, proven: bool
) -> tuple[Told, datetime]:
    """Count a customer's plain reply into `ticket` (`proven`: the mail proved its
    sender): what the agents get for it, and when the hour it is counted in began. A
    cap of 0 tells them of every one (and counts nothing)."""
    if cap <= 0:
        return Told.EACH, now
    row = _COUNTERS[proven].first(
        connection_of(session), {"ticket": ticket.id, "now": now, "window_ended": now - WINDOW}
    )
    assert row is not None, f"ticket {ticket.id} is gone"
    counted, began = row
    if counted <= cap:
        return Told.EACH, began
    return (Told.BUSY if counted == cap + 1 else Told.NONE), began
