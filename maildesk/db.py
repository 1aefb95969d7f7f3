"""Engines and transactions: the one place that knows SQLite from PostgreSQL.

SQLite runs in WAL mode with `synchronous=FULL`: every commit is fsynced, which
is what lets a 250 promise that the bytes survive a power cut. Write
transactions start with BEGIN IMMEDIATE so two writers queue instead of failing
when a reader tries to upgrade to a writer; reads (`reading()`) start a deferred
transaction and neither take nor wait for the write lock.

Who writes next (SQLite has one writer). Acceptance must not wait behind
processing, and processing runs in other processes (`maildesk worker`), so the
order is kept in two layers:
- inside one process, `_WriterQueue`: threads queue on a condition, the group
  commit behind waiting 250s ("urgent") first;
- across processes, `_FileGate`: two `flock` files next to the database. Every
  writer takes `<db>.writer` for its transaction. A normal writer (processing,
  a claim, a lease renewal) first passes `<db>.gate` (a shared lock taken and
  dropped at once); the urgent group commit holds the gate exclusively while it
  waits for `<db>.writer`. So once a 250 waits, no new processing transaction
  queues anywhere: the 250 waits for the ones already queued (at most one per
  process, `_WriterQueue` lets one thread at a time to the files), and
  `urgent_waiting()` (the gate is held) tells each of them to commit after the
  message it is on. One that gets the writer lock while the gate is held hands
  it over (once per turn), so a 250 waits for the one transaction under way.
  The gate is let go once the commit has the writer lock, so processing queues
  behind it and races the next group commit: a flood of 250s does not starve
  processing.
flock was chosen over SQLite's busy handler alone (which polls in sleeps of up
to 100 ms and has no notion of priority) and over a dedicated writer process
(one more hop and copy for every write): two small files give the priority,
waiters see a freed lock within about 2 ms, and the kernel drops the locks of
a process that dies.
PostgreSQL needs none of this: it locks rows, not the database.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, make_url
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry, PoolResetState
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from maildesk import logs

log = logging.getLogger("maildesk.db")

READ_ONLY = "maildesk_read_only"
# As SQLite's busy_timeout below: how long a writer waits for its turn before failing.
LOCK_TIMEOUT_SECONDS = 30.0


# libpq's TCP settings for PostgreSQL, where the URL sets none of its own. A server
# that vanishes without a word (its machine lost, a failover to another address, a cut
# network) leaves each statement in flight, and each pre-ping, waiting for the kernel's
# retransmissions to give up: about 15 minutes, while SMTP answers 451 (and a new
# connection waits out the SYN's retries, about 2 minutes). With these, a statement whose
# bytes go unacknowledged fails after 20 s, an idle connection to nowhere is found after
# 10 + 3 × 5 s, a connection that cannot be made fails after 10 s, and the pool then
# connects afresh.
POSTGRES_TCP: dict[str, int] = {
    "connect_timeout": 10,  # seconds
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 20_000,  # milliseconds
}


def make_engine(url: str, **kwargs: Any) -> Engine:
    # A database error's text leaves out the statement's parameters: they are mail
    # (addresses, bodies, the Message-IDs of our mail, a secret of its ticket) and
    # password hashes, and the text goes to the log, an inbound row's error and the
    # quarantine's reason. The statement itself stays.
    kwargs.setdefault("hide_parameters", True)
    if url.startswith("sqlite"):
        return _sqlite_engine(url, **kwargs)
    parsed = make_url(url)
    if parsed.get_driver_name() in ("psycopg", "psycopg2"):  # both libpq
        given = kwargs.pop("connect_args", {})
        defaults = {k: v for k, v in POSTGRES_TCP.items() if k not in parsed.query}
        kwargs["connect_args"] = {**defaults, **given}
    # The pool's rollback of a returned connection is ours (`_reset_postgresql`).
    engine = create_engine(url, pool_pre_ping=True, pool_reset_on_return=None, **kwargs)
    event.listen(engine, "reset", _reset_postgresql)
    return engine


def _reset_postgresql(
    dbapi_connection: Any, record: ConnectionPoolEntry, state: PoolResetState
) -> None:
    """What SQLAlchemy's pool does to a connection given back (roll back whatever it
    began), but a connection that cannot be rolled back is dropped with one line.

    When PostgreSQL restarts or a backend is terminated, a connection whose statement
    failed on the driver's own cursor (the raw bytes are read and written there,
    `inbound/rawbytes.py`) reaches the pool without SQLAlchemy knowing it is dead. The
    pool's rollback then fails, and it logged an ERROR with two tracebacks for each such
    connection, beside the failure its user had reported already. The connection is
    dropped either way; the next checkout connects afresh.
    """
    if state.transaction_was_reset or not state.asyncio_safe:
        return
    try:
        dbapi_connection.rollback()
    except Exception as exc:
        first_line = (str(exc).strip().splitlines() or [""])[0]
        log.warning(
            "a database connection was lost (%s: %s); dropped, the next use connects afresh",
            type(exc).__name__,
            first_line,
        )
        record.invalidate(exc)


def _sqlite_engine(url: str, **kwargs: Any) -> Engine:
    path = url.split("///", 1)[1] if "///" in url else ""
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs)

    if path and path != ":memory:":

        @event.listens_for(engine, "do_connect")
        def _private(*_args: Any) -> None:
            # Right before SQLite would create the file itself (with the umask's mode).
            private_file(Path(path))

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let us issue BEGIN ourselves (the driver's implicit BEGIN is deferred).
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # A reader's deferred BEGIN reads a snapshot without taking the write lock.
        if conn.get_execution_options().get(READ_ONLY):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def private_file(path: Path) -> None:
    """Create the database file 0600 whatever the umask (it holds raw mail, password hashes
    and live links), or narrow an existing one that others may read to 0600. SQLite gives
    its -wal and -shm files the mode of the database file."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    for file in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-journal")):
        try:
            mode = file.stat().st_mode & 0o777
            if mode & 0o037:  # more than 0640: group write or anything for others
                file.chmod(0o600)
        except (FileNotFoundError, PermissionError):  # gone, or not ours to change
            continue


