"""What an agent's daily digest lists, so that it stays readable after a flood.

The digest lists the tickets waiting on an agent, critical first. A sender with
more than `PER_SENDER` of them (a monitor that mailed each alert, a mail loop:
`pipeline/quiet.py`) gets one line with their count and range instead of a row
each, and `#list from=ADDRESS` names them all; their critical tickets are still
listed one by one. At most `MAX_ROWS` rows are listed in all; the rest are
counted. Without these bounds, a 3,000-ticket loop made every agent's digest
3,000 rows long, with the real customers somewhere in it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from maildesk.models import Ticket

PER_SENDER = 5
MAX_ROWS = 100


@dataclass(frozen=True)
class Group:
    """A sender's waiting tickets, in one line."""

    requester: str
    count: int
    first: int  # the lowest ticket number
    last: int  # the highest


@dataclass(frozen=True)
class Summary:
    listed: list[Ticket]  # in the order given
    groups: list[Group]  # by count, largest first
    unlisted: int  # rows past MAX_ROWS


def summarize(waiting: Sequence[Ticket]) -> Summary:
    """`waiting` (in the digest's order) as rows, senders' groups and a count of the rest."""
    by_sender: dict[str, list[Ticket]] = {}
    for ticket in waiting:
        if ticket.priority != "critical":
            by_sender.setdefault(ticket.requester.email, []).append(ticket)
    crowded = {email for email, theirs in by_sender.items() if len(theirs) > PER_SENDER}
    rows = [t for t in waiting if t.priority == "critical" or t.requester.email not in crowded]
    groups = [
        Group(email, len(theirs), min(t.id for t in theirs), max(t.id for t in theirs))
        for email, theirs in by_sender.items()
        if email in crowded
    ]
    groups.sort(key=lambda group: (-group.count, group.requester))
    return Summary(rows[:MAX_ROWS], groups, max(len(rows) - MAX_ROWS, 0))
