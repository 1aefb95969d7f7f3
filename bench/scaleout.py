"""Scale-out: 1, 2 and 3 `maildesk serve` instances on one PostgreSQL, the same mail.

For each instance count (`--instances 1,2,3`) the script makes a fresh schema in
the `--pg-url` database, writes one config per instance (that schema, its own SMTP
and web port, one shared relay: an SMTP sink in this process), runs `maildesk
init` for all of them at once, starts them, and sends the same `--messages`
~`--size`-byte customer messages (each opens a ticket) over `--connections`
persistent SMTP sessions, connection k to instance k mod N, unpaced (or paced to
`--rate` msg/s in total, for latency below capacity); they come
from 24 customers, as `bench/ingest.py`'s do, or with `--distinct-senders` each
from a customer of its own (no two workers then create one person). It waits
until every instance reports empty queues on /healthz and reads from the database:

- accepted msg/s: N / (first connect .. last 250), client side;
- processed msg/s: N / (first inbound.received_at .. last inbound.processed_at);
- acknowledgement latency p50/p99 from the 250 (inbound.received_at, stamped as
  the row is stored) to the acknowledgement queued (outbox.created_at) and to
  the acknowledgement received by the relay (the sink's clock; one machine);
- how many acknowledgements the relay got, and whether any was sent twice; the
  inbound states (one warm-up message per instance included: each instance takes
  one message end to end before the clock starts, as its workers start after
  `serve` answers /healthz);
- the most connections to PostgreSQL the instances held at once (`ss`).

Then, in this process on another fresh schema, it counts what one message costs
the database: `--count` messages stored one by one (acceptance), processed
(`Services.drain_inbound`) and their mail sent to the sink (`OutboxSender`),
at the driver (psycopg's cursor): statements, transactions (each a WAL flush on
commit), and round trips (statements + BEGIN + COMMIT/ROLLBACK + the pool's
pre-ping at each checkout).

Run from the project root (the machine's PostgreSQL, trust auth):

    .venv/bin/python bench/scaleout.py [--instances 1,2,3] [--messages 1500]
        [--connections 6] [--pg-url postgresql+psycopg://postgres@127.0.0.1:5432/test]

Nothing is asserted. On a 2-core machine more instances cannot add cores: the aim
is the same work done once, and no loss of throughput from 1 to 2 instances.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import smtplib
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import common
import pgschema
import psycopg
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from ingest import ClientRun
from sqlalchemy import create_engine, event, text

from maildesk import config
from maildesk.clock import as_utc
from maildesk.inbound.store import Envelope as InboundEnvelope
from maildesk.services import build

_IN_REPLY_TO = re.compile(rb"^In-Reply-To:\s*<([^>]+)>", re.IGNORECASE | re.MULTILINE)
_MESSAGE_ID = re.compile(rb"^Message-ID:\s*<([^>]+)>", re.IGNORECASE | re.MULTILINE)


# -- the relay -------------------------------------------------------------------


class Relay:
    """An SMTP sink on a free port: when each acknowledgement arrived, by what it answers."""

    def __init__(self) -> None:
        self.port = common.free_port()
        self.lock = threading.Lock()
        self.arrived: dict[str, float] = {}  # answered Message-ID -> first arrival
        self.copies: Counter[str] = Counter()  # our Message-ID -> copies received
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        now = time.time()
        raw = envelope.original_content or b""
        head = raw.split(b"\r\n\r\n", 1)[0]
        answered, ours = _IN_REPLY_TO.search(head), _MESSAGE_ID.search(head)
        with self.lock:
            if answered:
                self.arrived.setdefault(answered.group(1).decode(), now)
            if ours:
                self.copies[ours.group(1).decode()] += 1
        return "250 OK"

    def __enter__(self) -> Relay:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()


# -- the instances ---------------------------------------------------------------


def values(
    url: str, relay: str, folder: Path, smtp_port: int, web_port: int, workers: int | None = None
) -> dict[str, Any]:
    table: dict[str, Any] = {
        "support": {
            "address": common.SUPPORT,
            "name": "Example Support",
            "base_url": f"http://127.0.0.1:{web_port}",
            "language": "en",
        },
        "database": {"url": url},
        "smtp": {"host": "127.0.0.1", "port": smtp_port, "max_sessions_per_ip": 50},
        "web": {"host": "127.0.0.1", "port": web_port, "secret_key": "bench-" + "k" * 40},
        "outbound": {"url": relay},
        # One acknowledgement per new ticket, however many a sender opens.
        "limits": {"auto_replies_per_hour": 10_000_000, "auto_replies_per_hour_total": 10_000_000},
        "trust": {"verify_dkim": False},
        "metrics": {"bearer_token": common.HEALTH_TOKEN},  # /healthz's queue counts
    }
    if workers is not None:  # else serve's default: one worker process per core
        table["workers"] = {"count": workers}
    return table


def write_config(folder: Path, table: dict[str, Any]) -> Path:
    text_ = "".join(
        f"[{section}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in items.items()) + "\n"
        for section, items in table.items()
    )
    path = folder / "maildesk.toml"
    path.write_text(text_)
    return path


@dataclass
class Instance:
    folder: Path
    config: Path
    smtp_port: int
    web_port: int
    proc: subprocess.Popen[bytes] | None = None

    def health(self) -> dict[str, Any] | None:
        try:
            return common.healthz(self.web_port)
        except OSError:
            return None

    def alive(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            log = (self.folder / "maildesk.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"maildesk serve exited {self.proc.returncode}\n{log}")
        return True


def init_at_once(instances: list[Instance]) -> None:
    procs = [
        subprocess.Popen(
            [*common.maildesk_command(), "--config", str(i.config), "init"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for i in instances
    ]
    for proc in procs:
        _out, err = proc.communicate(timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"maildesk init exited {proc.returncode}: {err.decode()[-2000:]}")


@contextmanager
def serving(instances: list[Instance]) -> Iterator[None]:
    with ExitStack() as stack:
        for each in instances:
            out = stack.enter_context((each.folder / "maildesk.log").open("ab"))
            each.proc = subprocess.Popen(
                [*common.maildesk_command(), "--config", str(each.config), "serve"],
                stdout=out,
                stderr=out,
            )
            stack.callback(common.stop_process, each.proc)
        for each in instances:
            common.wait_for(lambda e=each: e.alive() and e.health(), 60, "maildesk /healthz")
        yield


def warm_up(instances: list[Instance], relay: Relay, run: str) -> None:
    """One message through each instance, acknowledged at the relay, before the clock starts:
    the workers of `serve` start after it answers /healthz, and their start is not the load."""
    date = datetime.now(UTC)
    for k, each in enumerate(instances):
        raw = common.customer_message(k, run=f"warmup-{run}", size=1024, date=date)
        with smtplib.SMTP("127.0.0.1", each.smtp_port, timeout=60) as smtp:
            smtp.sendmail(common.sender(k)[1], [common.SUPPORT], raw)
        mid = common.message_id(k, f"warmup-{run}")
        common.wait_for(lambda m=mid, e=each: e.alive() and m in relay.arrived, 120, "the warm-up")


def idle(instances: list[Instance]) -> bool:
    for each in instances:
        each.alive()
        health = each.health()
        if health is None or health["inbound_pending"] or health["outbox_pending"]:
            return False
    return True


class ConnectionWatch:
    """The most established connections to PostgreSQL's port the given processes held."""

    def __init__(self, pids: list[int], port: int) -> None:
        self.pids, self.port = {str(p) for p in pids}, port
        self.most = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        out = subprocess.run(
            ["ss", "-tnpH", "state", "established", f"( dport = :{self.port} )"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        return sum(1 for pid in re.findall(r"pid=(\d+)", out) if pid in self.pids)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.most = max(self.most, self._sample())

    def __enter__(self) -> ConnectionWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def mail(i: int, run: str, size: int, distinct: bool) -> tuple[str, bytes]:
    """(envelope sender, message) of the i-th message: from one of the 24 customers of
    `common.sender`, or with `distinct` from a customer of its own."""
    address = common.sender(i)[1]
    raw = common.customer_message(i, run=run, size=size, date=datetime.now(UTC))
    if distinct:
        own = f"m{i}.{address}"
        raw = raw.replace(f"<{address}>".encode(), f"<{own}>".encode())
        address = own
    return address, raw


def _client(
    port: int,
    indices: list[int],
    run: str,
    size: int,
    distinct: bool,
    interval: float,
    barrier: Any,
    results: Any,
) -> None:
    """One persistent SMTP session: build its messages, wait for the others, send them
    (message k no earlier than k * `interval` after the start, when pacing)."""
    mails = [mail(i, run, size, distinct) for i in indices]
    barrier.wait()
    started, finished = common.send_session(port, mails, interval)
    results.put((len(mails), started, finished))


def send_spread(ports: list[int], args: argparse.Namespace, run: str) -> ClientRun:
    """`--connections` persistent sessions, connection k to ports[k mod N]; `--rate` paces
    them to that many messages per second in total."""
    interval = args.connections / args.rate if args.rate > 0 else 0.0
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(args.connections)
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=_client,
            args=(
                ports[k % len(ports)],
                list(range(k, args.messages, args.connections)),
                run,
                args.size,
                args.distinct_senders,
                interval,
                barrier,
                results,
            ),
            daemon=True,
        )
        for k in range(args.connections)
    ]
    for proc in procs:
        proc.start()
    try:
        got = [results.get(timeout=900) for _ in procs]
        for proc in procs:
            proc.join(10)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join()
    if any(proc.exitcode != 0 for proc in procs):
        raise RuntimeError("an SMTP client failed")
    started, finished = min(s for _, s, _ in got), max(f for _, _, f in got)
    return ClientRun(sum(n for n, _, _ in got), finished - started, started, finished)


