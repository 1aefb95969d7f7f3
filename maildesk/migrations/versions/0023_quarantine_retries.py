"""quarantine retries: a message held again keeps why it was held before

`maildesk quarantine retry` cleared the row's reason and traceback, so a message that
failed again showed only its new reason: the one it was first held for (what ops
retried it to fix) was gone. Each retry now keeps the quarantine it ended. Earlier
retries kept nothing, so existing rows have no history.

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "quarantine_retries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("inbound_id", sa.Integer(), nullable=False),
        sa.Column("quarantined_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("retried_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("retried_by", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["inbound_id"], ["inbound.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("quarantine_retries", schema=None) as batch_op:
        batch_op.create_index("ix_quarantine_retries_inbound_id", ["inbound_id"], unique=False)


def downgrade() -> None:
    op.drop_table("quarantine_retries")
