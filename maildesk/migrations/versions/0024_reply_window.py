"""a ticket's hour of customers' mail: agents hear of its first ones, then once

A stranger's (or a broken script's) replies into one ticket cost every agent who
hears of it one mail each. `tickets.reply_window_at` and `replies_in_window` count
the mails of the ticket's current hour (pipeline/busy.py); existing tickets start
with none counted.

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tickets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("reply_window_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(
            sa.Column("replies_in_window", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("tickets", schema=None) as batch_op:
        batch_op.drop_column("replies_in_window")
        batch_op.drop_column("reply_window_at")
