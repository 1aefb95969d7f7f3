"""an outbox row's composed mail in a table of its own (issue 9)

`outbox.raw` moves to `outbox_raw`, as `inbound.raw` did in 0012: an outbox row
is updated at its claim, at each lease renewal and when it is sent, and SQLite
writes a whole row again on every update (a 25 MB mail to an agent cost 25 MB of
WAL and about 50 MB of memory each time). The bytes are now written once, with
the row. A body the purge emptied moves as no row at all: the purge now deletes
the `outbox_raw` row instead of emptying it.

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "outbox_raw",
        sa.Column(
            "outbox_id",
            sa.Integer(),
            sa.ForeignKey("outbox.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
    )
    op.execute(
        "INSERT INTO outbox_raw (outbox_id, raw) SELECT id, raw FROM outbox WHERE length(raw) > 0"
    )
    # SQLite drops the column in place (3.35 or newer), as 0012 does: no table rebuilt.
    op.drop_column("outbox", "raw")


def downgrade() -> None:
    op.add_column("outbox", sa.Column("raw", sa.LargeBinary(), nullable=True))
    outbox = sa.table("outbox", sa.column("id"), sa.column("raw", sa.LargeBinary()))
    moved = sa.table("outbox_raw", sa.column("outbox_id"), sa.column("raw", sa.LargeBinary()))
    body = sa.select(moved.c.raw).where(moved.c.outbox_id == outbox.c.id).scalar_subquery()
    # A forgotten body was an empty one before this revision.
    op.execute(
        outbox.update().values(raw=sa.func.coalesce(body, sa.literal(b"", sa.LargeBinary())))
    )
    op.drop_table("outbox_raw")
