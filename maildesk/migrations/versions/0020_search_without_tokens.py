"""the search index made again without link tokens

Until 27f6a86 the index held every word of a message, the tokens of our signed
links included (a set-password or paid-work link quoted in a reply, or wrapped by a
link rewriter). Prefix searches read such words back, case aside, to anyone who may
search the ticket: a customer's colleague in the portal, or an agent. New messages
are indexed without them since; this revision makes every document again from its
message with today's rules (`search.rebuild`), so a desk indexed before loses them
too. The old words cannot be picked out: on SQLite the index is contentless.

It reads every message once: 7 s on SQLite and 15 s on PostgreSQL for 100,000
messages of about 60 words (`bench/search.py --rebuild`, 2026-12-02).

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-02
"""

from alembic import op

from maildesk.tickets import search

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    search.rebuild(op.get_bind())


def downgrade() -> None:
    """Nothing to undo: the index of 0019 holds the same documents, less the tokens."""
