"""fair turns: each waiting message's sender lane and turn (issue 9, a flood)

Workers claimed the spool in arrival order, so one sender's pile (a customer's
mail loop, a bounce storm, a bulk import) held up every other message behind it.
Each row now records its sender's lane and its turn in that lane, and claims go
by (turn, id) (`inbound/lanes.py`). Rows stored before the upgrade keep lane ''
and turn 0: they are taken first, in arrival order, as before.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("inbound", schema=None) as batch_op:
        batch_op.add_column(sa.Column("lane", sa.String(512), nullable=False, server_default=""))
        batch_op.add_column(sa.Column("turn", sa.Integer(), nullable=False, server_default="0"))
        batch_op.create_index("ix_inbound_state_turn_id", ["state", "turn", "id"], unique=False)
        batch_op.create_index("ix_inbound_state_lane_turn", ["state", "lane", "turn"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("inbound", schema=None) as batch_op:
        batch_op.drop_index("ix_inbound_state_lane_turn")
        batch_op.drop_index("ix_inbound_state_turn_id")
        batch_op.drop_column("turn")
        batch_op.drop_column("lane")
