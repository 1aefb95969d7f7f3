"""the global auto-reply cap counts from an index alone (issue 9)

ix_outbox_created_at (created_at) becomes ix_outbox_created_auto (created_at,
auto_to): the cap's query filters on auto_to too, and reading it from each row
meant reading past the stored mail.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-29
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.create_index("ix_outbox_created_auto", ["created_at", "auto_to"], unique=False)
        batch_op.drop_index("ix_outbox_created_at")


def downgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.create_index("ix_outbox_created_at", ["created_at"], unique=False)
        batch_op.drop_index("ix_outbox_created_auto")
