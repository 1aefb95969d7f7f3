"""Full-text search: p50/p95 of `maildesk.tickets.search.search` over 100k messages.

Fills a fresh database (SQLite in a temp dir, or `--database-url` for a PostgreSQL
database to migrate; use an empty one) with `--messages` messages in tickets of
five, bodies of ~60 words drawn with a Zipf-like skew from a Czech and English
vocabulary of ~5,000 words, so some words are on most tickets and most are rare.
The rows are written with Core inserts and indexed by the same `index_rows` and
`document` that `Tickets.add_message` uses. Then it times `--queries` searches
(limit 20, as the CLI and `#search` ask) of each kind:

- rare: one word that is on a handful of messages;
- common: one word that is on a large share of messages;
- two words: a common and a medium word, both required;
- folded: a rare word typed without its diacritics;
- customer: a rare word within one customer's own tickets (the portal's scope).

Run from the project root:

    .venv/bin/python bench/search.py [--messages 100000] [--queries 200]
    .venv/bin/python bench/search.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/bench

`--rebuild` then times `search.rebuild`, which migration 0020 runs, over the filled
database in one transaction.

Nothing is asserted: the script prints figures and the target (p50 < 50 ms).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import common
from sqlalchemy import insert, select

from maildesk.db import Database
from maildesk.models import Message, Participant, Person, Ticket
from maildesk.schema import upgrade
from maildesk.tickets.search import document, fold, index_rows, rebuild, search
from maildesk.tickets.visibility import Scope

TARGET_MS = 50.0
PER_TICKET = 5
CUSTOMERS = 500
BATCH = 2000

_STEMS = (
    "práce faktura tiskárna účetnictví uzávěrka heslo přihlášení objednávka sklad dodávka "
    "zákazník chyba oprava aktualizace ovladač server databáze záloha síť připojení "
    "printer invoice password login order warehouse delivery customer error update "
    "driver database backup network connection report export import screen mobile"
).split()


def vocabulary(rng: random.Random) -> list[str]:
    """~5,000 words: the stems first (the frequent ones), then made-up words of
    Czech-looking syllables, some with diacritics (rarer and rarer)."""
    syllables = "ka ko pr ze ná st vo li tě ří mu do ba če sa ný la ve ro hy".split()
    words = list(_STEMS)
    seen = set(words)
    while len(words) < 5000:
        word = "".join(rng.choice(syllables) for _ in range(rng.randint(2, 4)))
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


def pick(rng: random.Random, words: list[str]) -> str:
    # Zipf-like: low indexes (the stems) are on most messages, high ones on few.
    index = min(int(rng.paretovariate(0.9)) - 1, len(words) - 1)
    return words[index] if rng.random() < 0.7 else words[rng.randrange(len(words))]


def fill(db: Database, count: int, rng: random.Random, words: list[str]) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    with db.transaction() as session:
        session.execute(
            insert(Person),
            [
                {
                    "id": i + 1,
                    "email": f"c{i}@customer{i % 50}.test",
                    "name": "",
                    "created_at": start,
                }
                for i in range(CUSTOMERS)
            ],
        )
    tickets = count // PER_TICKET
    for first in range(0, tickets, BATCH):
        numbers = range(first + 1, min(tickets, first + BATCH) + 1)
        ticket_rows, participant_rows, message_rows, docs = [], [], [], []
        for number in numbers:
            at = start + timedelta(minutes=number)
            requester = number % CUSTOMERS + 1
            subject = " ".join(pick(rng, words) for _ in range(4))
            ticket_rows.append(
                {
                    "id": number,
                    "subject": subject,
                    "requester_id": requester,
                    "created_at": at,
                    "updated_at": at,
                    "language": "cs",
                }
            )
            participant_rows.append(
                {"ticket_id": number, "person_id": requester, "role": "requester"}
            )
            for k in range(PER_TICKET):
                pk = (number - 1) * PER_TICKET + k + 1
                body = " ".join(pick(rng, words) for _ in range(60))
                message_rows.append(
                    {
                        "id": pk,
                        "ticket_id": number,
                        "message_id": f"{pk}@bench.test",
                        "direction": "in",
                        "kind": "customer",
                        "from_addr": f"c{requester - 1}@customer.test",
                        "subject": subject,
                        "body_text": body,
                        "created_at": at + timedelta(seconds=k),
                    }
                )
                docs.append((pk, document(subject, body)))
        with db.transaction() as session:
            session.execute(insert(Ticket), ticket_rows)
            session.execute(insert(Participant), participant_rows)
            session.execute(insert(Message), message_rows)
            index_rows(session, docs)
        print(f"\r{numbers[-1] * PER_TICKET} messages", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)


def frequency(db: Database, words: list[str], rng: random.Random) -> dict[str, int]:
    """How many of a sample of messages hold each word (to choose rare and common ones)."""
    with db.reading() as session:
        bodies = session.scalars(select(Message.body_text).limit(5000)).all()
    counts: dict[str, int] = {}
    for body in bodies:
        for word in set(body.split()):
            counts[word] = counts.get(word, 0) + 1
    return counts


def timed(db: Database, queries: list[tuple[str, Scope | None]]) -> list[float]:
    out = []
    with db.reading() as session:
        for words, scope in queries:
            began = time.perf_counter()
            search(session, words, 20, person=scope)
            out.append((time.perf_counter() - began) * 1000)
    return out


def run(args: argparse.Namespace, workdir: Path) -> None:
    url = args.database_url or f"sqlite:///{workdir / 'search.db'}"
    db = Database(url)
    upgrade(db)
    rng = random.Random(42)
    words = vocabulary(rng)
    began = time.perf_counter()
    fill(db, args.messages, rng, words)
    filled = time.perf_counter() - began
    # What autovacuum (PostgreSQL) would have done by now; the planner needs the statistics.
    with db.engine.connect() as connection:
        connection.exec_driver_sql("ANALYZE")
        connection.commit()
    counts = frequency(db, words, rng)
    ranked = sorted(counts, key=counts.get)  # type: ignore[arg-type]
    rare = [w for w in ranked if counts[w] <= 3][: args.queries] or ranked[: args.queries]
    common_words = ranked[-20:]
    medium = ranked[len(ranked) // 2 : len(ranked) // 2 + 50]
    accented = [w for w in rare if fold(w) != w] or rare
    q = args.queries
    kinds: dict[str, list[tuple[str, Scope | None]]] = {
        "rare word": [(rng.choice(rare), None) for _ in range(q)],
        "common word": [(rng.choice(common_words), None) for _ in range(q)],
        "two words": [(f"{rng.choice(common_words)} {rng.choice(medium)}", None) for _ in range(q)],
        "folded (no diacritics)": [(fold(rng.choice(accented)), None) for _ in range(q)],
        "one customer's tickets": [
            (rng.choice(common_words), Scope(rng.randint(1, CUSTOMERS), None)) for _ in range(q)
        ],
    }
    timed(db, list(kinds["rare word"])[:20])  # warm the caches
    rows, everything = [], []
    for kind, queries in kinds.items():
        ms = timed(db, queries)
        everything += ms
        rows.append([kind, f"{common.median(ms):.1f}", f"{common.percentile(ms, 95):.1f}"])
    p50 = common.median(everything)
    rows.append(["all", f"{p50:.1f}", f"{common.percentile(everything, 95):.1f}"])
    print(f"{db.engine.dialect.name}, {args.messages} messages, filled in {filled:.0f} s")
    print(common.machine(workdir))
    print(args.cpu_watch.note())
    print(common.table(["query", "p50 ms", "p95 ms"], rows))
    print(f"target p50 < {TARGET_MS:.0f} ms: {common.verdict(p50 < TARGET_MS)}")
    if args.rebuild:
        began = time.perf_counter()
        with db.engine.begin() as connection:  # as migration 0020 runs it: one transaction
            indexed = rebuild(connection)
        took = time.perf_counter() - began
        print(f"rebuilt the index (migration 0020): {indexed} messages in {took:.1f} s")
    db.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--database-url", default="", help="an empty database (default: SQLite)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument(
        "--rebuild", action="store_true", help="then time `search.rebuild` (migration 0020)"
    )
    parser.add_argument("--profile", type=Path, default=None, help="(unused)")
    common.run_in_workdir("search", "search", parser.parse_args(), run)


if __name__ == "__main__":
    main()
