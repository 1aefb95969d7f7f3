"""RFC 3834 politeness: whether the hourly caps on automatic replies are reached.

A cap needs only "are there `cap` rows yet", so the count stops there: a busy
hour costs at most `cap` index entries per question, never all of the hour's
rows. Both questions are asked in one statement, each answered from an index
alone (`ix_outbox_auto_to`, `ix_outbox_created_auto`), without reading the
stored mails. The statement is built once: building it cost more than running it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    ScalarSelect,
    Select,
    bindparam,
    func,
    literal_column,
    select,
)
from sqlalchemy.orm import Session

from maildesk.hotsql import Hot
from maildesk.models import Outbox


def _count_up_to_cap(cap: str, *where: ColumnElement[bool]) -> ScalarSelect[Any]:
    rows: Select[Any] = select(literal_column("1")).where(*where).limit(bindparam(cap))
    return select(func.count()).select_from(rows.subquery()).scalar_subquery()


# Both questions in one statement: each new ticket asks them before its acknowledgement
# (on the driver's cursor: hotsql.py).
_COUNTS = Hot(
    select(
        _count_up_to_cap(
            "sender_cap",
            Outbox.auto_to == bindparam("recipient"),
            Outbox.created_at > bindparam("since"),
        ),
        _count_up_to_cap("total_cap", Outbox.created_at > bindparam("since"), Outbox.auto_to != ""),
    )
)


@dataclass(frozen=True)
class Caps:
    """Which hourly caps on automatic replies are reached for one recipient."""

    sender: bool  # `auto_replies_per_hour` to this recipient
    total: bool  # `auto_replies_per_hour_total` to anyone at all


def caps_reached(
    session: Session, recipient: str, sender_cap: int, total_cap: int, since: datetime
) -> Caps:
    """Whether `sender_cap` automatic replies to `recipient`, and `total_cap` to anyone,
    were queued after `since` (a cap of 0 or less is always reached)."""
    values = {
        "recipient": recipient.lower(),
        "since": since,
        "sender_cap": max(sender_cap, 0),
        "total_cap": max(total_cap, 0),
    }
    # Outbox rows are written with Core (notify.py): nothing to flush before counting.
    row = _COUNTS.first(session.connection(), values)
    assert row is not None  # a select of two counts has one row
    to_sender, to_all = row
    return Caps(
        sender=sender_cap <= 0 or (to_sender or 0) >= sender_cap,
        total=total_cap <= 0 or (to_all or 0) >= total_cap,
    )
