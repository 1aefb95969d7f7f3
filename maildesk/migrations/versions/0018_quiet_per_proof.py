"""quiet senders per proof: agents are told of a proven flood even after an unproven one

`people.quiet_since` said when agents were last told that a sender's new tickets
are filed quietly, whatever the proof of the mail. The count behind it is per proof
(0017), so after a forger's unproven flood in a customer's name, the customer's own
signed flood within the hour was filed quietly without a word to the agents.
`people.quiet_proven_since` is the mark for mail that proved its From (DKIM/DMARC);
`quiet_since` stays the one for mail that did not.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("people", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("quiet_proven_since", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.create_index("ix_people_quiet_proven_since", ["quiet_proven_since"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("people", schema=None) as batch_op:
        batch_op.drop_index("ix_people_quiet_proven_since")
        batch_op.drop_column("quiet_proven_since")
