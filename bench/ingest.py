"""SMTP ingest: how fast maildesk says 250, and how soon the acknowledgement is queued.

Three servers run one after the other on free loopback ports, each loaded by the
same client: `--connections` processes, each one persistent smtplib session that
sends its share of `--messages` distinct ~`--size`-byte customer messages.

1. bare aiosmtpd whose handler stores nothing (the ceiling for Python SMTP here);
2. bare aiosmtpd that writes each message to its own file and fsyncs it (in the
   default executor, as maildesk stores) before the 250;
   (optional, `--only ...,sqlite,...`: bare aiosmtpd that inserts a row per message
   into SQLite, WAL, synchronous=FULL, stdlib sqlite3 in the default executor: the
   storage maildesk uses, without SQLAlchemy or the pipeline around it);
3. `maildesk serve` as a subprocess on a temp config (SQLite in a temp dir, Maildir
   outbox, web on a free port), after `maildesk init`.

Figures:
- accepted msg/s, client side: N / (first connect .. last 250), for each server;
- each server's own CPU (user and system, from /proc) per accepted message while
  the client ran: for maildesk, serve's alone (not its workers);
- maildesk only, from its database after the run: processed msg/s
  (N / (first inbound.received_at .. last inbound.processed_at)), and the latency
  from acceptance to acknowledgement queued, outbox.created_at - inbound.received_at
  (inbound -> messages.inbound_id -> ticket -> its acknowledgement outbox row).
  `created_at` is stamped while the row is built; the batch commits a little later,
  so the latency to the acknowledgement written to the outbox Maildir
  (outbox.sent_at - received_at) is printed too, as an upper bound.

Run from the project root with the project's virtualenv:

    .venv/bin/python bench/ingest.py [--messages 2000] [--connections 4] [--size 4096]

Unpaced, the processor can only keep up by slowing the 250s down, so the latency
figure mixes both; `--rate R` paces the client to R msg/s in total, to measure the
acknowledgement latency at an offered load below capacity. `--sign` DKIM-signs
maildesk's mail, as a production desk's is.
`--only maildesk` skips the bare servers; `--profile out.txt` records the daemon
with py-spy (collapsed stacks; py-spy on PATH or in $PY_SPY) from the first
connection to the last 250, sampling only the thread that holds the GIL: where
serve's one Python core goes while it accepts (not its workers).
Nothing is asserted: the script prints figures and how they compare to the targets.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import multiprocessing as mp
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import common
from aiosmtpd.smtp import SMTP, Envelope, Session
from locktrace import sitecustomize as locktrace

KINDS = ("null", "fsync", "sqlite", "maildesk")
DEFAULT_KINDS = ("null", "fsync", "maildesk")
LABELS = {
    "null": "aiosmtpd, handler stores nothing",
    "fsync": "aiosmtpd, file + fsync per message",
    "sqlite": "aiosmtpd, sqlite3 row per message (WAL, FULL)",
    "maildesk": "maildesk serve (SQLite WAL, synchronous=FULL)",
}
# The same aiosmtpd options maildesk's listener uses (inbound/smtp.py).
SMTP_OPTIONS: dict[str, Any] = {
    "data_size_limit": 25 * 1024 * 1024,
    "enable_SMTPUTF8": True,
    "hostname": "bench.localhost",
    "ident": "bench",
}

# -- the client ---------------------------------------------------------------


@dataclass(frozen=True)
class ClientRun:
    messages: int
    seconds: float  # first connect .. last 250
    started: float  # time.time() of the first connect
    finished: float  # time.time() of the last 250

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


def _client(
    port: int,
    indices: list[int],
    run: str,
    size: int,
    interval: float,
    barrier: Barrier,
    results: Any,
) -> None:
    """One connection: build its messages, wait for the others, send them in one session.

    With `interval` > 0, message k is sent no earlier than k * interval after the start.
    """
    date = datetime.now(UTC)
    mails = [
        (common.sender(i)[1], common.customer_message(i, run=run, size=size, date=date))
        for i in indices
    ]
    barrier.wait()
    started, finished = common.send_session(port, mails, interval)
    results.put((len(mails), started, finished))


def load(port: int, messages: int, connections: int, size: int, run: str, rate: float) -> ClientRun:
    """Send `messages` over `connections` concurrent sessions; times the whole load.

    `rate` > 0 paces the client to that many messages per second in total.
    """
    interval = connections / rate if rate > 0 else 0.0
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(connections)
    results = ctx.Queue()
    shares = [list(range(k, messages, connections)) for k in range(connections)]
    procs = [
        ctx.Process(
            target=_client, args=(port, share, run, size, interval, barrier, results), daemon=True
        )
        for share in shares
    ]
    for proc in procs:
        proc.start()
    try:
        got = []
        for _ in procs:
            got.append(results.get(timeout=600))
        for proc in procs:
            proc.join(10)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join()
    if any(proc.exitcode != 0 for proc in procs):
        raise RuntimeError("an SMTP client failed")
    sent = sum(n for n, _, _ in got)
    started = min(s for _, s, _ in got)
    finished = max(f for _, _, f in got)
    return ClientRun(sent, finished - started, started, finished)


# -- the bare servers -----------------------------------------------------------


class NullHandler:
    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "250 2.0.0 Ok"


class FsyncHandler:
    """Each message into its own new file, fsynced before the 250 (no folder fsync)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.count = 0

    def _write(self, name: str, raw: bytes) -> None:
        fd = os.open(self.folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, raw)
            os.fsync(fd)
        finally:
            os.close(fd)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.count += 1
        name = f"{self.count}.eml"
        raw = envelope.original_content or b""
        await asyncio.get_running_loop().run_in_executor(None, self._write, name, raw)
        return f"250 2.0.0 Ok: queued as {self.count}"