@dataclass(frozen=True)
class Figures:
    instances: int
    accepted: float
    processed: float
    queued_ms: list[float]
    relayed_ms: list[float]
    acknowledgements: int
    repeated: int
    states: dict[str, int]
    # Inbound rows claimed more than once: a failure retried (see first_error), or a
    # lease that ran out before the work was done (a worker starved of CPU).
    retried: int
    first_error: str  # the last line of one retried row's traceback
    connections: int


def figures_from(
    url: str, n: int, client: ClientRun, relay: Relay, connections: int, run: str
) -> Figures:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    """
                    SELECT m.message_id, i.received_at, i.processed_at, o.created_at
                    FROM inbound i
                    JOIN messages m ON m.inbound_id = i.id
                    LEFT JOIN outbox o ON o.ticket_id = m.ticket_id
                                      AND o.kind = 'acknowledgement'
                    WHERE m.message_id LIKE :run
                    """
                ),
                {"run": f"{run}.%"},
            ).all()
            states = {
                state: count
                for state, count in conn.execute(
                    text("SELECT state, count(*) FROM inbound GROUP BY state")
                )
            }
            retried = conn.execute(text("SELECT count(*) FROM inbound WHERE attempts > 1")).scalar()
            error = conn.execute(
                text("SELECT error FROM inbound WHERE error <> '' ORDER BY id LIMIT 1")
            ).scalar()
    finally:
        engine.dispose()
    received = [as_utc(r[1]) for r in rows]
    processed = [as_utc(r[2]) for r in rows if r[2] is not None]
    queued, relayed = [], []
    for mid, got, _, created in rows:
        if created is not None:
            queued.append((as_utc(created) - as_utc(got)).total_seconds() * 1000)
        if (at := relay.arrived.get(mid)) is not None:
            relayed.append((at - as_utc(got).timestamp()) * 1000)
    span = (max(processed) - min(received)).total_seconds()
    return Figures(
        instances=n,
        accepted=client.rate,
        processed=len(processed) / max(span, 1e-9),
        queued_ms=queued,
        relayed_ms=relayed,
        acknowledgements=sum(1 for mid in relay.arrived if mid.startswith(f"{run}.")),
        repeated=sum(c - 1 for c in relay.copies.values()),
        states=states,
        retried=int(retried or 0),
        first_error=_exception_line(error or ""),
        connections=connections,
    )


