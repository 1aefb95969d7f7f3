"""spool leases and claims (issues 7 and 9)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The token of the claim that leases a row (maildesk/leases.py): finishing
    # writes name it, so a worker that lost its lease cannot commit.
    for table in ("inbound", "outbox"):
        with op.batch_alter_table(table) as batch_op:
            batch_op.add_column(sa.Column("claim", sa.String(32), nullable=True))


def downgrade() -> None:
    for table in ("inbound", "outbox"):
        with op.batch_alter_table(table) as batch_op:
            batch_op.drop_column("claim")
