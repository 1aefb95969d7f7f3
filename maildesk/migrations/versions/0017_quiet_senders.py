"""quiet senders: agents hear of a sender's first new tickets of an hour, then of the rest once

A sender who opens ticket after ticket (a monitoring system, a customer's mail
loop) used to cost every agent one notice per ticket. Past `[limits]
new_ticket_notices_per_hour`, agents get one notice that the sender's further
new tickets are filed quietly (`pipeline/quiet.py`). The index counts a
sender's tickets of the last hour; `people.quiet_since` says when agents were
last told, so they are told at most once an hour per sender;
`tickets.sender_proven` counts mail that proved its From apart from mail that
did not, so a forger's flood in a customer's name quiets only unproven mail
(tickets from before the upgrade count as unproven: nothing recorded their proof);
`tickets.filed_quietly` marks the tickets no agent was told of, whose
service-level notices are not mailed either while nobody owns them.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("people", schema=None) as batch_op:
        batch_op.add_column(sa.Column("quiet_since", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index("ix_people_quiet_since", ["quiet_since"], unique=False)
    with op.batch_alter_table("tickets", schema=None) as batch_op:
        # A default of plain text: with an expression (sa.false()) Alembic would copy the
        # whole table on SQLite instead of adding the column.
        batch_op.add_column(
            sa.Column("filed_quietly", sa.Boolean(), nullable=False, server_default="0")
        )
        batch_op.add_column(
            sa.Column("sender_proven", sa.Boolean(), nullable=False, server_default="0")
        )
        batch_op.create_index(
            "ix_tickets_requester_proof_created",
            ["requester_id", "sender_proven", "created_at"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("tickets", schema=None) as batch_op:
        batch_op.drop_index("ix_tickets_requester_proof_created")
        batch_op.drop_column("sender_proven")
        batch_op.drop_column("filed_quietly")
    with op.batch_alter_table("people", schema=None) as batch_op:
        batch_op.drop_index("ix_people_quiet_since")
        batch_op.drop_column("quiet_since")