def _exception_line(trace: str) -> str:
    """The line of a traceback that names the exception (SQLAlchemy appends a link)."""
    lines = [line for line in trace.splitlines() if "Error" in line or "Exception" in line]
    return lines[-1].strip()[:300] if lines else trace.strip()[-300:]


def run_instances(n: int, args: argparse.Namespace, workdir: Path, run: str) -> Figures:
    folder = workdir / f"{n}-instances"
    folder.mkdir()
    with pgschema.fresh_schema(args.pg_url, "bench_scale") as url, Relay() as relay:
        instances = []
        for k in range(n):
            sub = folder / chr(ord("a") + k)
            sub.mkdir()
            smtp_port, web_port = common.free_port(), common.free_port()
            table = values(url, relay.url, sub, smtp_port, web_port, args.workers)
            instances.append(Instance(sub, write_config(sub, table), smtp_port, web_port))
        init_at_once(instances)
        with serving(instances):
            pids = [i.proc.pid for i in instances if i.proc is not None]
            print(f"-- {n} instance(s), pids {pids}, logs in {folder}", file=sys.stderr)
            warm_up(instances, relay, run)
            with ConnectionWatch(pids, 5432) as watch:
                client = send_spread([i.smtp_port for i in instances], args, run)
                print(f"   accepted {client.rate:.0f} msg/s", file=sys.stderr, flush=True)
                common.wait_for(lambda: idle(instances), 900, "the queues to empty", 0.2)
                # The last acknowledgements may still be on the wire to the relay.
                common.wait_for(
                    lambda: len(relay.arrived) >= args.messages + n, 30, "the last acknowledgements"
                )
        return figures_from(url, n, client, relay, watch.most, run)


