"""a ticket's hour of customers' mail: agents hear of its first ones, then once

A stranger's (or a broken script's) replies into one ticket cost every agent who
hears of it one mail each. `tickets.reply_window_at` and `replies_in_window` count
the mails of the ticket's current hour (pipeline/busy.py), and `unproven_window_at`
and `unproven_in_window` those that proved nothing (anyone's, counted apart so that a
stranger's cannot silence the customer's own); existing tickets start with none.

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


# Mail that proved its sender, and mail that did not (anyone's): counted apart.
WINDOWS = (("reply_window_at", "replies_in_window"), ("unproven_window_at", "unproven_in_window"))


def upgrade() -> None:
    with op.batch_alter_table("tickets", schema=None) as batch_op:
        for began, counted in WINDOWS:
            batch_op.add_column(sa.Column(began, sa.DateTime(timezone=True), nullable=True))
            batch_op.add_column(
                sa.Column(counted, sa.Integer(), nullable=False, server_default="0")
            )


def downgrade() -> None:
    with op.batch_alter_table("tickets", schema=None) as batch_op:
        for began, counted in reversed(WINDOWS):
            batch_op.drop_column(counted)
            batch_op.drop_column(began)