class SqliteHandler:
    """One row per message in SQLite (WAL, synchronous=FULL), one transaction each, with
    the stdlib driver and no ORM: the storage maildesk uses, without maildesk around it."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "spool.db"
        self.local = threading.local()
        with self._connect() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS inbound (id INTEGER PRIMARY KEY, received_at TEXT,"
                " mail_from TEXT, rcpt_to TEXT, raw BLOB, size INTEGER, digest TEXT)"
            )

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        conn.execute("PRAGMA synchronous=FULL")
        return conn

    def _insert(self, envelope: Envelope, raw: bytes) -> int:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = self._connect()
        conn.execute("BEGIN IMMEDIATE")
        try:
            cursor = conn.execute(
                "INSERT INTO inbound (received_at, mail_from, rcpt_to, raw, size, digest)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    datetime.now(UTC).isoformat(),
                    envelope.mail_from,
                    json.dumps(envelope.rcpt_tos),
                    raw,
                    len(raw),
                    hashlib.sha256(raw).hexdigest(),
                ),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return int(cursor.lastrowid or 0)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        loop = asyncio.get_running_loop()
        spool_id = await loop.run_in_executor(None, self._insert, envelope, raw)
        return f"250 2.0.0 Ok: queued as {spool_id}"


def _bare_server(kind: str, port: int, folder: str) -> None:
    """Runs in a child process until SIGTERM."""
    handlers = {"null": NullHandler, "fsync": FsyncHandler, "sqlite": SqliteHandler}
    handler: Any = handlers[kind]() if kind == "null" else handlers[kind](Path(folder))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        server = await loop.create_server(
            lambda: SMTP(handler, **SMTP_OPTIONS), host="127.0.0.1", port=port
        )
        await stop.wait()
        server.close()

    asyncio.run(main())


@contextmanager
def bare_server(kind: str, port: int, folder: Path) -> Iterator[int]:
    """The server running in a child process; yields its pid."""
    proc = mp.get_context("fork").Process(target=_bare_server, args=(kind, port, str(folder)))
    proc.start()
    try:
        common.wait_for(lambda: listening_or_dead(port, proc), 10, f"{kind} server")
        if not proc.is_alive():
            raise RuntimeError(f"{kind} server died")
        assert proc.pid is not None
        yield proc.pid
    finally:
        proc.terminate()
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()


def listening_or_dead(port: int, proc: Any) -> bool:
    return not proc.is_alive() or common.listening(port)


# -- maildesk ---------------------------------------------------------------------


@dataclass(frozen=True)
class MaildeskFigures:
    processed_rate: float
    processed_after_last_250: float  # seconds
    ack_median_ms: float
    ack_p95_ms: float
    ack_p99_ms: float
    sent_median_ms: float
    sent_p95_ms: float
    states: dict[str, int]
    acknowledgements: int
    serve_cpu: ServerCpu  # serve's own, while SMTP was loaded (not its workers)


def healthy(web_port: int, proc: subprocess.Popen[bytes]) -> bool:
    if proc.poll() is not None:
        raise RuntimeError(f"maildesk serve exited {proc.returncode}")
    try:
        return common.healthz(web_port).get("status") == "ok"
    except OSError:
        return False


@contextmanager
def maildesk_daemon(
    folder: Path,
    smtp_port: int,
    web_port: int,
    log: Path,
    workers: dict[str, Any] | None = None,
    sign: bool = False,
    lock_trace: Path | None = None,
    extra: dict[str, dict[str, Any]] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    config = common.write_config(folder, smtp_port, web_port, workers, sign, extra)
    common.run_maildesk(config, "init", log=log)
    env = dict(os.environ)
    if lock_trace is not None:  # serve and its workers load bench/locktrace/sitecustomize.py
        lock_trace.mkdir()
        tracer = str(Path(__file__).resolve().parent / "locktrace")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (tracer, env.get("PYTHONPATH"))))
        env["MAILDESK_LOCK_TRACE"] = str(lock_trace)
    with ExitStack() as stack:
        out = stack.enter_context(log.open("ab"))
        proc = subprocess.Popen(
            [*common.maildesk_command(), "--config", str(config), "serve"],
            stdout=out,
            stderr=out,
            env=env,
        )
        stack.callback(common.stop_process, proc)
        try:
            common.wait_for(lambda: healthy(web_port, proc), 30, "maildesk /healthz")
            common.wait_for(lambda: common.listening(smtp_port), 10, "maildesk SMTP")
            # Serve answers before its workers have started (a second or two): mail sent
            # meanwhile waits for them, which is start-up, not the steady state measured.
            count = (workers or {}).get("count", os.cpu_count() or 1)
            common.wait_for(lambda: workers_ready(log) >= count, 60, "maildesk's workers")
        except Exception:
            sys.stderr.write(log.read_text(errors="replace")[-3000:])
            raise
        yield proc


def workers_ready(log: Path) -> int:
    """Worker processes that logged that they are ready."""
    return log.read_text(errors="replace").count("ready: processing and sending")


def start_py_spy(pid: int, out: Path, idle: bool = False) -> subprocess.Popen[bytes]:
    """py-spy on serve: the thread holding the GIL, or (`idle`) every thread, waits too."""
    binary = os.environ.get("PY_SPY") or shutil.which("py-spy")
    if not binary:
        raise RuntimeError("--profile needs py-spy on PATH or in $PY_SPY")
    spy = subprocess.Popen(
        [binary, "record", "--pid", str(pid), "--format", "raw", "--rate", "250"]
        + ["--threads", "--idle" if idle else "--gil", "--nonblocking", "-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)  # let it attach
    return spy


def stop_py_spy(spy: subprocess.Popen[bytes]) -> None:
    if spy.poll() is None:
        spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            spy.wait(30)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait()


def wait_processed(web_port: int, messages: int, proc: subprocess.Popen[bytes]) -> None:
    def done() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"maildesk serve exited {proc.returncode}")
        counts = common.healthz(web_port)
        return counts.get("inbound_pending") == 0 and counts.get("outbox_pending") == 0

    common.wait_for(done, 120 + messages / 20, "inbound and outbox to drain", interval=0.05)


def cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU time (user, system) a process used so far, its children not included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    hz = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / hz, int(fields[12]) / hz


@dataclass(frozen=True)
class ServerCpu:
    """A server's own CPU per accepted message while the client ran, in ms."""

    user_ms: float
    system_ms: float

    @property
    def total_ms(self) -> float:
        return self.user_ms + self.system_ms

    def __str__(self) -> str:
        return f"{self.total_ms:.2f} ms ({self.user_ms:.2f} user, {self.system_ms:.2f} system)"