# -- statements per message ---------------------------------------------------------


@dataclass
class Tally:
    statements: int = 0  # an executemany counts once per row
    pipelined: int = 0  # rows of an executemany after its first: no round trip of their own
    begins: int = 0
    ends: int = 0  # commits and rollbacks
    pings: int = 0  # the pool's pre-ping at a checkout (pool_pre_ping)

    @property
    def round_trips(self) -> int:
        return self.statements - self.pipelined + self.begins + self.ends + self.pings


@dataclass(frozen=True)
class Volume:
    stored: int  # bytes of the schema's tables, indexes and TOAST after the run
    wal: int  # bytes of WAL the cluster wrote meanwhile (anyone's: an upper bound)


def count_round_trips(
    args: argparse.Namespace, workdir: Path, run: str
) -> tuple[dict[str, Tally], Volume]:
    """What storing, processing and sending `--count` messages cost, per message."""
    folder = workdir / "count"
    folder.mkdir()
    with pgschema.fresh_schema(args.pg_url, "bench_count") as url, Relay() as relay:
        table = values(url, relay.url, folder, common.free_port(), common.free_port())
        settings = config.from_mapping(table, base_dir=folder)
        services = build(settings)
        services.prepare()
        engine = services.db.engine
        phases = {name: Tally() for name in ("accept", "process", "send")}
        current: list[Tally] = [Tally()]

        # Counted at the driver: statements SQLAlchemy runs, hot statements
        # (maildesk/hotsql.py) and the raw bytes' inserts, reads and COPYs alike. The
        # pool's pre-ping (SELECT 1 at a checkout) is a round trip, not our statement.
        class Counting(psycopg.Cursor):  # type: ignore[type-arg]
            def execute(self, query: Any, *args: Any, **kwargs: Any) -> Any:
                if query == engine.dialect._dialect_specific_select_one:
                    current[0].pings += 1
                else:
                    current[0].statements += 1
                return super().execute(query, *args, **kwargs)

            def executemany(self, query: Any, params_seq: Any, **kwargs: Any) -> Any:
                params_seq = list(params_seq)
                # One statement per row; psycopg sends them in one pipeline: one trip.
                current[0].statements += len(params_seq)
                current[0].pipelined += max(len(params_seq) - 1, 0)
                return super().executemany(query, params_seq, **kwargs)

            def copy(self, *args: Any, **kwargs: Any) -> Any:
                current[0].statements += 1
                return super().copy(*args, **kwargs)

        engine.dispose()  # every connection from now on is made, and counted, here

        @event.listens_for(engine, "connect")
        def counting(dbapi_connection: Any, *_: Any) -> None:
            dbapi_connection.cursor_factory = Counting

        @event.listens_for(engine, "begin")
        def begin(*_: Any) -> None:
            current[0].begins += 1

        @event.listens_for(engine, "commit")
        def commit(*_: Any) -> None:
            current[0].ends += 1

        @event.listens_for(engine, "rollback")
        def rollback(*_: Any) -> None:
            current[0].ends += 1

        date = datetime.now(UTC)
        mails = [
            (common.sender(i)[1], common.customer_message(i, run=run, size=args.size, date=date))
            for i in range(args.count)
        ]
        with engine.connect() as conn:
            wal_before = conn.exec_driver_sql("SELECT pg_current_wal_lsn()").scalar()
            stored_before = conn.exec_driver_sql(STORED).scalar()
        current[0] = phases["accept"]
        for mail_from, raw in mails:
            services.store.put(raw, InboundEnvelope("smtp", mail_from, (common.SUPPORT,)))
        current[0] = phases["process"]
        processed = services.drain_inbound()
        current[0] = phases["send"]
        sender = services.sender()
        while sender.send_due():
            pass
        sender.transport.close()
        current[0] = Tally()
        with engine.connect() as conn:
            wal = conn.exec_driver_sql(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %(before)s::pg_lsn)",
                {"before": str(wal_before)},
            ).scalar()
            stored = conn.exec_driver_sql(STORED).scalar()
        services.db.dispose()
        if processed != args.count:
            raise RuntimeError(f"processed {processed} of {args.count}")
    return phases, Volume(int(stored or 0) - int(stored_before or 0), int(wal or 0))


