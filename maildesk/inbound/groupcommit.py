"""Group commit: concurrent stores waiting at the door share one transaction (one fsync).

Every route hands its raw bytes to `GroupCommit.submit` and waits on the future
it returns (`InboundStore.put` from a thread, `put_async` from the event loop,
where no executor thread is held). One writer thread takes whatever is waiting,
asks `write` to commit all of it in one transaction, and only then resolves
each future: a session gets its 250 after the commit that holds its bytes,
never before. `write` gathers the batch once it holds the write lock (`take`),
so what arrived while it waited for the lock or for the previous fsync goes
into the same commit. If the commit fails, every message in it fails (451).

The thread starts with the first message and ends after a second without any,
so a CLI process that stores one message keeps no thread behind.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Generic, TypeVar

log = logging.getLogger("maildesk.spool")

T = TypeVar("T")

# One commit holds at most this many bytes and messages (a 25 MB message goes alone).
MAX_BYTES = 16 * 1024 * 1024
MAX_ITEMS = 500
IDLE_SECONDS = 1.0


@dataclass
class Waiting(Generic[T]):
    """One message at the door: what to store, and the future its session waits on."""

    item: T
    size: int
    future: Future[int] = field(default_factory=Future)


class GroupCommit(Generic[T]):
    def __init__(self, write: Callable[[Callable[[], list[Waiting[T]]]], list[int]]) -> None:
        # write(take): open the transaction, call take() for the batch, store it, commit,
        # return one id per taken message in order.
        self._write = write
        self._queue: queue.SimpleQueue[Waiting[T]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._running = False
        self.commits = 0  # transactions committed (fewer than messages under load)

    @property
    def waiting(self) -> int:
        """Messages queued for the next commit (not counting one being committed)."""
        return self._queue.qsize()

    def submit(self, item: T, size: int) -> Future[int]:
        waiting: Waiting[T] = Waiting(item, size)
        with self._lock:
            self._queue.put(waiting)
            if not self._running:
                self._running = True
                threading.Thread(target=self._run, name="group-commit", daemon=True).start()
        return waiting.future

    def _run(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=IDLE_SECONDS)
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():  # submit() puts under this lock: none stranded
                        self._running = False
                        return
                continue
            self._commit(first)
            del first  # its bytes go with the 250, not a second later with the next get

    def _commit(self, first: Waiting[T]) -> None:
        taken: list[Waiting[T]] = []

        def take() -> list[Waiting[T]]:
            taken.append(first)
            size = first.size
            while size < MAX_BYTES and len(taken) < MAX_ITEMS:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                taken.append(more)
                size += more.size
            return list(taken)

        try:
            ids = self._write(take)
        except BaseException as exc:  # nothing of this batch is stored: each session says 451
            log.exception("storing %d messages failed", max(len(taken), 1))
            for waiting in taken or [first]:
                waiting.future.set_exception(exc)
            return
        self.commits += 1
        for waiting, row_id in zip(taken, ids, strict=True):
            waiting.future.set_result(row_id)
