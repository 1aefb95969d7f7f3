"""Threading lookup: how long the threader takes to find a message's ticket, by store size.

The threader (`maildesk/pipeline/threader.py`) asks `Tickets.thread_key` for the
ticket of the Message-IDs a message answers (In-Reply-To and References: minted
ids in the outbox, stored messages joined to their ticket and requester), and,
when none matches, `Tickets.referencing` for a stored message that names this
one (the reply came first). This script grows one database to 10k, 100k and 1M
stored messages (`--sizes`) and, at each size, times those calls as the threader
makes them, in one read transaction, for three kinds of message:

- reply: a customer answers the agent's last mail (In-Reply-To and References
  name four stored messages): `thread_key` finds the ticket;
- new: a first message, no references: `referencing` finds nothing;
- stray reply: answers mail we never stored: both queries, both miss.

The store: tickets of four messages (the customer's first mail, our minted
acknowledgement, the customer's reply naming both, the agent's answer), the
acknowledgement's outbox row, two reference rows per ticket, one customer per ten
tickets. Rows are bulk-inserted with Core; `ANALYZE` runs after each fill (what
autovacuum would have done by then). It must stay flat: every lookup is an index
probe (`messages.message_id`, `outbox.message_id`, `message_refs.ref_id`).

Run from the project root:

    .venv/bin/python bench/threading_lookup.py [--sizes 10000,100000,1000000]
        [--backends sqlite,postgresql] [--pg-url postgresql+psycopg://...]

PostgreSQL gets a fresh schema in the `--pg-url` database, dropped at the end.
Nothing is asserted: the script prints p50/p99 per kind and size.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import common
import pgschema
from sqlalchemy import event, insert

from maildesk.db import Database
from maildesk.models import Message, MessageRef, Outbox, Person, Ticket
from maildesk.schema import upgrade
from maildesk.tickets.service import Tickets

PER_TICKET = 4
TICKETS_PER_CUSTOMER = 10
BATCH = 5000  # tickets per fill transaction
START = datetime(2026, 1, 1, tzinfo=UTC)


def customer(person: int) -> str:
    return f"c{person}@customer{person % 97}.test"


def ids(ticket: int) -> tuple[str, str, str, str]:
    """The four Message-IDs of a ticket: first, acknowledgement, reply, agent's answer."""
    return (
        f"first{ticket}@mail.customer.test",
        f"ack{ticket}.x7Hq2@example.test",
        f"reply{ticket}@mail.customer.test",
        f"agent{ticket}.Zp4k9@example.test",
    )


