"""claimed Message-IDs: a contested id still leads its own sender's mail

Since 0021 a Message-ID two senders used threads nothing, so anyone who knew a
customer's id (anyone she copied) could split her thread at will: her follow-ups
answering her own mail opened tickets of their own. `messages.claimed_id` keeps the
id a mail gave when it is stored under one of its own (`Processor._own_id`); a
contested id, and a claimed one, still lead mail from the sender who used it to
that sender's message (`Tickets.thread_key`). Existing messages claim nothing: the
id they gave was not kept.

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("claimed_id", sa.String(length=998), nullable=True))
        batch_op.create_index(
            "ix_messages_claimed_id",
            ["claimed_id"],
            unique=False,
            sqlite_where=sa.text("claimed_id IS NOT NULL"),
            postgresql_where=sa.text("claimed_id IS NOT NULL"),
        )


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_claimed_id")
        batch_op.drop_column("claimed_id")
