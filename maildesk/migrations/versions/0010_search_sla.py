"""full-text search, service levels, languages (issue 10)

The search index (`maildesk/tickets/search.py`): a contentless FTS5 table on
SQLite, a table of `tsvector`s with a GIN index on PostgreSQL; every message
stored before this migration is indexed here. Agents get a language. Sent SLA
reminders are `job_runs` rows, so they need no table of their own.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

from maildesk.tickets import search

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

BATCH = 1000


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        op.execute(
            "CREATE VIRTUAL TABLE message_search USING fts5("
            "document, content='', tokenize='unicode61 remove_diacritics 2')"
        )
    else:
        op.execute(
            "CREATE TABLE message_search ("
            "message_pk INTEGER PRIMARY KEY REFERENCES messages(id) ON DELETE CASCADE, "
            "document TSVECTOR NOT NULL)"
        )
        op.execute("CREATE INDEX ix_message_search_document ON message_search USING gin (document)")
    _backfill(bind)
    with op.batch_alter_table("participants", schema=None) as batch_op:
        batch_op.create_index("ix_participants_person_id", ["person_id"], unique=False)
    with op.batch_alter_table("agents", schema=None) as batch_op:
        batch_op.add_column(sa.Column("language", sa.String(length=8), nullable=True))


def _backfill(bind: sa.Connection) -> None:
    """Index every message stored so far, in batches (the code indexes new ones)."""
    messages = sa.table(
        "messages",
        sa.column("id", sa.Integer),
        sa.column("direction", sa.String),
        sa.column("kind", sa.String),
        sa.column("subject", sa.Text),
        sa.column("body_text", sa.Text),
    )
    last = 0
    while True:
        rows = bind.execute(
            sa.select(
                messages.c.id,
                messages.c.direction,
                messages.c.kind,
                messages.c.subject,
                messages.c.body_text,
            )
            .where(messages.c.id > last)
            .order_by(messages.c.id)
            .limit(BATCH)
        ).all()
        if not rows:
            return
        search.index_rows(
            bind,
            [
                (pk, search.document(subject or "", body or ""))
                for pk, direction, kind, subject, body in rows
                if search.indexed(direction, kind)
            ],
        )
        last = rows[-1][0]


def downgrade() -> None:
    with op.batch_alter_table("participants", schema=None) as batch_op:
        batch_op.drop_index("ix_participants_person_id")
    with op.batch_alter_table("agents", schema=None) as batch_op:
        batch_op.drop_column("language")
    op.execute("DROP TABLE message_search")
