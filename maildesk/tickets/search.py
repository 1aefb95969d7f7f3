"""Full-text search over tickets' subjects and message bodies, by the database's own engine.

What is indexed: every inbound message (customers', participants', agents'
replies and notes) and the agents' answers relayed to customers
(`agent_reply`). Our own templated mail (acknowledgements, status notices) is
not: its words are on every ticket and would match them all.

How words match, the same on both engines: text is folded in Python (Unicode
NFKD, combining marks dropped, casefolded: `Práce` → `prace`) and split into
runs of letters and digits before it is indexed and before a query is run, so
`prace` finds `práce` and `PRÁCE` alike. Every query word must occur in one
message. Exact words are looked up first; only when they are nowhere do words
of three or more characters match as prefixes, so a typed stem finds every
form (Czech inflects: `faktur` finds `faktura`, `faktury`, `fakturou`). A
prefix comes second because it may stand for hundreds of words, whose lists
the engine must merge (measured: 130 ms on PostgreSQL for a short prefix of
100k messages, against 10 ms for a word).

Where it is stored, one `message_search` index keyed by the message's id:
- SQLite: a contentless FTS5 table (the folded text is not stored twice);
- PostgreSQL: a table of stripped `tsvector`s (`simple` configuration over the
  folded text) with a GIN index. A generated column or expression index could
  not call the Python folding, and PostgreSQL's `unaccent` folds differently
  from SQLite, so both engines index the text folded here.

`index_message` is called by `Tickets.add_message` in the caller's
transaction, so the index never lags the messages; migration 0010 backfilled
the messages that existed before.

Results are tickets, newest matching message first, each with that message's
id and a short snippet. Work is bounded: at most `MAX_WORDS` query words, at
most `MAX_INDEXED_CHARS` of a message are indexed, matches are walked newest
first for at most `MAX_SCANNED` rows, and a customer's search looks at their
newest `MAX_VISIBLE` public messages.

`search(session, words, limit)` is the whole interface for agents' tools;
`person` narrows it to what one customer may see (`visibility.Scope`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Integer,
    column,
    func,
    select,
    table,
    text,
)
from sqlalchemy.orm import Session

from maildesk.folding import fold
from maildesk.hotsql import Hot
from maildesk.models import Message, Ticket
from maildesk.redaction import LINK_SLACK, redact_head, redact_links
from maildesk.tickets.visibility import PUBLIC, Scope

MAX_WORDS = 8
MAX_WORD_CHARS = 64
MAX_INDEXED_CHARS = 200_000
# PostgreSQL refuses a tsvector whose distinct words pass 1 MB of UTF-8 ("string is too
# long for tsvector"): 200,000 characters of distinct words of another script (Hangul
# grows threefold in NFKD) failed the mail at every attempt. Words past it go unindexed,
# on both engines alike.
MAX_DOCUMENT_BYTES = 1_000_000
MAX_LIMIT = 200
CHUNK = 100
MAX_CHUNK = 5000
MAX_SCANNED = 50_000
MAX_VISIBLE = 10_000
PREFIX_FROM = 3
SNIPPET_CHARS = 160
SNIPPET_SCAN = 4000  # a word further into a long message is not looked for
# Outbound messages whose words are the conversation's (the rest are our templates).
INDEXED_OUTBOUND = frozenset({"agent_reply"})

_WORD = re.compile(r"[^\W_]+")
_ASCII_SEPARATORS = str.maketrans({c: " " for c in map(chr, range(128)) if not c.isalnum()})
_INDEX = table("message_search", column("message_pk", Integer), column("document"))


@dataclass(frozen=True)
class Hit:
    """One ticket that matched, with its newest matching message."""

    ticket: Ticket
    message_pk: int
    snippet: str


def words(value: str) -> list[str]:
    """The folded words of a text, as both engines index them."""
    folded = fold(value)
    if folded.isascii():
        # The words `_WORD` finds (on ASCII, [^\W_] is [A-Za-z0-9]), split in C: the
        # pattern cost a twentieth of processing a message.
        found = folded.translate(_ASCII_SEPARATORS).split()
    else:
        found = _WORD.findall(folded)
    if max(map(len, found), default=0) <= MAX_WORD_CHARS:
        return found
    return [w for w in found if len(w) <= MAX_WORD_CHARS]


def document(subject: str, body: str) -> str:
    """The folded, tokenized text the index holds for one message. Never a link's token:
    prefix searches (`eyjw`, `eyjwi`, …) would read its words back, case aside, to anyone
    who may search the ticket."""
    found = words(f"{redact_links(subject)}\n{redact_head(body, MAX_INDEXED_CHARS)}")
    joined = " ".join(found)
    # All words' bytes bound the distinct words' bytes: most mail is counted no further.
    if len(joined) * 4 <= MAX_DOCUMENT_BYTES or len(joined.encode()) <= MAX_DOCUMENT_BYTES:
        return joined
    return " ".join(_within_bytes(found))


def _within_bytes(found: list[str]) -> list[str]:
    """`found` up to the word whose distinct words would pass `MAX_DOCUMENT_BYTES`."""
    seen: set[str] = set()
    size = 0
    for at, word in enumerate(found):
        if word not in seen:
            size += len(word.encode())
            if size > MAX_DOCUMENT_BYTES:
                return found[:at]
            seen.add(word)
    return found


def indexed(direction: str, kind: str) -> bool:
    return direction == "in" or kind in INDEXED_OUTBOUND


def index_message(
    db: Session | Connection,
    pk: int,
    direction: str,
    kind: str,
    subject: str,
    body: str,
    folded: str | None = None,
) -> None:
    """Add one stored message (its primary key and columns) to the index, in the
    caller's transaction. `folded`: `document(subject, body)`, when made ahead."""
    if indexed(direction, kind):
        index_rows(db, [(pk, document(subject, body) if folded is None else folded)])


