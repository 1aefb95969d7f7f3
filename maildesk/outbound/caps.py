"""RFC 3834 politeness: whether the hourly caps on automatic replies are reached.

To one recipient: their rows of the last hour are found by an index
(`ix_outbox_auto_to`), each one's ticket read by its key for its proof (below),
and the count stops at the cap. To anyone: every queued
automatic reply also counts in its minute's row of `auto_reply_minutes` (one
row per minute and counting thread, written in the same transaction), and the
check sums the whole minutes of the hour, plus the outbox rows of its first,
partial minute (`ix_outbox_created_auto`). So the total cap's check reads at most an
hour of minutes and one minute of rows, however high the cap: counting the
hour's rows up to the cap cost 1.2 ms per new ticket inside the write
transaction after 10,000 replies in the hour, and grew with them. Both counts
are one statement on the driver's cursor (`hotsql.py`), built once.

The portal's "send me a new link" counts to anyone too, each request one, in
the minutes' rows only (`count_automatic`), in unproven mail's lane (anyone may
ask one for any address), whether or not the address is a customer's and a link
is mailed: a count that rose for known addresses alone would tell anyone who can
fill the cap who is a customer. No link is mailed while the total or that lane's
share is reached (`link_refused`); asked for address after address, they were
automatic mail outside every cap.

The cap to one recipient counts mail about tickets whose From was proven apart
from mail about tickets whose From was not (`tickets.sender_proven`), as the
agents' notices are counted (pipeline/quiet.py): anyone can write a customer's
From, and five forged mails an hour in her name used up her cap, so her own
signed request came without its acknowledgement. The forger still gets at most
the cap's replies an hour sent to her.

The total cap is shared out in lanes, each minute row counting in one (`lane`):
mail about tickets whose From was not proven (""), and mail about proven tickets
by the recipient's organizational domain (`lane_of`). Unproven mail may use at most
`auto_replies_unproven_percent` of the total, and one proven domain at most
`auto_replies_domain_percent`: before, 200 mails an hour from forged senders used up
the whole total, and no customer heard from us until the hour was over, the ones
whose mail proved its sender included; a stranger signing with a domain of his own
(from any number of mailboxes or subdomains of it) now uses up only that domain's
share. A lane counts whole minutes, the first minute of the hour included: its
share may hold a reply back for one minute more than the total would (a share of
100 percent is no share: then the total alone counts, to the second).
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    ScalarSelect,
    Select,
    bindparam,
    exists,
    func,
    literal_column,
    select,
    text,
)
from sqlalchemy.orm import Session

from maildesk.config import LimitSettings
from maildesk.hotsql import Hot, connection_of
from maildesk.mailauth import organizational_domain
from maildesk.models import AutoReplyMinute, Outbox, Ticket
from maildesk.outbound import headers


def _count_up_to_cap(cap: str, *where: ColumnElement[bool]) -> ScalarSelect[Any]:
    rows: Select[Any] = select(literal_column("1")).where(*where).limit(bindparam(cap))
    return select(func.count()).select_from(rows.subquery()).scalar_subquery()


# Both questions in one statement: each new ticket asks them before its acknowledgement.
_COUNTS = Hot(
    select(
        _count_up_to_cap(
            "sender_cap",
            Outbox.auto_to == bindparam("recipient"),
            Outbox.created_at > bindparam("since"),
            # Of the same proof: a ticket's row by its key, for each of at most the
            # cap's rows of each proof an hour.
            exists().where(
                Ticket.id == Outbox.ticket_id, Ticket.sender_proven == bindparam("proven")
            ),
        ),
        # The whole minutes after `since`'s own …
        select(func.coalesce(func.sum(AutoReplyMinute.count), 0))
        .where(AutoReplyMinute.minute > bindparam("since_minute"))
        .scalar_subquery(),
        # … and the rows of that first minute from `since` on.
        _count_up_to_cap(
            "total_cap",
            Outbox.created_at > bindparam("since"),
            Outbox.created_at < bindparam("next_minute"),
            Outbox.auto_to != "",
        ),
        # This lane's replies, in whole minutes from `since`'s own on.
        select(func.coalesce(func.sum(AutoReplyMinute.count), 0))
        .where(
            AutoReplyMinute.lane == bindparam("lane"),
            AutoReplyMinute.minute >= bindparam("since_minute"),
        )
        .scalar_subquery(),
    )
)
# One more automatic reply in this minute, by this process.
_COUNT_ONE = Hot(
    text(
        "INSERT INTO auto_reply_minutes (minute, shard, lane, count)"
        " VALUES (:minute, :shard, :lane, :n)"
        " ON CONFLICT (minute, shard, lane) DO UPDATE SET count = auto_reply_minutes.count + :n"
    )
)
# A counter's minutes older than the window (two hours: clocks of instances drift).
_FORGET = Hot(text("DELETE FROM auto_reply_minutes WHERE shard = :shard AND minute < :before"))


class _Counter(threading.local):
    """Each thread counts in rows of its own (a random shard), so no two transactions,
    in this process or another instance's, ever wait for one row: a thread's rows are
    updated by its own transactions, one after the other."""

    def __init__(self) -> None:
        self.shard = secrets.randbelow(2**31 - 1) + 1
        self.last_minute = 0  # the minute last counted in: forgets once per minute


_counter = _Counter()


# Providers whose mailboxes ignore dots in the local part: `a.l.i.c.e@gmail.com` is
# alice@gmail.com, and googlemail.com is the same mail system.
_DOTLESS = {"gmail.com": "gmail.com", "googlemail.com": "gmail.com"}


def mailbox(address: str) -> str:
    """The mailbox `address` reaches, as the cap to one recipient counts it.

    Every spelling that reaches one mailbox must share its cap, or a stranger writing
    From each spelling in turn has us send the victim the cap's replies per spelling:
    lower case; no sub-address after `+` or `-` (Postfix's and qmail's delimiters,
    either may be configured; a `mary-ann` counted with `mary` costs a replies cap at
    most); no quotes around a local part; a domain without its root dot and in its
    ASCII form; at Gmail, no dots.
    """
    local, at, domain = address.lower().rpartition("@")
    if not at:
        return address.lower()
    if len(local) > 1 and local[0] == local[-1] == '"':
        local = local[1:-1]
    base = local.partition("+")[0].partition("-")[0] or local  # before the first of either
    domain = domain.rstrip(".")
    if not domain.isascii():
        try:
            domain = headers.a_label(domain)
        except UnicodeError:
            pass  # not a name that resolves: kept as written
    if domain in _DOTLESS:
        base, domain = base.replace(".", "") or base, _DOTLESS[domain]
    return f"{base}@{domain}"


def lane_of(recipient: str, *, proven: bool) -> str:
    """The lane of the total cap an automatic reply to `recipient` counts in: "" about a
    ticket whose From is unproven (anyone may have written it), else the organizational
    domain of the recipient's mailbox (`mail.firm.test` and `firm.test` share one)."""
    if not proven:
        return ""
    domain = mailbox(recipient).rpartition("@")[2]
    return organizational_domain(domain) or domain or "@"


