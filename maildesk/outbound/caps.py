"""RFC 3834 politeness: whether the hourly caps on automatic replies are reached.

A cap needs only "are there `cap` rows yet", so the count stops there: a busy
hour costs at most `cap` index entries per question, never all of the hour's
rows. Both questions are answered from an index alone (`ix_outbox_auto_to`,
`ix_outbox_created_auto`), without reading the stored mails. The statements are
built once: building them cost more than running them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, bindparam, func, literal_column, select
from sqlalchemy.orm import Session

from maildesk.models import Outbox


def _count_up_to_cap(*where: ColumnElement[bool]) -> Select[Any]:
    rows: Select[Any] = select(literal_column("1")).where(*where).limit(bindparam("cap"))
    return select(func.count()).select_from(rows.subquery())


_SENDER = _count_up_to_cap(
    Outbox.auto_to == bindparam("recipient"), Outbox.created_at > bindparam("since")
)
_TOTAL = _count_up_to_cap(Outbox.created_at > bindparam("since"), Outbox.auto_to != "")


def sender_cap_reached(session: Session, recipient: str, cap: int, since: datetime) -> bool:
    """`cap` automatic replies to `recipient` were queued after `since`."""
    return cap <= 0 or _count(session, _SENDER, cap, since, recipient=recipient.lower()) >= cap


def total_cap_reached(session: Session, cap: int, since: datetime) -> bool:
    """`cap` automatic replies to anyone at all were queued after `since`."""
    return cap <= 0 or _count(session, _TOTAL, cap, since) >= cap


def _count(session: Session, query: Select[Any], cap: int, since: datetime, **values: str) -> int:
    # Outbox rows are written with Core (notify.py): nothing to flush before counting.
    found = session.connection().execute(query, {"cap": cap, "since": since, **values})
    return found.scalar() or 0
