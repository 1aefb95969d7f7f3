"""sender trust on stored messages (issue 7)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("proof", sa.String(16), nullable=False, server_default=""))
    with op.batch_alter_table("inbound") as batch:
        batch.add_column(sa.Column("peer", sa.String(64), nullable=False, server_default=""))
    # Messages stored before senders were checked keep threading their tickets.
    op.execute(
        "UPDATE messages SET proof = 'legacy' WHERE direction = 'in' "
        "AND kind IN ('customer', 'participant', 'agent')"
    )


def downgrade() -> None:
    with op.batch_alter_table("inbound") as batch:
        batch.drop_column("peer")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("proof")
