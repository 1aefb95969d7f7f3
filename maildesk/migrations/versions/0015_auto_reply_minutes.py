"""automatic replies counted per minute, for the hourly total cap (issue 9)

The cap on automatic replies to anyone (`[limits] auto_replies_per_hour_total`)
counted the last hour's rows of `outbox` up to the cap: at a high cap, every new
ticket walked every automatic reply of the hour inside the write transaction (a
flood of 10,000 mails: 1.2 ms per ticket, growing with the flood). Each queued
automatic reply now also counts in its minute's row; the check sums at most an
hour of minutes. The last hour's replies are counted in at the upgrade.

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-30
"""

from collections import Counter
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    minutes = op.create_table(
        "auto_reply_minutes",
        sa.Column("minute", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("shard", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("count", sa.Integer(), nullable=False),
    )
    outbox = sa.table(
        "outbox", sa.column("auto_to"), sa.column("created_at", sa.DateTime(timezone=True))
    )
    since = datetime.now(UTC) - timedelta(hours=2)
    rows = op.get_bind().execute(
        sa.select(outbox.c.created_at).where(outbox.c.auto_to != "", outbox.c.created_at > since)
    )
    counted = Counter(
        int((at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp() // 60)
        for (at,) in rows
        if at is not None
    )
    if counted:
        op.bulk_insert(minutes, [{"minute": m, "shard": 0, "count": n} for m, n in counted.items()])


def downgrade() -> None:
    op.drop_table("auto_reply_minutes")