# The size of every table of the schema in use, with its indexes and TOAST.
STORED = (
    "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c"
    " JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE n.nspname = current_schema() AND c.relkind = 'r'"
)


# -- main ---------------------------------------------------------------------------


def ms(values_: list[float], pct: float) -> str:
    return f"{common.percentile(values_, pct):.0f}" if values_ else "-"


def run(args: argparse.Namespace, workdir: Path) -> None:
    run_id = f"scale{os.getpid()}x{int(time.time())}"
    results = [run_instances(int(n), args, workdir, run_id) for n in args.instances.split(",") if n]
    phases, volume = count_round_trips(args, workdir, run_id) if args.count else ({}, None)
    print()
    print(
        f"scale-out on PostgreSQL: {args.messages} messages of ~{args.size} bytes, "
        f"{args.connections} persistent SMTP connections spread over the instances, "
        + (f"paced to {args.rate:g} msg/s, " if args.rate else "unpaced, ")
        + ("each from its own customer" if args.distinct_senders else "from 24 customers")
    )
    print(f"machine: {common.machine(workdir)}")
    print(f"{args.cpu_watch.note()}; maildesk sources {common.code_fingerprint()}")
    print()
    rows = [
        [
            str(f.instances) + (f" × {args.workers} worker(s)" if args.workers is not None else ""),
            f"{f.accepted:.0f}",
            f"{f.processed:.0f}",
            f"{ms(f.queued_ms, 50)} / {ms(f.queued_ms, 99)}",
            f"{ms(f.relayed_ms, 50)} / {ms(f.relayed_ms, 99)}",
            f"{f.acknowledgements} ({f.repeated} repeated)",
            ", ".join(f"{k} {v}" for k, v in sorted(f.states.items())),
            str(f.retried),
            str(f.connections),
        ]
        for f in results
    ]
    headers = [
        "instances",
        "accepted msg/s",
        "processed msg/s",
        "250 → ack queued ms p50 / p99",
        "250 → ack at relay ms p50 / p99",
        "acks at relay",
        "inbound states",
        "claimed again",
        "PG connections (most)",
    ]
    print(common.table(headers, rows))
    for f in results:
        if f.first_error:
            print(f"{f.instances} instance(s), why a row was retried: {f.first_error}")
    if phases:
        print()
        print(f"database work per message ({args.count} messages, in-process, PostgreSQL):")
        tally_rows = [
            [
                name,
                f"{t.statements / args.count:.1f}",
                f"{t.begins / args.count:.2f}",
                f"{t.round_trips / args.count:.1f}",
            ]
            for name, t in phases.items()
        ]
        total = Tally(
            *(sum(getattr(t, f) for t in phases.values()) for f in Tally.__dataclass_fields__)
        )
        tally_rows.append(
            [
                "all",
                f"{total.statements / args.count:.1f}",
                f"{total.begins / args.count:.2f}",
                f"{total.round_trips / args.count:.1f}",
            ]
        )
        print(
            common.table(
                ["phase", "statements", "transactions (commits)", "round trips"], tally_rows
            )
        )
        pings = total.pings / args.count
        print(f"of the round trips, the pool's pre-pings: {pings:.1f} per message")
    if volume:
        print(
            f"stored per message (tables, indexes, TOAST): {volume.stored / args.count / 1024:.1f}"
            f" KiB; WAL written per message: {volume.wal / args.count / 1024:.1f} KiB"
            " (the whole cluster's WAL over the run, other clients' writes included)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--instances", default="1,2,3")
    parser.add_argument("--messages", type=int, default=1500)
    parser.add_argument("--connections", type=int, default=6)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument(
        "--rate", type=float, default=0.0, help="offered msg/s in total (default: unpaced)"
    )
    parser.add_argument(
        "--distinct-senders",
        action="store_true",
        help="each message from its own customer (default: 24 customers write them all)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="[workers] count of each instance (default: cores)",
    )
    parser.add_argument("--count", type=int, default=300, help="messages to count statements of")
    parser.add_argument("--pg-url", default=pgschema.DEFAULT_URL)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    args: Any = parser.parse_args()
    args.profile = None
    common.run_in_workdir("scaleout", "scaleout", args, run)


if __name__ == "__main__":
    main()
