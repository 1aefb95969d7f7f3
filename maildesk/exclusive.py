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

The jobs are also idempotent on their own (rows locked `SKIP LOCKED`, the
digest's day recorded in `job_runs`); the lock spares the second instance the
work and the failed insert. On SQLite there is one instance per database file,
and the lock is always granted.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from sqlalchemy import func, select

from maildesk.db import Database

log = logging.getLogger("maildesk.exclusive")

T = TypeVar("T")


def lock_key(name: str) -> int:
    """A stable signed 64-bit key for `name` (advisory locks are numbered)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@contextmanager
def exclusive(db: Database, name: str, wait: bool = False) -> Iterator[bool]:
    """Hold the lock named `name` for the block; yields whether it was granted.

    `wait=True` queues for it (the schema migration: every instance must run it,
    one after the other); otherwise someone else holding it yields False at once.
    """
    if db.is_sqlite:
        yield True
        return
    key = lock_key(name)
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        if wait:
            conn.execute(select(func.pg_advisory_lock(key)))
            granted = True
        else:
            granted = bool(conn.execute(select(func.pg_try_advisory_lock(key))).scalar())
        try:
            yield granted
        finally:
            if granted:
                try:
                    conn.execute(select(func.pg_advisory_unlock(key)))
                except Exception:  # the connection is gone, and the lock with it
                    conn.invalidate()


def singly(db: Database, name: str, job: Callable[[], T]) -> T | None:
    """Run `job` unless another instance is running the work called `name` right now."""
    with exclusive(db, name) as mine:
        if not mine:
            log.debug("%s runs on another instance now; skipped here", name)
            return None
        return job()


def while_holding(
    db: Database, name: str, stop: threading.Event, work: Callable[[], None], retry: float = 5.0
) -> None:
    """Run `work` (which returns once `stop` is set) whenever this instance holds `name`.

    The instances that do not hold it ask again every `retry` seconds, so one of
    them takes over within that time after the holder dies.
    """
    while not stop.is_set():
        try:
            with exclusive(db, name) as mine:
                if mine:
                    log.info("%s: this instance does it now", name)
                    work()
                    continue
        except Exception:  # the database is away: ask again later
            log.exception("%s: could not ask for the lock", name)
        stop.wait(retry)