def minute_of(moment: datetime) -> int:
    """Unix minutes: the `auto_reply_minutes` row an automatic reply at `moment` counts in."""
    return int(moment.timestamp() // 60)


def count_automatic(connection: Connection, at: datetime, lane: str, replies: int = 1) -> None:
    """Count `replies` automatic replies queued at `at` in `lane` (`lane_of`), in the
    caller's transaction (the one that writes their outbox rows)."""
    minute, shard = minute_of(at), _counter.shard
    _COUNT_ONE.run(connection, {"minute": minute, "shard": shard, "lane": lane, "n": replies})
    if minute != _counter.last_minute:
        _counter.last_minute = minute
        _FORGET.run(connection, {"shard": shard, "before": minute - 120})


@dataclass(frozen=True)
class Caps:
    """Which hourly caps on automatic replies are reached for one recipient."""

    sender: bool  # `auto_replies_per_hour` to this recipient
    total: bool  # `auto_replies_per_hour_total` to anyone at all
    lane: bool  # the share of that total this recipient's lane may use (`lane_of`)


def lane_cap(total_cap: int, percent: int) -> int:
    """A lane's share of `total_cap`: `percent` of it, rounded down (0: none)."""
    return max(total_cap, 0) * percent // 100


def caps_reached(
    session: Session,
    recipient: str,
    sender_cap: int,
    total_cap: int,
    since: datetime,
    *,
    proven: bool,
    share: int,
) -> Caps:
    """Whether `sender_cap` automatic replies to `recipient`'s mailbox about tickets of
    this proof (`proven`: its From was proven, `tickets.sender_proven`), `total_cap`
    to anyone, and `share` in the recipient's lane (`lane_of`) were queued after `since`
    (a cap of 0 or less is always reached)."""
    since_minute = minute_of(since)
    values = {
        "recipient": mailbox(recipient),
        "proven": proven,
        "lane": lane_of(recipient, proven=proven),
        "since": since,
        "since_minute": since_minute,
        "next_minute": datetime.fromtimestamp((since_minute + 1) * 60, UTC),
        "sender_cap": max(sender_cap, 0),
        "total_cap": max(total_cap, 0),
    }
    # Outbox rows are written with Core (notify.py): nothing to flush before counting.
    row = _COUNTS.first(connection_of(session), values)
    assert row is not None  # a select of counts has one row
    to_sender, whole_minutes, first_minute, in_lane = row
    to_all = int(whole_minutes or 0) + int(first_minute or 0)
    return Caps(
        sender=sender_cap <= 0 or (to_sender or 0) >= sender_cap,
        total=total_cap <= 0 or to_all >= total_cap,
        # A share of the whole total adds nothing (and would count a minute more).
        lane=share < total_cap and (share <= 0 or int(in_lane or 0) >= share),
    )


def link_refused(session: Session, limits: LimitSettings, since: datetime) -> bool:
    """Whether a set-password link ("send me a new link") may not be mailed: `total_cap`
    automatic mails to anyone were queued after `since`, or unproven mail's share of
    them. Anyone may ask one for any address: it counts as mail that proves nobody."""
    total = limits.auto_replies_per_hour_total
    share = lane_cap(total, limits.auto_replies_unproven_percent)
    reached = caps_reached(session, "", 0, total, since, proven=False, share=share)
    return reached.total or reached.lane