class _FileGate:
    """The cross-process order of SQLite writers: `<db>.gate` and `<db>.writer` (see above).

    Only the thread holding this process's `_WriterQueue` turn calls `enter`/`leave`,
    so one pair of file descriptors per process is enough. `urgent_waiting` probes
    the gate on a descriptor of its own (flock conflicts between descriptors, even in
    one process).
    """

    def __init__(self, database: Path) -> None:
        self._gate = self._open(Path(f"{database}.gate"))
        self._writer = self._open(Path(f"{database}.writer"))
        self._probe = self._open(Path(f"{database}.gate"))

    @staticmethod
    def _open(path: Path) -> int:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def enter(self, urgent: bool) -> None:
        deadline = time.monotonic() + LOCK_TIMEOUT_SECONDS
        if urgent:
            # Held while waiting: no normal writer starts queueing meanwhile.
            _flock(self._gate, fcntl.LOCK_EX, deadline)
            try:
                # Polled more often: the whole group waits for this one.
                _flock(self._writer, fcntl.LOCK_EX, deadline, URGENT_PAUSE)
            finally:
                # Not held while writing: processing queues behind this commit and
                # races the next one, so a flood of 250s never starves it.
                fcntl.flock(self._gate, fcntl.LOCK_UN)
        else:
            yielded = False
            while True:
                # Wait out an urgent commit that waits, then queue for the writer.
                _flock(self._gate, fcntl.LOCK_SH, deadline)
                fcntl.flock(self._gate, fcntl.LOCK_UN)
                _flock(self._writer, fcntl.LOCK_EX, deadline)
                if yielded or not self.urgent_waiting():
                    return
                # A group commit began waiting while we queued: it goes first, so a
                # 250 waits for the one transaction under way, not also for every
                # process that queued before it. Once per turn: processing still
                # gets the lock between two commits under a flood.
                fcntl.flock(self._writer, fcntl.LOCK_UN)
                yielded = True

    def leave(self) -> None:
        fcntl.flock(self._writer, fcntl.LOCK_UN)

    def urgent_waiting(self) -> bool:
        """Whether some process's group commit holds the gate: it waits for the writer."""
        try:
            fcntl.flock(self._probe, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(self._probe, fcntl.LOCK_UN)
        return False

    def close(self) -> None:
        for fd in (self._gate, self._writer, self._probe):
            os.close(fd)


# Longest pause between two tries of a lock (`_flock`): a normal writer's, and the
# group commit's, which a whole batch of 250s waits on.
PAUSE = 0.002
URGENT_PAUSE = 0.0005


def _flock(fd: int, kind: int, deadline: float, longest: float = PAUSE) -> None:
    """`flock` with a deadline, as SQLite's busy timeout has one: a writer that hangs
    while holding the lock turns into errors (a 451) after 30 s, not a silent stall.

    A blocking flock cannot time out in a thread, so this polls; the pause starts at
    0.2 ms and grows to `longest` (2 ms; 0.5 ms for the group commit), so a waiter gets
    the lock within that long of its release (SQLite's own busy handler sleeps up to
    100 ms).
    """
    pause = 0.0002
    while True:
        try:
            fcntl.flock(fd, kind | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise sqlite3.OperationalError("database is locked (writer order)") from None
            time.sleep(pause)
            pause = min(pause * 2, longest)


def _file_gate(url: str) -> _FileGate | None:
    """The gate of an SQLite database on disk; None for `:memory:` or an unwritable folder."""
    path = url.split("///", 1)[1] if "///" in url else ""
    if not path or path == ":memory:" or path.startswith("file:"):
        return None
    try:
        return _FileGate(Path(path))
    except OSError as exc:
        log.warning("no cross-process writer order for %s: %s", path, exc.strerror)
        return None


class _WriterQueue:
    """SQLite has one writer at a time. Queue this process's writers on a lock instead of
    SQLite's busy handler, which sleeps in steps of up to 100 ms and misses the moment the
    lock frees; and let a long batch see that someone is waiting, so it can step aside.

    Acceptance is urgent: when the lock frees and both an urgent writer (the group commit
    behind waiting 250s) and a normal one (a processing batch, a claim) wait, the urgent
    one goes first, unless the previous turn was urgent too. So a 250 waits for at most
    one (short, bounded) processing transaction, and processing still gets every other
    turn under a flood. Normal writers take their turns in arrival order. Re-entrant for
    the thread that holds it.
    """

    def __init__(self, gate: _FileGate | None = None) -> None:
        self._gate = gate
        self._cond = threading.Condition()
        self._owner: int | None = None
        self._depth = 0
        self._urgent = 0
        self._tickets: deque[int] = deque()  # normal writers waiting, oldest first
        self._next_ticket = 0
        self._last_urgent = False

    @contextmanager
    def turn(self, urgent: bool = False) -> Iterator[None]:
        me = threading.get_ident()
        first = False
        with self._cond:
            if self._owner == me:
                self._depth += 1
            else:
                self._wait(me, urgent)
                first = True
        gate = self._gate if first else None
        if gate is not None:
            try:
                gate.enter(urgent)  # the turn among processes (see the module doc)
            except BaseException:
                self._release()
                raise
        try:
            yield
        finally:
            if gate is not None:
                gate.leave()
            self._release()

    def _release(self) -> None:
        with self._cond:
            self._depth -= 1
            if self._depth == 0:
                self._owner = None
                self._cond.notify_all()

    def _wait(self, me: int, urgent: bool) -> None:
        ticket = 0
        if urgent:
            self._urgent += 1
        else:
            # Normal writers go in arrival order: a processing thread that loops back
            # for its next transaction must not overtake the sender's "sent" write
            # waiting since before (notify_all wakes them in no particular order).
            ticket = self._next_ticket
            self._next_ticket += 1
            self._tickets.append(ticket)
        try:
            while not self._eligible(urgent, ticket):
                self._cond.wait()
        finally:
            if urgent:
                self._urgent -= 1
            else:
                self._tickets.remove(ticket)
        self._owner, self._depth, self._last_urgent = me, 1, urgent

    @property
    def _normal(self) -> int:
        return len(self._tickets)

    def _eligible(self, urgent: bool, ticket: int) -> bool:
        if self._owner is not None:
            return False
        if urgent:
            return not (self._normal and self._last_urgent)
        return (not self._urgent or self._last_urgent) and self._tickets[0] == ticket

    @property
    def waiting(self) -> bool:
        return self._urgent + self._normal > 0

    @property
    def counts(self) -> tuple[int, int]:
        """(urgent, normal) writers waiting for their turn now."""
        return self._urgent, self._normal

    def urgent_waiting(self) -> bool:
        """A group commit waits, in this process or (the gate) in another."""
        if self._urgent:
            return True
        return self._gate is not None and self._gate.urgent_waiting()

    def close(self) -> None:
        if self._gate is not None:
            self._gate.close()
            self._gate = None


class Database:
    """An engine and its session factory; `transaction()` is the unit of work."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        self.url = url
        self.engine = make_engine(url, **kwargs)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._read_only = self.engine.execution_options(**{READ_ONLY: True})
        self._readers = sessionmaker(self._read_only, expire_on_commit=False)
        self._writers = _WriterQueue(_file_gate(url)) if self.is_sqlite else None
        self._on_dispose: list[Callable[[], None]] = []

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def transaction(self, urgent: bool = False) -> Iterator[Session]:
        """A session whose work commits on success and rolls back on any error.

        `urgent`: a commit someone waits on at the door (a 250): on SQLite it takes the
        write lock ahead of processing work (`_WriterQueue`). What it did is logged once
        it committed, and not if it rolled back (`logs.after_commit`).
        """
        if self._writers is None:
            with logs.after_commit(), self._sessions() as session, session.begin():
                yield session
            return
        # Log lines are written once the lock is let go (logs.held).
        with logs.after_commit(), logs.held(), self._writers.turn(urgent):
            with self._sessions() as session, session.begin():
                yield session

    @contextmanager
    def writing(self, urgent: bool = False) -> Iterator[Connection]:
        """`transaction()` without an ORM session, for a hot path's writes (the group
        commit): the session's unit of work and state machine cost more CPU than the
        statements of a commit of a few messages. Same order, same BEGIN IMMEDIATE."""
        if self._writers is None:
            with logs.after_commit(), self.engine.begin() as connection:
                yield connection
            return
        with logs.after_commit(), logs.held(), self._writers.turn(urgent):
            with self.engine.begin() as connection:
                yield connection

    @contextmanager
    def turn(self, urgent: bool = False) -> Iterator[None]:
        """This process's turn to write (SQLite's writer order, as `transaction()` takes
        it), for a writer that runs its transaction on a connection of its own."""
        if self._writers is None:
            yield
            return
        with logs.held(), self._writers.turn(urgent):
            yield

    @contextmanager
    def reading(self, snapshot: bool = False) -> Iterator[Session]:
        """A session for reads only: on SQLite it neither takes nor waits for the write lock.

        `snapshot`: every statement sees the same moment, as SQLite's reads always do;
        PostgreSQL's default gives each statement its own (REPEATABLE READ instead).
        """
        with self._readers() as session, session.begin():
            if snapshot and not self.is_sqlite:
                session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            yield session

    @contextmanager
    def reading_connection(self) -> Iterator[Connection]:
        """`reading()` without an ORM session, for a hot path's reads. Its deferred
        transaction begins with the first statement run through it and is rolled back
        at the end; work done on the driver connection alone (SQLite's blob reads)
        needs none and costs no BEGIN."""
        with self._read_only.connect() as connection:
            yield connection

    def others_waiting(self) -> bool:
        """Whether another thread waits to write (SQLite): a long batch should commit soon."""
        return self._writers is not None and self._writers.waiting

    def urgent_waiting(self) -> bool:
        """Whether a group commit, of any process, waits for the write lock (SQLite):
        a processing transaction should commit after the message it is on."""
        return self._writers is not None and self._writers.urgent_waiting()

    def writers_waiting(self) -> tuple[int, int]:
        """(urgent, normal) threads of this process waiting to write (SQLite; else zeros)."""
        return self._writers.counts if self._writers is not None else (0, 0)

    def on_dispose(self, close: Callable[[], None]) -> None:
        """Call `close` when this database is disposed of (what lives beside its file,
        as the landing of accepted mail does, ends with it)."""
        self._on_dispose.append(close)

    def dispose(self) -> None:
        while self._on_dispose:
            self._on_dispose.pop()()
        self.engine.dispose()
        if self._writers is not None:
            self._writers.close()


class rare(FunctionElement[bool]):  # noqa: N801 (used as a SQL function)
    """`rare(condition)`: a condition few rows meet, such as a state other than the bulk.

    SQLite plans from `ANALYZE`'s statistics when it has them, which only give the
    average number of rows per value: run on a quiet desk, where every row is
    `done`, they say that `state = 'pending'` matches the whole table. The counts
    of waiting rows (/healthz, the status line, /metrics), the outbox's claims and
    the jobs' reads of open tickets then scanned the whole history. `likelihood(…,
    0.001)` says otherwise, and leaves the index usable. Other databases get the
    condition unchanged (PostgreSQL's statistics know skew).
    """

    # Untyped: a Boolean would be compared with 1 on SQLite, hiding the hint.
    inherit_cache = True


@compiles(rare)
def _rare(element: rare, compiler: SQLCompiler, **kw: Any) -> str:
    return str(compiler.process(element.clauses, **kw))


@compiles(rare, "sqlite")
def _rare_sqlite(element: rare, compiler: SQLCompiler, **kw: Any) -> str:
    return f"likelihood({compiler.process(element.clauses, **kw)}, 0.001)"
