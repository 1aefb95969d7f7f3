"""a received message's bytes in a table of their own (issue 9)

`inbound.raw` moves to `inbound_raw`. SQLite writes a whole row again on every
update, and an inbound row is updated at each claim, lease renewal and finish:
with the bytes inside, a 25 MB message cost 25 MB of WAL and about 50 MB of
memory each time. The bytes are now written once, with the row.

SQLite drops the column in place (ALTER TABLE ... DROP COLUMN, SQLite 3.35 or
newer), not by recreating the table: dropping `inbound` would cascade to the
new table's rows.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "inbound_raw",
        sa.Column(
            "inbound_id",
            sa.Integer(),
            sa.ForeignKey("inbound.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
    )
    op.execute("INSERT INTO inbound_raw (inbound_id, raw) SELECT id, raw FROM inbound")
    op.drop_column("inbound", "raw")


def downgrade() -> None:
    op.add_column("inbound", sa.Column("raw", sa.LargeBinary(), nullable=True))
    op.execute(
        "UPDATE inbound SET raw = "
        "(SELECT raw FROM inbound_raw WHERE inbound_raw.inbound_id = inbound.id)"
    )
    op.drop_table("inbound_raw")
