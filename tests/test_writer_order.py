"""SQLite's one writer across processes: a 250 waiting for the write lock goes ahead of
processing that starts queueing after it (`maildesk/db.py`, `_FileGate`).

Each `Database` object opens the lock files on its own descriptors, and flock
conflicts between descriptors as between processes, so three `Database`s on one
file stand for serve and two worker processes here, without sleeps.
"""

from __future__ import annotations

import fcntl
import io
import json
import logging
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from maildesk import logs
from maildesk.db import Database
from tests.conftest import PG_URL, wait_for

pytestmark = pytest.mark.skipif(bool(PG_URL), reason="SQLite's single writer")


@pytest.fixture
def databases(tmp_path: Path) -> Iterator[list[Database]]:
    url = f"sqlite:///{tmp_path / 'maildesk.db'}"
    opened = [Database(url) for _ in range(3)]
    yield opened
    for db in opened:
        db.dispose()


class Writers:
    """Write transactions in threads, noting the order in which they got the lock; the
    first, `hold`, keeps its transaction open until `release`."""

    def __init__(self) -> None:
        self.order: list[str] = []
        self.threads: list[threading.Thread] = []
        self._holding = threading.Event()
        self._release = threading.Event()

    def hold(self, db: Database) -> None:
        """A processing batch under way in `db`: returns once it has the lock."""

        def batch() -> None:
            with db.transaction():
                self._holding.set()
                self._release.wait(30)

        self._start(batch, "batch")
        assert self._holding.wait(30)

    def write(self, db: Database, urgent: bool, name: str) -> threading.Thread:
        def run() -> None:
            with db.transaction(urgent=urgent):
                self.order.append(name)

        return self._start(run, name)

    def finish(self) -> list[str]:
        """Let the held batch commit; the order in which the others wrote."""
        self._release.set()
        for thread in self.threads:
            thread.join(30)
        return self.order

    def _start(self, target: Callable[[], None], name: str) -> threading.Thread:
        thread = threading.Thread(target=target, name=name)
        thread.start()
        self.threads.append(thread)
        return thread


def test_a_waiting_250_of_one_process_goes_ahead_of_another_process_queueing_later(
    databases: list[Database],
) -> None:
    worker, serve, other_worker = databases
    writers = Writers()
    writers.hold(worker)
    assert not worker.urgent_waiting()
    writers.write(serve, True, "250")
    # The worker, mid-batch, sees the waiting 250 of another process: it commits soon.
    wait_for(worker.urgent_waiting, 10, "the worker to see the waiting group commit")
    writers.write(other_worker, False, "processing")
    assert writers.finish() == ["250", "processing"]
    assert not worker.urgent_waiting()


def polling_the_writer_lock(thread: threading.Thread) -> bool:
    """Whether `thread` is past the gate, trying `<db>.writer` (its exclusive `_flock`)."""
    frame = sys._current_frames().get(thread.ident or 0)
    while frame is not None:
        if frame.f_code.co_name == "_flock" and frame.f_locals.get("kind") == fcntl.LOCK_EX:
            return True
        frame = frame.f_back
    return False


def test_a_250_goes_ahead_of_a_process_that_queued_for_the_writer_before_it(
    databases: list[Database],
) -> None:
    """Two workers: one writes, the other already waits for the writer lock when a 250
    comes. The 250 waits for the transaction under way only, not for the queued one."""
    worker, serve, other_worker = databases
    writers = Writers()
    writers.hold(worker)
    queued = writers.write(other_worker, False, "processing")
    wait_for(lambda: polling_the_writer_lock(queued), 10, "the other worker to queue")
    writers.write(serve, True, "250")
    wait_for(worker.urgent_waiting, 10, "the group commit to wait")
    assert writers.finish() == ["250", "processing"]


class StuckStream(io.StringIO):
    """A log stream that blocks its writer until `release` (a journal pushing back)."""

    def __init__(self) -> None:
        super().__init__()
        self.writing = threading.Event()
        self.released = threading.Event()

    def write(self, text: str) -> int:
        self.writing.set()
        self.released.wait(30)
        return super().write(text)


def test_a_log_stream_that_blocks_does_not_hold_the_write_lock(
    databases: list[Database], restore_logging: None
) -> None:
    """A writer logs inside its transaction; its line goes out after the commit, so a
    stuck stream holds that thread, not the other writers."""
    first, second, _ = databases
    stream = StuckStream()
    logs.configure("info", stream)
    with first.transaction() as session:
        session.execute(text("CREATE TABLE notes (n INTEGER)"))

    def logging_writer() -> None:
        with logs.log_context(inbound_id=7), first.transaction() as session:
            session.execute(text("INSERT INTO notes VALUES (1)"))
            logging.getLogger("maildesk.pipeline").info("inbound %d -> ticket %d", 7, 1)

    stuck = threading.Thread(target=logging_writer)
    stuck.start()
    assert stream.writing.wait(10)  # its line is being written, and blocks
    try:
        other = threading.Thread(target=lambda: _insert(second, 2))
        other.start()
        other.join(10)
        assert not other.is_alive()  # got the lock while the stream was stuck
        with second.reading() as session:
            assert session.scalars(text("SELECT n FROM notes ORDER BY n")).all() == [1, 2]
    finally:
        stream.released.set()
        stuck.join(10)
    line = json.loads(stream.getvalue())
    assert (line["msg"], line["inbound_id"]) == ("inbound 7 -> ticket 1", 7)


def _insert(db: Database, n: int) -> None:
    with db.transaction() as session:
        session.execute(text("INSERT INTO notes VALUES (:n)"), {"n": n})
