"""the purge finds sent outbox rows by when they were sent (issue 9, retention)

`maildesk purge` empties the bodies of outbox rows sent before its cutoff, from
where its last pass ended: an index on sent_at keeps that a range read instead
of a walk through every row ever sent.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-29
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.create_index("ix_outbox_sent_at", ["sent_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_sent_at")