@contextmanager
def cpu_used(pid: int, messages: int) -> Iterator[list[ServerCpu]]:
    """Measures `pid`'s CPU over the block; the figure is in the list after it."""
    found: list[ServerCpu] = []
    user, system = cpu_seconds(pid)
    yield found
    user_after, system_after = cpu_seconds(pid)
    per = 1000 / messages
    found.append(ServerCpu((user_after - user) * per, (system_after - system) * per))


def maildesk_figures(db: Path, client: ClientRun, serve_cpu: ServerCpu) -> MaildeskFigures:
    rows = common.db_rows(
        db,
        """
        SELECT i.received_at, i.processed_at, o.created_at, o.sent_at
        FROM inbound i
        LEFT JOIN messages m ON m.inbound_id = i.id
        LEFT JOIN outbox o ON o.ticket_id = m.ticket_id AND o.kind = 'acknowledgement'
        ORDER BY i.id
        """,
    )
    states = dict(common.db_rows(db, "SELECT state, count(*) FROM inbound GROUP BY state"))
    received = [common.timestamp(r[0]) for r in rows]
    processed = [common.timestamp(r[1]) for r in rows]
    first = min(t for t in received if t)
    last = max(t for t in processed if t)
    queued: list[float] = []
    sent: list[float] = []
    for got, _, created, sent_at in rows:
        got_at, created_at, sent_at_t = map(common.timestamp, (got, created, sent_at))
        if got_at and created_at:
            queued.append(common.seconds(created_at - got_at) * 1000)
        if got_at and sent_at_t:
            sent.append(common.seconds(sent_at_t - got_at) * 1000)
    last_250 = datetime.fromtimestamp(client.finished, UTC)
    return MaildeskFigures(
        processed_rate=len(rows) / max(common.seconds(last - first), 1e-9),
        processed_after_last_250=common.seconds(last - last_250),
        ack_median_ms=common.median(queued) if queued else float("nan"),
        ack_p95_ms=common.percentile(queued, 95) if queued else float("nan"),
        ack_p99_ms=common.percentile(queued, 99) if queued else float("nan"),
        sent_median_ms=common.median(sent) if sent else float("nan"),
        sent_p95_ms=common.percentile(sent, 95) if sent else float("nan"),
        states=states,
        acknowledgements=len(queued),
        serve_cpu=serve_cpu,
    )