# Every processed message runs one of these (hotsql.py).
_INSERT_SQLITE = Hot(text("INSERT INTO message_search (rowid, document) VALUES (:pk, :doc)"))
_INSERT_POSTGRESQL = Hot(
    text(
        "INSERT INTO message_search (message_pk, document) "
        "VALUES (:pk, strip(to_tsvector('simple', :doc))) "
        "ON CONFLICT (message_pk) DO NOTHING"
    )
)


def index_rows(db: Session | Connection, rows: Iterable[tuple[int, str]]) -> None:
    """Write (message id, document) pairs: used by `index_message` and the backfill."""
    params = [{"pk": pk, "doc": doc} for pk, doc in rows]
    if not params:
        return
    connection = db if isinstance(db, Connection) else db.connection()
    insert = _INSERT_SQLITE if connection.dialect.name == "sqlite" else _INSERT_POSTGRESQL
    insert.run_many(connection, params)


def rebuild(connection: Connection, batch: int = 1000) -> int:
    """Empty the index and index every stored message again, as `index_message` does
    now, in batches of `batch` messages; returns how many it indexed. For a migration
    whose rules change what a document holds: the index keeps no text to re-read (on
    SQLite it is contentless), so each document is made again from its message."""
    if connection.dialect.name == "sqlite":
        connection.execute(
            text("INSERT INTO message_search (message_search) VALUES ('delete-all')")
        )
    else:
        connection.execute(text("DELETE FROM message_search"))
    # The table as it stands at migration 0020, not the model: a later migration may
    # change the model, and this still runs on a database on its way past 0020.
    messages = table("messages", *map(column, ("id", "direction", "kind", "subject", "body_text")))
    ids = messages.c.id
    stored = select(*messages.c).order_by(ids)
    count = last = 0
    while rows := connection.execute(stored.where(ids > last).limit(batch)).all():
        found = [
            (pk, document(subject, body))
            for pk, direction, kind, subject, body in rows
            if indexed(direction, kind)
        ]
        index_rows(connection, found)
        count += len(found)
        last = rows[-1][0]
    return count


def _dialect(db: Session | Connection) -> str:
    return db.dialect.name if isinstance(db, Connection) else db.get_bind().dialect.name


def query_terms(value: str) -> list[str]:
    """The words of a query, folded, deduplicated, at most `MAX_WORDS`."""
    return list(dict.fromkeys(words(value)))[:MAX_WORDS]


def search(session: Session, words: str, limit: int = 20, person: Scope | None = None) -> list[Hit]:
    """Tickets whose messages hold every word of `words`, newest match first.

    With `person` (a customer's `Scope`), only the tickets that person may see
    and only their public messages are searched: the portal's own rule.
    """
    terms = query_terms(words)
    limit = max(1, min(limit, MAX_LIMIT))
    if not terms:
        return []
    if _dialect(session) == "postgresql":
        # psycopg prepares a statement run five times, and PostgreSQL may then plan it once
        # for any words: as if a word were common, walking every message newest first
        # (measured: 200 ms instead of 10 for a rare word). Plan for the words at hand.
        session.execute(text("SET LOCAL plan_cache_mode = force_custom_plan"))
    # Exact words first: a prefix can stand for hundreds of words, and merging all their
    # lists is what costs. Prefixes only when the exact words are nowhere (a typed stem).
    found = _newest_per_ticket(session, terms, limit, person, prefix=False)
    if not found and any(len(t) >= PREFIX_FROM for t in terms):
        found = _newest_per_ticket(session, terms, limit, person, prefix=True)
    if not found:
        return []
    tickets = {t.id: t for t in session.scalars(select(Ticket).where(Ticket.id.in_(found)))}
    # A snippet is made from a text's head (`snippet`): only that is read. The whole
    # text of each of 50 results was, for a 160-character snippet: tickets of 20 MB
    # mails made one customer's search a gigabyte of memory.
    head = func.substr(Message.body_text, 1, SNIPPET_SCAN + LINK_SLACK)
    heads = session.execute(select(Message.id, head).where(Message.id.in_(found.values())))
    bodies: dict[int, str] = {pk: text or "" for pk, text in heads}
    return [Hit(tickets[tid], pk, snippet(bodies.get(pk, ""), terms)) for tid, pk in found.items()]


