"""people.domain: an organization's colleagues found by an index, not by reading everyone

An organization member's every portal page found her colleagues with `email LIKE
'%@acme.test'`, which no index serves: every person the desk ever heard from was
read (10 ms at 100,000 people). `people.domain` holds the address's domain, set
with it (models.Person), indexed; existing rows get theirs here.

Revision ID: 0025
Revises: 0024
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0025"
down_revision = "0024"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("people", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("domain", sa.String(length=255), nullable=False, server_default="")
        )
    # Every address we keep has one `@` (inbound/smtpaddress.py, outbound/headers.py).
    if op.get_bind().dialect.name == "postgresql":
        op.execute("UPDATE people SET domain = split_part(email, '@', 2)")
    else:
        op.execute("UPDATE people SET domain = substr(email, instr(email, '@') + 1)")
    with op.batch_alter_table("people", schema=None) as batch_op:
        batch_op.create_index("ix_people_domain", ["domain"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("people", schema=None) as batch_op:
        batch_op.drop_index("ix_people_domain")
        batch_op.drop_column("domain")
