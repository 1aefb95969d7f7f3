"""The processor alone: CPU milliseconds per message and messages per second.

Stores `--messages` generated customer messages (the generator of
`import_mbox.py`: ~`--size` bytes, `--replies` of them answers to earlier ones)
in a fresh spool as live SMTP mail (acknowledgements and agent notifications on,
two agents), then calls `Processor.process_pending()` in this process until
nothing is due, and prints the CPU time of this process per processed message
(`time.process_time`) and the wall rate. No SMTP, no sending: what is measured is
claim, parse, thread, record and the outbox rows queued.

    .venv/bin/python bench/processing.py [--messages 2000] [--database-url URL]
        [--profile out.prof]

`--database-url postgresql+psycopg://…` runs on PostgreSQL, in a schema of its own
that is dropped afterwards (default: SQLite in a temp dir). `--sign` DKIM-signs the
mail queued, as a production desk does. `--notices-per-hour N` caps the agents'
notices of a sender's new tickets (the generated mail has 24 senders; default: no
cap). `--profile` writes a cProfile of the
processing (not of the storing) and prints its top entries. `--instructions` runs
the whole script again under valgrind's callgrind and prints the instructions of the
processing per message (`--count sending`: of the sending of its outbox, per
row): a figure the machine's drifting speed does not move (`instructions.py`).
`--corpus spamassassin` processes the first `--messages` of the SpamAssassin public
corpus instead (real mail: lists, HTML, spam; `corpus.py`), as live SMTP mail.
Nothing is asserted: the script prints figures and the target.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import re
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import common
import corpus
import instructions
from import_mbox import conversations
from sqlalchemy import Engine, create_engine, event, text

from maildesk import config, language
from maildesk.db import Database
from maildesk.inbound.store import Envelope
from maildesk.services import Services, build

T = TypeVar("T")
TARGET_MS = 2.0  # CPU per message (issue 9)
AGENTS = ("agent1@example.test", "agent2@example.test")
STORE_BATCH = 500


@contextmanager
def database(args: argparse.Namespace, workdir: Path) -> Iterator[str]:
    """The URL of an empty database: SQLite in `workdir`, or a fresh PostgreSQL schema."""
    if not args.database_url:
        yield f"sqlite:///{workdir / 'maildesk.db'}"
        return
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(args.database_url)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in args.database_url else "?"
    try:
        yield f"{args.database_url}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def settings(
    url: str,
    workdir: Path,
    spamd: tuple[str, int] | None = None,
    ahead: int = 4,
    sign: bool = False,
    notices_per_hour: int = 0,
) -> config.Settings:
    spam = {"spamd_host": spamd[0], "spamd_port": spamd[1]} if spamd else {}
    outbound = {"url": f"maildir:{workdir / 'outbox'}"}
    if sign:  # our own mail DKIM-signed, as a production desk's is
        outbound |= {"dkim_selector": "desk", "dkim_key": str(common.signing_key(workdir))}
    return config.from_mapping(
        {
            "spam": spam,
            "workers": {"prepare_ahead": ahead},
            "support": {
                "address": common.SUPPORT,
                "name": "Example Support",
                "base_url": "http://127.0.0.1:8080",
                "language": "en",
            },
            "database": {"url": url},
            "web": {"secret_key": "bench-" + "k" * 40},
            "outbound": outbound,
            "agents": {"addresses": list(AGENTS)},
            # No DNS: what is measured is our own work, not a resolver's answers.
            "trust": {"verify_dkim": False},
            # Every new ticket acknowledged, and each agent told of it: the RFC 3834 caps,
            # and the agents' cap on a sender's new tickets, would stop that early.
            "limits": common.every_notice()
            | ({"new_ticket_notices_per_hour": notices_per_hour} if notices_per_hour else {}),
        },
        base_dir=workdir,
    )


def raw_messages(args: argparse.Namespace) -> Iterator[bytes]:
    """The messages to store, CRLF-terminated as SMTP delivers them."""
    if args.corpus:
        for _name, raw in corpus.messages(args.corpus)[: args.messages]:
            yield re.sub(rb"\r?\n", b"\r\n", raw)
        return
    run_id = f"proc{os.getpid()}x{int(time.time())}"
    for item in conversations(args.messages, args.size, args.replies, run_id):
        yield item.raw.replace(b"\n", b"\r\n")


def store(services: Services, args: argparse.Namespace) -> int:
    batch: list[bytes] = []
    stored = 0
    # One envelope sender for all: the generated authors are only a handful anyway.
    envelope = Envelope("smtp", "customer@customer0.test", (common.SUPPORT,), peer="192.0.2.1")
    for raw in raw_messages(args):
        batch.append(raw)
        if len(batch) >= STORE_BATCH:
            stored += len(services.store.put_many(batch, envelope))
            batch = []
    if batch:
        stored += len(services.store.put_many(batch, envelope))
    return stored


def reference_ms() -> float:
    """CPU ms of a fixed pure-Python workload: a yardstick for a busy machine's slowdown.

    Taken just before processing; the smallest of five, since other processes only
    ever make it slower.
    """
    best = float("inf")
    for _ in range(5):
        started = time.process_time()
        table: dict[str, int] = {}
        for i in range(200_000):
            key = f"k{i % 977}"
            table[key] = table.get(key, 0) + i
        best = min(best, time.process_time() - started)
    return best * 1000


@dataclass(frozen=True)
class Counts:
    """What the database holds after the processing."""

    states: dict[object, object]
    tickets: object
    messages: object
    outbox: dict[object, object]


class WriteClock:
    """Wall time spent inside the database's write transactions (`transaction()` and
    `writing()`, wrapped on this one instance). On SQLite the write lock is held all
    that time and workers take turns for it, so however many workers run, they cannot
    process more than 1000 / (these milliseconds per message) messages per second."""

    def __init__(self, db: Database) -> None:
        self.seconds = 0.0
        for name in ("transaction", "writing"):
            setattr(db, name, self._timed(getattr(db, name)))

    def _timed(self, open_: Callable[..., AbstractContextManager[T]]) -> Callable[..., Any]:
        @contextmanager
        def timed(*args: Any, **kwargs: Any) -> Iterator[T]:
            started = time.perf_counter()
            try:
                with open_(*args, **kwargs) as inside:
                    yield inside
            finally:
                self.seconds += time.perf_counter() - started

        return timed


def count_statements(engine: Engine, statements: Counter[str]) -> None:
    """Count each statement the engine's connections run from now on, by its shape.

    On SQLite, as SQLite runs them (its trace callback, values replaced by `?`): the
    statements maildesk runs on the driver's cursor (hotsql.py, rawbytes.py) too, and
    BEGIN, COMMIT and savepoints. On PostgreSQL only what SQLAlchemy executes."""
    if engine.dialect.name != "sqlite":

        def count(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
            statements[" ".join(statement.split())[:110]] += 1

        event.listen(engine, "before_cursor_execute", count)
        return

    def traced(statement: str) -> None:
        # "-- " marks what SQLite runs inside a statement (FTS5's own tables): counted apart.
        shape = _LITERALS.sub("?", " ".join(statement.split()))
        statements[INSIDE if shape.startswith("-- ") else shape[:110]] += 1

    engine.dispose()  # the connections made from now on are traced
    event.listen(engine, "connect", lambda dbapi, _record: dbapi.set_trace_callback(traced))


INSIDE = "(run by SQLite inside the statements above: FTS5's own tables)"
_LITERALS = re.compile(r"'(?:[^']|'')*'|\bX'[0-9A-F]*'|(?<![\w.])-?\d+(?:\.\d+)?\b")


def send(services: Services, counted: bool) -> str:
    """Drain the outbox into the Maildir as one worker's sender does, 10 rows a claim
    (`counted`: its instructions are what `--instructions` counts)."""
    sender = services.sender()
    sent, cpu, wall = 0, time.process_time(), time.perf_counter()
    with instructions.counting() if counted else nullcontext():
        while handled := sender.send_due(10):
            sent += handled
    if counted:
        instructions.record(sent)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return (
        f"\nsending: {sent} outbox rows to the Maildir in {wall:.2f} s, "
        f"{sent / wall:.0f} rows/s, {cpu * 1000 / max(sent, 1):.2f} ms CPU per row"
    )


def count(services: Services, query: str) -> list[tuple[object, ...]]:
    with services.db.transaction() as session:
        return [tuple(row) for row in session.execute(text(query))]


def run(args: argparse.Namespace, workdir: Path) -> None:
    if not args.spamd:
        measure(args, workdir)
        return
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.spamd import SpamdServer

    with SpamdServer() as spamd:
        measure(args, workdir, (spamd.host, spamd.port))


def measure(args: argparse.Namespace, workdir: Path, spamd: tuple[str, int] | None = None) -> None:
    with database(args, workdir) as url:
        services = build(
            settings(url, workdir, spamd, args.prepare_ahead, args.sign, args.notices_per_hour)
        )
        services.prepare()
        stored = store(services, args)
        print(f"-- stored {stored} messages; processing", file=sys.stderr, flush=True)
        profiler = cProfile.Profile() if args.profile else None
        statements: Counter[str] = Counter()
        if args.statements:
            count_statements(services.db.engine, statements)
        processed = batches = 0
        writes = WriteClock(services.db)
        yardstick = reference_ms()
        # Costs per process, not per message: what a worker builds as it starts, and
        # the language model, which it loads for its first message that needs it
        # (from the state folder, as the processor's detector does).
        services.processor.warm_up()
        language.warm(services.settings.state_folder)
        cpu, wall = time.process_time(), time.perf_counter()
        if profiler:
            profiler.enable()
        counting_sending = args.count == "sending"
        with nullcontext() if counting_sending else instructions.counting():
            while result := services.processor.process_pending().processed:
                processed += result
                batches += 1
        if profiler:
            profiler.disable()
        if not counting_sending:
            instructions.record(processed)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        states = dict(count(services, "SELECT state, count(*) FROM inbound GROUP BY state"))
        tickets = count(services, "SELECT count(*) FROM tickets")[0][0]
        messages = count(services, "SELECT count(*) FROM messages")[0][0]
        outbox = dict(count(services, "SELECT kind, count(*) FROM outbox GROUP BY kind"))
        sending = send(services, counting_sending) if args.send or counting_sending else ""
        services.db.engine.dispose()
    counts = Counts(states, tickets, messages, outbox)
    report(args, workdir, url, processed, cpu, wall, writes.seconds, counts, yardstick)
    if sending:
        print(sending)
    if args.statements:
        inside = statements.pop(INSIDE, 0)
        total = sum(statements.values())
        note = "" if url.startswith("sqlite") else " (hot statements not counted)"
        print(f"\n{total / max(processed, 1):.1f} SQL statements per message{note}, most frequent:")
        for statement, n in statements.most_common(25):
            print(f"{n / max(processed, 1):6.2f}  {statement}")
        if inside:
            print(f"{inside / max(processed, 1):6.2f}  {INSIDE}")
    if profiler:
        profiler.dump_stats(args.profile)
        print(f"\nprofile written to {args.profile}; top by cumulative and own time:")
        stats = pstats.Stats(profiler)
        stats.sort_stats("cumulative").print_stats(35)
        stats.sort_stats("tottime").print_stats(25)


def report(
    args: argparse.Namespace,
    workdir: Path,
    url: str,
    processed: int,
    cpu: float,
    wall: float,
    writing: float,
    counts: Counts,
    yardstick: float,
) -> None:
    per_message = cpu * 1000 / max(processed, 1)
    written = writing * 1000 / max(processed, 1)
    backend = url.split(":", 1)[0]
    print()
    print(
        f"processing {processed} messages (~{args.size} bytes, {args.replies:.0%} replies) "
        f"on {backend}"
    )
    print(f"machine: {common.machine(workdir)}")
    print(f"{args.cpu_watch.note()}; maildesk sources {common.code_fingerprint()}")
    if args.profile:
        print("(under cProfile: figures are inflated)")
    if instructions.inside():
        print("(under valgrind: time figures are inflated about 50 times)")
    print()
    print(
        common.table(
            ["CPU ms/msg", "wall msg/s", "CPU s", "wall s", "in write transactions ms/msg"],
            [
                [
                    f"{per_message:.2f}",
                    f"{processed / wall:.0f}",
                    f"{cpu:.2f}",
                    f"{wall:.2f}",
                    f"{written:.2f} ({writing / wall:.0%} of the wall time)",
                ]
            ],
        )
    )
    print(
        f"yardstick (a fixed pure-Python loop, CPU): {yardstick:.0f} ms; "
        f"CPU per message in yardsticks: {per_message / yardstick * 1000:.1f} per mille"
    )
    print()
    print(
        f"inbound states {counts.states}; {counts.tickets} tickets, {counts.messages} messages, "
        f"outbox {counts.outbox}"
    )
    if backend == "sqlite":
        print(
            f"SQLite's one writer: however many workers, at most {1000 / written:.0f} msg/s "
            "(1000 / the write transactions' ms per message)"
        )
    print(
        f"target: <= {TARGET_MS} ms CPU per message: {per_message:.2f} -> "
        f"{common.verdict(per_message <= TARGET_MS)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--size", type=int, default=4096, help="approximate bytes per message")
    parser.add_argument(
        "--corpus",
        choices=corpus.NAMES,
        help="real mail instead of generated (corpus.py; the first --messages of it)",
    )
    parser.add_argument("--replies", type=float, default=0.3, help="share of replies (0..1)")
    parser.add_argument("--database-url", default="", help="PostgreSQL URL (default: SQLite)")
    parser.add_argument("--profile", type=Path, help="write a cProfile of the processing here")
    parser.add_argument(
        "--statements", action="store_true", help="count the SQL statements of the processing"
    )
    parser.add_argument(
        "--send", action="store_true", help="then send the outbox to a Maildir, timed apart"
    )
    parser.add_argument(
        "--spamd", action="store_true", help="score each message with a spamd of its own"
    )
    parser.add_argument("--sign", action="store_true", help="our own mail DKIM-signed")
    parser.add_argument(
        "--notices-per-hour",
        type=int,
        default=0,
        help="[limits] new_ticket_notices_per_hour (default 0: agents hear of every ticket)",
    )
    parser.add_argument(
        "--prepare-ahead", type=int, default=4, help="[workers] prepare_ahead (1: one at a time)"
    )
    parser.add_argument(
        "--count",
        choices=("processing", "sending"),
        default="processing",
        help="what --instructions counts: the processing, or the sending of its outbox "
        "(per row; implies --send)",
    )
    parser.add_argument("--workdir", type=Path, help="parent of the temp dir (default: $TMPDIR)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="count the processing's instructions under valgrind (no drift; 50x slower)",
    )
    args = parser.parse_args()
    if args.instructions and not instructions.inside():
        count_instructions(args)
        return
    common.run_in_workdir("processing", "processing", args, run)


def count_instructions(args: argparse.Namespace) -> None:
    # Kept: `callgrind_annotate FILE` says which C functions ran the instructions.
    out = Path(tempfile.mkdtemp(prefix="maildesk-callgrind-")) / "callgrind.out"
    counted, units = instructions.rerun(out)
    unit = "processed message" if args.count == "processing" else "sent outbox row"
    print(
        f"\ninstructions (valgrind's callgrind, hash seed 0): {counted / units / 1e6:.2f} "
        f"million per {unit} ({counted:,} for {units}); the CPU figures "
        f"above ran under valgrind; counts by C function: callgrind_annotate {out}"
    )


if __name__ == "__main__":
    main()