def _newest_per_ticket(
    session: Session, terms: list[str], limit: int, person: Scope | None, *, prefix: bool
) -> dict[int, int]:
    """{ticket id: its newest matching message id}, newest first, at most `limit` tickets.

    Matches are read newest first in growing chunks, so a word on half of all
    messages costs one short index walk rather than a sort of every match; the
    walk stops after `MAX_SCANNED` matches (then the newest tickets found win).
    """
    index, key, match = _index(session, terms, prefix)
    query = select(Message.id, Message.ticket_id).select_from(index)
    query = query.join(Message, Message.id == key).where(match)
    if person is not None:
        visible = _visible_messages(session, person)
        if not visible:
            return {}
        if prefix:
            # A prefix is costly to look up row by row: match once, then intersect.
            matched = select(key).select_from(index).where(match)
            query = select(Message.id, Message.ticket_id).where(
                Message.id.in_(visible), Message.id.in_(matched)
            )
            key = Message.id
        else:
            # A customer's own public messages are few: the index is asked about those
            # only, rather than walked until enough of theirs turn up among everyone's.
            query = query.where(key.in_(visible))
    found: dict[int, int] = {}
    below: int | None = None
    chunk = CHUNK
    scanned = 0
    while len(found) < limit and scanned < MAX_SCANNED:
        page = query if below is None else query.where(key < below)
        rows = session.execute(page.order_by(key.desc()).limit(chunk)).all()
        for pk, ticket_id in rows:
            found.setdefault(ticket_id, pk)
            if len(found) == limit:
                break
        if len(rows) < chunk:
            break
        scanned += len(rows)
        below = rows[-1][0]
        chunk = min(chunk * 4, MAX_CHUNK)
    return found


def _visible_messages(session: Session, person: Scope) -> list[int]:
    """The newest `MAX_VISIBLE` public messages of the tickets `person` may see."""
    query = select(Message.id).where(Message.ticket_id.in_(person.ticket_ids()), PUBLIC)
    return list(session.scalars(query.order_by(Message.id.desc()).limit(MAX_VISIBLE)))


def _index(
    session: Session, terms: list[str], prefix: bool
) -> tuple[Any, Any, ColumnElement[bool]]:
    """The index table, its message-id column and the match condition, per engine.

    Terms are runs of letters and digits (`words`), so quoting them is safe.
    """
    star = [prefix and len(t) >= PREFIX_FROM for t in terms]
    if _dialect(session) == "sqlite":
        fts = table("message_search", column("rowid", Integer), column("document"))
        match = " AND ".join(
            f'"{t}"' + ("*" if s else "") for t, s in zip(terms, star, strict=True)
        )
        return fts, fts.c.rowid, fts.c.document.op("MATCH")(match)
    query = " & ".join(f"'{t}'" + (":*" if s else "") for t, s in zip(terms, star, strict=True))
    condition = _INDEX.c.document.op("@@")(func.to_tsquery("simple", query))
    return _INDEX, _INDEX.c.message_pk, condition


def snippet(body: str, terms: list[str]) -> str:
    """About `SNIPPET_CHARS` of `body` around the first query word found in it, its link
    tokens redacted before its lines are joined (a token wrapped onto two is found only then)."""
    flat = " ".join(redact_head(body, SNIPPET_SCAN).split())
    folded = fold(flat)
    # Folding keeps one character per character for Latin scripts; otherwise start at 0.
    at = -1
    if len(folded) == len(flat):
        at = min((i for t in terms if (i := folded.find(t)) >= 0), default=-1)
    start = max(0, at - SNIPPET_CHARS // 4) if at >= 0 else 0
    piece = flat[start : start + SNIPPET_CHARS]
    return ("…" if start else "") + piece + ("…" if start + SNIPPET_CHARS < len(flat) else "")
