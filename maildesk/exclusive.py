"""Work that must run in one place at a time when several instances share PostgreSQL.

Migrating the schema (`maildesk init`, and `serve` at start), each scheduled
job (autoclose, the digest, the SLA check) and polling one IMAP mailbox are
each guarded by a PostgreSQL session advisory lock named after the work. We
chose advisory locks over a lease table: PostgreSQL itself releases the lock
when its holder's connection ends, so an instance killed with SIGKILL hands
the work over as soon as the server notices the dropped connection (at once
on a local socket), with no lease to wait out and no table to migrate. The
lock lives on a connection of its own in autocommit mode, so it never holds a
transaction open while the work runs.

A lock is held only while its session lives, and a session can end under a
live holder (PostgreSQL restarted, the backend terminated, the network cut):
another instance may then take the work. So a holder of long-running work (the
IMAP poller) asks its session every `CHECK_SECONDS` whether it is still the same
one, and stops the work when it is not, or does not answer in time. Two instances
can then overlap for at most that long; the mail they both fetch is stored twice
and processed once (a duplicate Message-ID from the same mailbox is marked so).

Keys are named within the schema (`current_schema()`), so desks that share one
PostgreSQL database in schemas of their own never wait for each other's work.

The jobs are also idempotent on their own (rows locked `SKIP LOCKED`, the
digest's day recorded in `job_runs`); the lock spares the second instance the
work and the failed insert. On SQLite there is one instance per database file,
and the lock is always granted.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from sqlalchemy import Connection, text

from maildesk.db import Database

log = logging.getLogger("maildesk.exclusive")

T = TypeVar("T")

# How often a holder of long-running work asks whether its lock's session lives, and
# how long it waits for the answer before taking the silence for a lost lock.
CHECK_SECONDS = 2.0
ANSWER_SECONDS = 5.0

# One round trip: the key is the name within this schema, hashed by PostgreSQL.
_KEY = "hashtextextended(coalesce(current_schema(), '') || '/' || :name, 0)"
_TRY = text(f"SELECT pg_try_advisory_lock({_KEY}), pg_backend_pid()")
_WAIT = text(f"SELECT pg_advisory_lock({_KEY}), pg_backend_pid()")
_UNLOCK = text(f"SELECT pg_advisory_unlock({_KEY})")
_SESSION = text("SELECT pg_backend_pid()")


class Held:
    """A granted lock, on a connection of its own in autocommit mode."""

    def __init__(self, conn: Connection, name: str, pid: int) -> None:
        self._conn = conn
        self._name = name
        self._pid = pid
        self._lost = False
        self._asking: threading.Thread | None = None

    def check(self, timeout: float = ANSWER_SECONDS) -> bool:
        """Whether the lock is still ours: its session answers within `timeout` and is
        the one that took it. SQLAlchemy reconnects a dropped connection on its next
        use, to a new session that holds nothing, hence the backend's pid. Once lost,
        lost for good."""
        if self._lost:
            return False
        answer: list[object] = []

        def ask() -> None:
            try:
                answer.append(self._conn.execute(_SESSION).scalar())
            except Exception as exc:  # the session is gone, and the lock with it
                answer.append(exc)

        asking = self._asking = threading.Thread(target=ask, name="lock check", daemon=True)
        asking.start()
        asking.join(timeout)
        if answer and answer[0] == self._pid:
            return True
        self._lost = True
        if not answer:
            reason = f"its session did not answer within {timeout:g} s"
        elif isinstance(answer[0], Exception):
            reason = f"its session ended: {str(answer[0]).strip()}"
        else:
            reason = "its session ended and a new one took its place"
        log.warning("%s: lost the lock, %s; this instance stops the work", self._name, reason)
        return False

    def let_go(self) -> None:
        if not self._lost:
            try:
                self._conn.execute(_UNLOCK, {"name": self._name})
                return
            except Exception as exc:
                log.debug("%s: could not unlock (%s)", self._name, exc)
        # Lost, or it failed now: close the connection rather than use it again. A
        # check that got no answer may still be waiting on it, and closing it under
        # that thread hung our next connection for 15 s here: wait for the server or
        # the network to end it first. The work has stopped already.
        if self._asking is not None:
            self._asking.join()
        self._conn.invalidate()


@contextmanager
def holding(db: Database, name: str, wait: bool = False) -> Iterator[Held | None]:
    """The lock named `name` for the block, or None when another instance holds it.

    `wait=True` queues for it (the schema migration: every instance must run it,
    one after the other); otherwise someone else holding it yields None at once.
    """
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        granted, pid = conn.execute(_WAIT if wait else _TRY, {"name": name}).one()
        held = Held(conn, name, pid) if wait or granted else None
        try:
            yield held
        finally:
            if held is not None:
                held.let_go()


@contextmanager
def exclusive(db: Database, name: str, wait: bool = False) -> Iterator[bool]:
    """Hold the lock named `name` for the block; yields whether it was granted."""
    if db.is_sqlite:
        yield True
        return
    with holding(db, name, wait) as held:
        yield held is not None


def singly(db: Database, name: str, job: Callable[[], T]) -> T | None:
    """Run `job` unless another instance is running the work called `name` right now."""
    with exclusive(db, name) as mine:
        if not mine:
            log.debug("%s runs on another instance now; skipped here", name)
            return None
        return job()


def while_holding(
    db: Database,
    name: str,
    stop: threading.Event,
    work: Callable[[threading.Event], None],
    retry: float = 5.0,
    check: float = CHECK_SECONDS,
    answer: float = ANSWER_SECONDS,
) -> None:
    """Run `work(release)` whenever this instance holds `name`. `work` returns once
    `release` is set: when `stop` is, or when the lock is lost (checked every `check`
    seconds, silence for `answer` seconds counting as lost); then the lock is asked
    for again.

    The instances that do not hold it ask again every `retry` seconds, so one of
    them takes over within that time after the holder dies.
    """
    while not stop.is_set():
        try:
            if db.is_sqlite:
                work(stop)
                continue
            with holding(db, name) as held:
                if held is not None:
                    log.info("%s: this instance does it now", name)
                    _work_while_held(held, stop, work, check, answer)
                    continue
        except Exception:  # the database is away: ask again later
            log.exception("%s: could not ask for the lock", name)
        stop.wait(retry)


def _work_while_held(
    held: Held,
    stop: threading.Event,
    work: Callable[[threading.Event], None],
    check: float,
    answer: float,
) -> None:
    release = threading.Event()

    def watch() -> None:
        while not stop.wait(check) and not release.is_set() and held.check(answer):
            pass
        release.set()

    watcher = threading.Thread(target=watch, name="lock watch", daemon=True)
    watcher.start()
    try:
        work(release)
    finally:
        release.set()
        watcher.join()