# -- main ---------------------------------------------------------------------------


def run(args: argparse.Namespace, workdir: Path) -> None:
    kinds = [k for k in KINDS if k in args.only.split(",")]
    run_id = f"bench{os.getpid()}x{int(time.time())}"
    accepted: dict[str, ClientRun] = {}
    cpu: dict[str, ServerCpu] = {}
    figures: MaildeskFigures | None = None
    locks: str | None = None
    for kind in kinds:
        folder = workdir / kind
        folder.mkdir()
        print(f"-- {LABELS[kind]}", file=sys.stderr, flush=True)
        if kind == "maildesk":
            smtp_port, web_port = common.free_port(), common.free_port()
            log = folder / "maildesk.log"
            workers: dict[str, Any] = {}
            if args.workers_nice is not None:
                workers["nice"] = args.workers_nice
            if args.workers is not None:
                workers["count"] = args.workers
            trace = folder / "locktrace" if args.lock_trace else None
            with maildesk_daemon(
                folder, smtp_port, web_port, log, workers, args.sign, trace
            ) as proc:
                print(f"   daemon pid {proc.pid}, log {log}", file=sys.stderr, flush=True)
                # Profiled while SMTP is loaded only: the drain after it would add
                # serve's idle polling of /healthz by this script.
                spy = None
                if args.profile:
                    spy = start_py_spy(proc.pid, args.profile, args.profile_idle)
                try:
                    with cpu_used(proc.pid, args.messages) as measured:
                        accepted[kind] = load(
                            smtp_port, args.messages, args.connections, args.size, run_id, args.rate
                        )
                finally:
                    if spy is not None:
                        stop_py_spy(spy)
                cpu[kind] = measured[0]
                print(f"   accepted {accepted[kind].rate:.0f} msg/s", file=sys.stderr, flush=True)
                wait_processed(web_port, args.messages, proc)
            figures = maildesk_figures(folder / "maildesk.db", accepted[kind], cpu[kind])
            if trace is not None:  # written by serve and its workers as they stopped
                locks = locktrace.summarize(trace, args.messages)
        else:
            port = common.free_port()
            with bare_server(kind, port, folder) as pid, cpu_used(pid, args.messages) as measured:
                accepted[kind] = load(
                    port, args.messages, args.connections, args.size, run_id, args.rate
                )
            cpu[kind] = measured[0]
            print(f"   accepted {accepted[kind].rate:.0f} msg/s", file=sys.stderr, flush=True)
            if kind in ("fsync", "sqlite"):
                stored = (
                    len(list(folder.glob("*.eml")))
                    if kind == "fsync"
                    else common.db_rows(folder / "spool.db", "SELECT count(*) FROM inbound")[0][0]
                )
                if stored != args.messages:
                    raise RuntimeError(f"{kind} server stored {stored} of {args.messages}")
    report(args, workdir, accepted, cpu, figures, locks)


