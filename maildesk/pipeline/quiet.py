"""A sender who opens ticket after ticket: agents hear of the first ones, then once of the rest.

A monitoring system that opens a ticket per alert, or a customer's mail loop with
a new subject each time, used to cost every agent one mail per ticket: 3,000
mails each for a 3,000-message loop, with the real customers' tickets among
them. Now agents are told of a sender's first `[limits]
new_ticket_notices_per_hour` new tickets of an hour one by one, as before. The
next one comes as one "filed quietly" notice (with that ticket's text, so they
see what the flood is, and its Reply-To, so they can answer or close it), and
the sender's further new tickets of the hour reach no agent's inbox: they are
marked `filed_quietly`, and their service-level reminders and breaches are not
mailed either while nobody owns them (else the flood would come back hours
later, one notice per ticket). Nothing else changes: every ticket is opened and
threaded, acknowledged within the RFC 3834 caps, listed by `#list
from=ADDRESS` and in the daily digest (`tickets/digest.py`, where a sender's
many tickets are one line). A flood that outlasts the hour gets one more notice
an hour, which says how many tickets came since the last one.

Counted: the tickets the sender opened in the last hour, this one included, by
the index `ix_tickets_requester_proof_created`, and never past the cap + 1. Mail
that proved its From (DKIM/DMARC, `mailauth.py`) and mail that did not are
counted apart: the From is anyone's to write, and a stranger's flood in a
customer's name must not quiet the customer's own signed mail. (A customer whose
domain signs nothing shares the unproven count with whoever forges them.)
Told once per proof: `people.quiet_since` (unproven mail) or
`people.quiet_proven_since` moves by a conditional UPDATE, so workers or
instances that cross the cap at the same moment tell the agents once (on
PostgreSQL the second UPDATE waits for the first and then matches no row). The
marks are apart as the counts are: after a forger's flood in a customer's name,
the customer's own signed flood is still told, not filed quietly unsaid.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import cast

from sqlalchemy import Table, bindparam, func, literal_column, or_, select, update
from sqlalchemy.orm import Session

from maildesk.clock import as_utc
from maildesk.hotsql import Hot
from maildesk.models import Person, Ticket

WINDOW = timedelta(hours=1)
# Tickets counted for "how many came since the last notice": a bound on its work.
MAX_COUNTED = 1_000_000

_PEOPLE = cast(Table, Person.__table__)


def _tickets_since(limit: str) -> Hot:
    """How many tickets the requester opened after `since` with this proof (up to `limit`)."""
    rows = (
        select(literal_column("1"))
        .where(
            Ticket.requester_id == bindparam("person"),
            Ticket.sender_proven == bindparam("proven"),
            Ticket.created_at > bindparam("since"),
        )
        .limit(bindparam(limit))
        .subquery()
    )
    return Hot(select(func.count()).select_from(rows))


_COUNT = _tickets_since("cap")


class Notice(StrEnum):
    EACH = "each"  # within the cap: the agents' usual notice of this ticket
    QUIET = "quiet"  # the first past it this hour: one notice that the rest are filed quietly
    NONE = "none"  # past it, and the agents were told within the hour


@dataclass(frozen=True)
class Decision:
    notice: Notice
    # For QUIET after an earlier notice: when that one went, and how many tickets the
    # sender opened since (this one not counted).
    previous: datetime | None = None
    tickets_since_previous: int = 0


def decide(session: Session, ticket: Ticket, cap: int, now: datetime) -> Decision:
    """What the agents get for `ticket`, just opened (and flushed).

    A cap of 0 tells agents of every ticket."""
    if cap <= 0:
        return Decision(Notice.EACH)
    connection = session.connection()
    hour_ago = now - WINDOW
    requester_id, proven = ticket.requester_id, ticket.sender_proven
    counted = {"person": requester_id, "proven": proven}
    opened = _COUNT.scalar(connection, {**counted, "since": hour_ago, "cap": cap + 1})
    if (opened or 0) <= cap:
        return Decision(Notice.EACH)
    # Past the cap (a flood, not the usual path): plain Core statements.
    mark = _PEOPLE.c.quiet_proven_since if proven else _PEOPLE.c.quiet_since
    previous = connection.scalar(select(mark).where(_PEOPLE.c.id == requester_id))
    # Moves only when no notice went out within the hour: the one writer that matches tells.
    told = connection.execute(
        update(_PEOPLE)
        .where(_PEOPLE.c.id == requester_id, or_(mark.is_(None), mark <= hour_ago))
        .values({mark: now})
    )
    if told.rowcount != 1:
        return Decision(Notice.NONE)
    if previous is None:
        return Decision(Notice.QUIET)
    since = _COUNT.scalar(connection, {**counted, "since": previous, "cap": MAX_COUNTED})
    return Decision(Notice.QUIET, as_utc(previous), max(int(since or 0) - 1, 0))


@dataclass(frozen=True)
class Quiet:
    """A sender whose new tickets of one proof are filed quietly now."""

    sender: str
    since: datetime  # when the agents were told
    proven: bool  # of mail that proved its From (DKIM/DMARC)


def quiet_senders(session: Session, now: datetime, limit: int = 10) -> list[Quiet]:
    """Senders whose new tickets are filed quietly now (told within the hour), newest
    first; a sender quiet for both proofs is there twice."""
    found: list[Quiet] = []
    for proven, mark in ((False, Person.quiet_since), (True, Person.quiet_proven_since)):
        rows = session.execute(
            select(Person.email, mark).where(mark > now - WINDOW).order_by(mark.desc()).limit(limit)
        )
        found += [Quiet(email, as_utc(since), proven) for email, since in rows if since is not None]
    return sorted(found, key=lambda quiet: quiet.since, reverse=True)[:limit]


def quiet_count(session: Session, now: datetime) -> int:
    """How many senders' new tickets are filed quietly now (of either proof)."""
    hour_ago = now - WINDOW
    either = or_(Person.quiet_since > hour_ago, Person.quiet_proven_since > hour_ago)
    return int(session.scalar(select(func.count()).where(either)) or 0)