def fill(db: Database, first: int, last: int) -> None:
    """Tickets first..last (inclusive) with their messages, references and outbox rows."""
    for lo in range(first, last + 1, BATCH):
        numbers = range(lo, min(last, lo + BATCH - 1) + 1)
        people, tickets, messages, refs, outbox = [], [], [], [], []
        for t in numbers:
            at = START + timedelta(minutes=t)
            person = (t - 1) // TICKETS_PER_CUSTOMER + 1
            if (t - 1) % TICKETS_PER_CUSTOMER == 0:
                people.append({"id": person, "email": customer(person), "created_at": at})
            tickets.append(
                {
                    "id": t,
                    "subject": f"Printer problem {t}",
                    "requester_id": person,
                    "created_at": at,
                    "updated_at": at,
                    "language": "en",
                }
            )
            first_id, ack, reply, answer = ids(t)
            for k, (mid, direction, kind, sender) in enumerate(
                (
                    (first_id, "in", "customer", customer(person)),
                    (ack, "out", "acknowledgement", "support@example.test"),
                    (reply, "in", "customer", customer(person)),
                    (answer, "out", "agent", "support@example.test"),
                )
            ):
                messages.append(
                    {
                        "id": (t - 1) * PER_TICKET + k + 1,
                        "ticket_id": t,
                        "message_id": mid,
                        "direction": direction,
                        "kind": kind,
                        "from_addr": sender,
                        "subject": f"Printer problem {t}",
                        "body_text": "The printer prints blank pages since the update.",
                        "created_at": at + timedelta(seconds=k),
                        "proof": "dkim" if direction == "in" else "",
                    }
                )
            reply_pk = (t - 1) * PER_TICKET + 3
            refs += [
                {"message_pk": reply_pk, "ref_id": first_id},
                {"message_pk": reply_pk, "ref_id": ack},
            ]
            outbox.append(
                {
                    "ticket_id": t,
                    "message_id": ack,
                    "kind": "acknowledgement",
                    "sender": "support@example.test",
                    "recipients": [customer(person)],
                    "state": "sent",
                    "next_attempt_at": at,
                    "created_at": at,
                    "sent_at": at,
                }
            )
        with db.transaction() as session:
            if people:
                session.execute(insert(Person), people)
            session.execute(insert(Ticket), tickets)
            session.execute(insert(Message), messages)
            session.execute(insert(MessageRef), refs)
            session.execute(insert(Outbox), outbox)
        print(f"\r  {numbers[-1] * PER_TICKET} messages", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    with db.engine.connect() as connection:
        connection.exec_driver_sql("ANALYZE")
        connection.commit()


Lookup = tuple[tuple[str, ...], str, str]  # (thread ids nearest first, message id, sender)


def lookups(rng: random.Random, tickets: int, count: int) -> dict[str, list[Lookup]]:
    def reply() -> Lookup:
        t = rng.randint(1, tickets)
        first_id, ack, earlier, answer = ids(t)
        person = (t - 1) // TICKETS_PER_CUSTOMER + 1
        return (answer, earlier, ack, first_id), f"new{rng.random()}@c.test", customer(person)

    def new() -> Lookup:
        return (), f"new{rng.random()}@mail.customer.test", customer(rng.randint(1, 1000))

    def stray() -> Lookup:
        theirs = tuple(f"elsewhere{rng.random()}@lists.test" for _ in range(3))
        return theirs, f"new{rng.random()}@mail.customer.test", customer(rng.randint(1, 1000))

    makers: dict[str, Callable[[], Lookup]] = {"reply": reply, "new": new, "stray reply": stray}
    return {kind: [make() for _ in range(count)] for kind, make in makers.items()}


def timed(db: Database, cases: list[Lookup]) -> tuple[list[float], int]:
    """Milliseconds per lookup, as the threader makes it; and how many found a ticket."""
    out, found = [], 0
    with db.reading() as session:
        tickets = Tickets(session)
        for thread_ids, message_id, sender in cases:
            began = time.perf_counter()
            key = tickets.thread_key(thread_ids, sender)
            ticket = key.ticket_id if key else tickets.referencing(message_id, sender)
            out.append((time.perf_counter() - began) * 1000)
            found += ticket is not None
    return out, found


def explain(db: Database, case: Lookup) -> list[str]:
    """The plans of the statements one lookup runs (captured as they execute)."""
    captured: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        captured.append((statement, parameters))

    event.listen(db.engine, "before_cursor_execute", capture)
    try:
        timed(db, [case])
    finally:
        event.remove(db.engine, "before_cursor_execute", capture)
    prefix = "EXPLAIN QUERY PLAN " if db.is_sqlite else "EXPLAIN "
    plans = []
    with db.engine.connect() as connection:
        for statement, parameters in captured:
            if not statement.lstrip().upper().startswith("SELECT"):
                continue
            # Hot statements (hotsql.py) hand SQLite's driver a list of parameters.
            given = tuple(parameters) if isinstance(parameters, list) else parameters
            rows = connection.exec_driver_sql(prefix + statement, given).all()
            plans.append("\n".join(" ".join(str(v) for v in row) for row in rows))
    return plans


def measure(
    db: Database, sizes: list[int], count: int, backend: str, show_plans: bool
) -> list[list[str]]:
    rows: list[list[str]] = []
    rng = random.Random(9)
    stored = 0
    for size in sizes:
        tickets = size // PER_TICKET
        began = time.perf_counter()
        print(f"{backend}: filling to {size} messages", file=sys.stderr)
        fill(db, stored + 1, tickets)
        stored = tickets
        filled = time.perf_counter() - began
        cases = lookups(rng, tickets, count)
        timed(db, cases["reply"][:50])  # warm the connection and the caches
        for kind, batch in cases.items():
            ms, found = timed(db, batch)
            rows.append(
                [
                    backend,
                    f"{size:,}",
                    kind,
                    f"{common.median(ms):.2f}",
                    f"{common.percentile(ms, 99):.2f}",
                    f"{found}/{len(batch)}",
                ]
            )
        print(f"  filled in {filled:.0f} s", file=sys.stderr)
        if show_plans and size == sizes[-1]:
            for kind in ("reply", "stray reply"):
                for plan in explain(db, cases[kind][0]):
                    print(f"{backend}, {size:,} messages, {kind}:\n{plan}\n")
    return rows


def run(args: argparse.Namespace, workdir: Path) -> None:
    sizes = [int(s) for s in args.sizes.split(",")]
    rows: list[list[str]] = []
    for backend in args.backends.split(","):
        with ExitStack() as stack:
            if backend == "sqlite":
                url = f"sqlite:///{workdir / 'threading.db'}"
            elif backend == "postgresql":
                url = stack.enter_context(pgschema.fresh_schema(args.pg_url, "bench_thread"))
            else:
                raise SystemExit(f"unknown backend {backend!r}")
            db = Database(url)
            stack.callback(db.dispose)
            upgrade(db)
            rows += measure(db, sizes, args.lookups, backend, args.explain)
    print(common.machine(workdir))
    print(args.cpu_watch.note())
    headers = ["backend", "stored messages", "message", "p50 ms", "p99 ms", "found a ticket"]
    print(common.table(headers, rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--pg-url", default=pgschema.DEFAULT_URL)
    parser.add_argument("--lookups", type=int, default=2000, help="per kind and size")
    parser.add_argument(
        "--explain", action="store_true", help="print the plans at the largest size"
    )
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    args: Any = parser.parse_args()
    args.profile = None
    common.run_in_workdir("threading", "threading_lookup", args, run)


if __name__ == "__main__":
    main()
