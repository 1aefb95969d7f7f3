"""contested Message-IDs: an id two senders used threads nothing

Anyone Cc'd on a customer's mail can send one of their own with its Message-ID
before hers is processed. Since 499dee5 her mail is stored under an id of its own
(`Processor._own_id`), but the id stayed a threading key of the first claimant's
ticket: her follow-ups, and a colleague's reply-all, went into the stranger's
ticket. `messages.contested` marks the first claimant's message once another
sender's mail arrives with the same id; a contested id is no key
(`Tickets.thread_key`), so mail naming it goes by its other keys, or opens a ticket
of its own sender. Existing messages are not contested: nothing recorded a contest.

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        # A default of plain text, so that SQLite adds the column without copying the
        # table (0017).
        batch_op.add_column(
            sa.Column("contested", sa.Boolean(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_column("contested")
