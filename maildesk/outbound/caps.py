"""RFC 3834 politeness: whether the hourly caps on automatic replies are reached.

A cap needs only "are there `cap` rows yet", so the count stops there: a busy
hour costs at most `cap` index entries per question, never all of the hour's
rows. Both questions are answered from an index alone (`ix_outbox_auto_to`,
`ix_outbox_created_auto`), without reading the stored mails.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Select, func, literal_column, select
from sqlalchemy.orm import Session

from maildesk.models import Outbox


def sender_cap_reached(session: Session, recipient: str, cap: int, since: datetime) -> bool:
    """`cap` automatic replies to `recipient` were queued after `since`."""
    rows = select(literal_column("1")).where(
        Outbox.auto_to == recipient.lower(), Outbox.created_at > since
    )
    return _at_least(session, rows, cap)


def total_cap_reached(session: Session, cap: int, since: datetime) -> bool:
    """`cap` automatic replies to anyone at all were queued after `since`."""
    rows = select(literal_column("1")).where(Outbox.created_at > since, Outbox.auto_to != "")
    return _at_least(session, rows, cap)


def _at_least(session: Session, rows: Select[tuple[int]], cap: int) -> bool:
    if cap <= 0:
        return True
    found = session.scalar(select(func.count()).select_from(rows.limit(cap).subquery()))
    return (found or 0) >= cap
