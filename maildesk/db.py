"""Engines and transactions: the one place that knows SQLite from PostgreSQL.

SQLite runs in WAL mode with `synchronous=FULL`: every commit is fsynced, which
is what lets a 250 promise that the bytes survive a power cut. Transactions
start with BEGIN IMMEDIATE so two writers queue on the busy timeout instead of
failing when a reader tries to upgrade to a writer.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

READ_ONLY = "maildesk_read_only"


def make_engine(url: str, **kwargs: Any) -> Engine:
    if url.startswith("sqlite"):
        return _sqlite_engine(url, **kwargs)
    return create_engine(url, pool_pre_ping=True, **kwargs)


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


class _WriterQueue:
    """SQLite has one writer at a time. Queue this process's writers on a lock instead of
    SQLite's busy handler, which sleeps in steps of up to 100 ms and misses the moment the
    lock frees; and let a long batch see that someone is waiting, so it can step aside.

    Acceptance is urgent: when the lock frees and both an urgent writer (the group commit
    behind waiting 250s) and a normal one (a processing batch, a claim) wait, the urgent
    one goes first, unless the previous turn was urgent too. So a 250 waits for at most
    one (short, bounded) processing transaction, and processing still gets every other
    turn under a flood. Re-entrant for the thread that holds it.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._owner: int | None = None
        self._depth = 0
        self._urgent = 0
        self._normal = 0
        self._last_urgent = False

    @contextmanager
    def turn(self, urgent: bool = False) -> Iterator[None]:
        me = threading.get_ident()
        with self._cond:
            if self._owner == me:
                self._depth += 1
            else:
                self._wait(me, urgent)
        try:
            yield
        finally:
            with self._cond:
                self._depth -= 1
                if self._depth == 0:
                    self._owner = None
                    self._cond.notify_all()

    def _wait(self, me: int, urgent: bool) -> None:
        if urgent:
            self._urgent += 1
        else:
            self._normal += 1
        try:
            while not self._eligible(urgent):
                self._cond.wait()
        finally:
            if urgent:
                self._urgent -= 1
            else:
                self._normal -= 1
        self._owner, self._depth, self._last_urgent = me, 1, urgent

    def _eligible(self, urgent: bool) -> bool:
        if self._owner is not None:
            return False
        if urgent:
            return not (self._normal and self._last_urgent)
        return not self._urgent or self._last_urgent

    @property
    def waiting(self) -> bool:
        return self._urgent + self._normal > 0

    @property
    def counts(self) -> tuple[int, int]:
        """(urgent, normal) writers waiting for their turn now."""
        return self._urgent, self._normal


class Database:
    """An engine and its session factory; `transaction()` is the unit of work."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        self.url = url
        self.engine = make_engine(url, **kwargs)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._readers = sessionmaker(
            self.engine.execution_options(**{READ_ONLY: True}), expire_on_commit=False
        )
        self._writers = _WriterQueue() if self.is_sqlite else None

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def transaction(self, urgent: bool = False) -> Iterator[Session]:
        """A session whose work commits on success and rolls back on any error.

        `urgent`: a commit someone waits on at the door (a 250): on SQLite it takes the
        write lock ahead of processing work (`_WriterQueue`).
        """
        if self._writers is None:
            with self._sessions() as session, session.begin():
                yield session
            return
        with self._writers.turn(urgent), self._sessions() as session, session.begin():
            yield session

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A session for reads only: on SQLite it neither takes nor waits for the write lock."""
        with self._readers() as session, session.begin():
            yield session

    def others_waiting(self) -> bool:
        """Whether another thread waits to write (SQLite): a long batch should commit soon."""
        return self._writers is not None and self._writers.waiting

    def urgent_waiting(self) -> bool:
        """Whether a group commit waits for the write lock (SQLite): step aside soon."""
        return self._writers is not None and self._writers.counts[0] > 0

    def writers_waiting(self) -> tuple[int, int]:
        """(urgent, normal) threads of this process waiting to write (SQLite; else zeros)."""
        return self._writers.counts if self._writers is not None else (0, 0)

    def dispose(self) -> None:
        self.engine.dispose()
