"""Fair turns: one sender's pile of mail does not hold up everyone else's.

Acceptance is faster than processing, so a flood piles up in the spool. Taken in
arrival order, a customer's mail loop, a bounce storm or a bulk import made every
message behind it wait for all of it. Instead each message joins the lane of its
envelope sender (lower-cased; bounces, with the null sender, share the lane "<>";
every import shares one lane, so an archive keeps its own order; mail polled from
a mailbox has no envelope of ours, so its lane is the Return-Path the mailbox's
delivery agent wrote at the top) and takes the next turn in it, and workers claim
by (turn, id) (`leases.py`).

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

import re
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, bindparam, func, select

from maildesk.db import rare
from maildesk.models import Inbound
from maildesk.states import InboundState

IMPORTS = "(import)"  # not an address: no sender's lane can be the imports'
_MAX_LANE = 512  # the column's width
# The delivery agent writes Return-Path as the first field; a few fields down at most.
_HEAD = 4096
_RETURN_PATH = re.compile(rb"^return-path:[ \t]*<([^<>\r\n]*)>", re.IGNORECASE | re.MULTILINE)

_WAITING = rare(Inbound.state == InboundState.PENDING)
# The turn now being served: the lowest a waiting message holds.
_SERVING = select(func.min(Inbound.turn)).where(_WAITING)
# A lane's last waiting turn (ix_inbound_state_lane_turn).
_LAST = select(func.max(Inbound.turn)).where(_WAITING, Inbound.lane == bindparam("lane"))


def lane_of(source: str, mail_from: str, raw: bytes = b"") -> str:
    """The lane of a message from `source` whose envelope sender is `mail_from`;
    `raw`, its bytes, for mail polled from a mailbox (no envelope of ours)."""
    if source == "import":
        return IMPORTS
    if not mail_from and source == "imap":
        mail_from = _return_path(raw) or ""
    return mail_from.strip().lower()[:_MAX_LANE]


def _return_path(raw: bytes) -> str | None:
    """The Return-Path among the first header fields of `raw` (`<>` for a bounce)."""
    head = raw[:_HEAD]
    ends = [at for at in (head.find(b"\n\n"), head.find(b"\n\r\n")) if at >= 0]
    found = _RETURN_PATH.search(head, 0, min(ends, default=len(head)))
    if found is None:
        return None
    return found.group(1).decode("utf-8", "replace") or "<>"


def assign(connection: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Set `lane` and `turn` of `rows` (in arrival order), before they are inserted in
    `connection`'s transaction."""
    if not rows:
        return
    serving: int | None = None
    last: dict[str, int] = {}
    for values in rows:
        lane = values.get("lane")  # given at the door; not by a landing from before lanes
        if lane is None:
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
