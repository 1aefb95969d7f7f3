"""where a person's name came from: a forger's first mail no longer names a customer for good

A new sender's first mail named them, proven or not, and no later mail replaced
that name: a stranger who wrote From "URGENT call +1 555 0100" <alice@…> before
Alice ever did had that text greet her in every mail of ours. `people.name_source`
says what may replace the name (`states.NameSource`): `unproven` (mail that proved
nothing) gives way to the From of proven mail; `proven` is only filled in when
empty; `set` (typed in the portal or with `maildesk people name`) no mail changes.

Existing names are all `unproven`. Before this revision only mail's From named
anyone (`Tickets.person`): no page or command set a name, so none is `set`. Nor is
any marked `proven` from the stored messages: a portal reply carries the stored name
with a reply-token proof (a forged name would pass for the customer's own), and
retention deleted older mail. The cost of `unproven` is small: the customer's next
proven mail whose display name differs (or has none) replaces it, with their own.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("people", schema=None) as batch_op:
        # A default of plain text: with an expression Alembic would copy the whole
        # table on SQLite instead of adding the column (0017). It fills existing rows.
        batch_op.add_column(
            sa.Column("name_source", sa.String(8), nullable=False, server_default="unproven")
        )


def downgrade() -> None:
    with op.batch_alter_table("people", schema=None) as batch_op:
        batch_op.drop_column("name_source")