def report(
    args: argparse.Namespace,
    workdir: Path,
    accepted: dict[str, ClientRun],
    cpu: dict[str, ServerCpu],
    figures: MaildeskFigures | None,
    locks: str | None = None,
) -> None:
    bare = accepted.get("null")
    rows = []
    for kind, client in accepted.items():
        ratio = f"{client.rate / bare.rate:.2f}" if bare else "-"
        row = [LABELS[kind], f"{client.rate:.0f}", ratio, str(cpu[kind]), "", "", ""]
        if kind == "maildesk" and figures:
            row[4:] = [
                f"{figures.processed_rate:.0f}",
                f"{figures.ack_median_ms:.0f} / {figures.ack_p95_ms:.0f}",
                f"{figures.sent_median_ms:.0f} / {figures.sent_p95_ms:.0f}",
            ]
        rows.append(row)
    print()
    paced = f", client paced to {args.rate:g} msg/s" if args.rate else ""
    if args.workers_nice is not None:
        paced += f", [workers] nice = {args.workers_nice}"
    if args.workers is not None:
        paced += f", [workers] count = {args.workers}"
    if args.sign:
        paced += ", maildesk's mail DKIM-signed"
    print(
        f"SMTP ingest: {args.messages} messages of ~{args.size} bytes, "
        f"{args.connections} persistent connections{paced}"
    )
    print(f"machine: {common.machine(workdir)}")
    print(f"{args.cpu_watch.note()}; maildesk sources {common.code_fingerprint()}")
    print()
    print(
        common.table(
            [
                "server",
                "accepted msg/s",
                "vs bare",
                "server CPU per accepted message",
                "processed msg/s",
                "ack queued ms (median / p95)",
                "ack in outbox Maildir ms (median / p95)",
            ],
            rows,
        )
    )
    if figures:
        print()
        print(
            f"maildesk: inbound states {figures.states}, {figures.acknowledgements} "
            f"acknowledgements queued; last row processed "
            f"{figures.processed_after_last_250 * 1000:.0f} ms after the last 250; "
            f"serve used {figures.serve_cpu} of CPU per accepted message "
            "(its workers not included)"
        )
    if locks:
        print()
        print("SQLite's write locks (each file has one), per message; held - CPU: waits inside")
        print(locks)
    print()
    print("targets:")
    if args.rate:
        print(f"  (paced run: accepted and processed are the offered {args.rate:g} msg/s)")
    md = accepted.get("maildesk")
    if md and bare and not args.rate:
        share = md.rate / bare.rate
        print(f"  accepted >= 60% of bare: {share:.0%} -> {common.verdict(share >= 0.6)}")
    if figures and not args.rate:
        ok = figures.processed_rate >= 500
        print(f"  processed >= 500 msg/s: {figures.processed_rate:.0f} -> {common.verdict(ok)}")
    if figures:
        ok = figures.ack_median_ms <= 100
        print(
            f"  median ack queued <= 100 ms: {figures.ack_median_ms:.0f} ms -> {common.verdict(ok)}"
        )
        ok = figures.ack_p99_ms < 1000
        print(f"  p99 ack queued < 1 s: {figures.ack_p99_ms:.0f} ms -> {common.verdict(ok)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--size", type=int, default=4096, help="approximate bytes per message")
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="offered load in msg/s over all connections (default: as fast as accepted)",
    )
    parser.add_argument(
        "--only",
        default=",".join(DEFAULT_KINDS),
        help=f"servers to run, a comma list of {','.join(KINDS)} (default: without sqlite)",
    )
    parser.add_argument("--profile", type=Path, help="py-spy collapsed stacks of the daemon")
    parser.add_argument(
        "--profile-idle",
        action="store_true",
        help="with --profile: sample every thread of serve, waiting ones too (where a 250 waits)",
    )
    parser.add_argument(
        "--workers-nice", type=int, help="[workers] nice of the daemon (default: its default)"
    )
    parser.add_argument(
        "--workers", type=int, help="[workers] count of the daemon (default: the cores)"
    )
    parser.add_argument("--sign", action="store_true", help="maildesk's mail DKIM-signed")
    parser.add_argument(
        "--lock-trace",
        action="store_true",
        help="who held SQLite's write lock, per message (bench/locktrace/sitecustomize.py)",
    )
    parser.add_argument("--workdir", type=Path, help="parent of the temp dir (default: $TMPDIR)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = parser.parse_args()
    common.run_in_workdir("ingest", "ingest", args, run)


if __name__ == "__main__":
    main()
