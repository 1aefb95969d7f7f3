"""auto_reply_minutes.lane: the total cap on automatic replies is shared out

200 mails an hour from forged senders used up `[limits] auto_replies_per_hour_total`,
and then no customer got an acknowledgement for the rest of the hour, not even one
whose mail proved its sender. Each minute row now counts in a lane: "" for mail
about tickets whose From was not proven, else the recipient's organizational domain
(outbound/caps.py), and each lane may use only its share of the total. The key
gains the lane, which a primary key cannot on SQLite in place: the table (at most a
few hours of minutes) is read, made again and written back, its rows in the
unproven lane (the strictest share, for the rest of that hour).

Revision ID: 0027
Revises: 0026
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0027"
down_revision = "0026"
branch_labels = None
depends_on = None


def _remake(with_lane: bool) -> None:
    bind = op.get_bind()
    old = sa.table(
        "auto_reply_minutes", sa.column("minute"), sa.column("shard"), sa.column("count")
    )
    counted: dict[tuple[int, int], int] = {}
    for minute, shard, count in bind.execute(sa.select(old.c.minute, old.c.shard, old.c.count)):
        counted[(minute, shard)] = counted.get((minute, shard), 0) + count
    op.drop_table("auto_reply_minutes")
    lane = [sa.Column("lane", sa.String(253), primary_key=True)] if with_lane else []
    minutes = op.create_table(
        "auto_reply_minutes",
        sa.Column("minute", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("shard", sa.Integer(), primary_key=True, autoincrement=False),
        *lane,
        sa.Column("count", sa.Integer(), nullable=False),
    )
    rows = [
        {"minute": minute, "shard": shard, "count": count, **({"lane": ""} if with_lane else {})}
        for (minute, shard), count in counted.items()
    ]
    if rows:
        op.bulk_insert(minutes, rows)


def upgrade() -> None:
    _remake(with_lane=True)


def downgrade() -> None:
    """The lanes of a minute are summed into one row again."""
    _remake(with_lane=False)
