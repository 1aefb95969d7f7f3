"""Fair turns: one sender's pile of mail does not hold up everyone else's.

Acceptance is faster than processing, so a flood piles up in the spool. Taken in
arrival order, a customer's mail loop, a bounce storm or a bulk import made every
message behind it wait for all of it. Instead each message joins the lane of its
envelope sender (lower-cased; bounces, with the null sender, share the lane "";
every import shares one lane, so an archive keeps its own order) and takes the
next turn in it, and workers claim by (turn, id) (`leases.py`).

This is start-time fair queuing with every message counted as one: a lane with
nothing waiting starts at the turn now being served (the lowest turn still
waiting), a busy lane one after its last waiting message. So a newcomer waits for
at most one message of each busy lane, busy lanes share the workers evenly, and a
lane's own messages keep their order (a reply is threaded after what it answers).
Messages of different lanes may be processed in another order than they arrived:
a reply from one person to another's message that still waits is processed
first, and the threading cascade's "stored message that answers this one" rule
(`Tickets.referencing`) joins them where the trust rules allow.

Turns are given where rows enter the spool, in the transaction that inserts them:
the mover of the SQLite landing (`landing.Move.into`) or the group commit on
PostgreSQL (`InboundStore._insert`), two index lookups per lane in the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, bindparam, func, select

from maildesk.db import rare
from maildesk.models import Inbound
from maildesk.states import InboundState

IMPORTS = "(import)"  # not an address: no sender's lane can be the imports'
_MAX_LANE = 512  # the column's width

_WAITING = rare(Inbound.state == InboundState.PENDING)
# The turn now being served: the lowest a waiting message holds.
_SERVING = select(func.min(Inbound.turn)).where(_WAITING)
# A lane's last waiting turn (ix_inbound_state_lane_turn).
_LAST = select(func.max(Inbound.turn)).where(_WAITING, Inbound.lane == bindparam("lane"))


def lane_of(source: str, mail_from: str) -> str:
    """The lane of a message from `source` whose envelope sender is `mail_from`."""
    if source == "import":
        return IMPORTS
    return mail_from.strip().lower()[:_MAX_LANE]


def assign(connection: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Set `lane` and `turn` of `rows` (in arrival order), before they are inserted in
    `connection`'s transaction."""
    if not rows:
        return
    serving: int | None = None
    last: dict[str, int] = {}
    for values in rows:
        lane = lane_of(values["source"], values["mail_from"])
        turn = last.get(lane)
        if turn is None:
            found = connection.execute(_LAST, {"lane": lane}).scalar()
            if found is None:
                if serving is None:
                    serving = connection.execute(_SERVING).scalar() or 0
                turn = serving - 1
            else:
                turn = found
        values["lane"] = lane
        values["turn"] = last[lane] = turn + 1
