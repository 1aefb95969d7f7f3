"""Group commit: concurrent stores waiting at the door share one transaction (one fsync).

Every route hands its raw bytes to `GroupCommit.submit` (a thread:
`InboundStore.put`) or `submit_async` (the event loop: `put_async`, no executor
thread held) and waits on the future it returns. One writer thread takes
whatever is waiting, asks `write` to commit all of it in one transaction, and
only then resolves each future: a session gets its 250 after the commit that
holds its bytes, never before. The futures of one event loop are resolved by
one callback on that loop per commit: a cross-thread future per message cost a
wake-up of the loop (a write to its self-pipe) for every message. `write`
gathers the batch once it holds the write lock (`take`), so what arrived while
it waited for the lock or for the previous fsync goes into the same commit.
If the commit fails, every message in it fails (451). A waiter that went away
meanwhile (its session hung up and its task was cancelled) is skipped: its
bytes are stored all the same, and the sender, who saw no 250, may send them
again.

The thread starts with the first message and ends after a second without any,
so a CLI process that stores one message keeps no thread behind.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from maildesk.outages import Outage

log = logging.getLogger("maildesk.spool")
# The note a failed commit's error carries once it is logged (`logged`).
LOGGED = "logged by the group commit"

T = TypeVar("T")

# One commit holds at most this many bytes and messages (a 25 MB message goes alone).
MAX_BYTES = 16 * 1024 * 1024
MAX_ITEMS = 500
IDLE_SECONDS = 1.0


@dataclass
class Waiting(Generic[T]):
    """One message at the door: what to store, and the future its sender waits on:
    a thread's (`loop` None) or one of `loop`'s, resolved on that loop."""

    item: T
    size: int
    future: Future[int] | asyncio.Future[int] = field(default_factory=Future)
    loop: asyncio.AbstractEventLoop | None = None


# What a commit gives each of its messages: the ids in order, or the error.
Outcome = Sequence[int] | BaseException


class GroupCommit(Generic[T]):
    def __init__(self, write: Callable[[Callable[[], list[Waiting[T]]]], list[int]]) -> None:
        # write(take): open the transaction, call take() for the batch, store it, commit,
        # return one id per taken message in order.
        self._write = write
        self._queue: queue.SimpleQueue[Waiting[T]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._running = False
        self._pending = 0  # bytes submitted and not yet committed (or failed)
        self.commits = 0  # transactions committed (fewer than messages under load)
        self._outage = Outage(log, "storing", "commits")  # only the writer thread counts

    @property
    def waiting(self) -> int:
        """Messages queued for the next commit (not counting one being committed)."""
        return self._queue.qsize()

    @property
    def pending_bytes(self) -> int:
        """Bytes at the door: queued, or in the commit under way. What they will take on
        disk counts against the room for the next message (`room.py`)."""
        with self._lock:
            return self._pending

    def submit(self, item: T, size: int) -> Future[int]:
        """Queue `item` for the next commit; for a thread, which waits on the future."""
        future: Future[int] = Future()
        self._enqueue(Waiting(item, size, future))
        return future

    def submit_async(self, item: T, size: int) -> asyncio.Future[int]:
        """`submit` from a coroutine: the future is the running loop's."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        self._enqueue(Waiting(item, size, future, loop))
        return future

    def _enqueue(self, waiting: Waiting[T]) -> None:
        with self._lock:
            self._queue.put(waiting)
            self._pending += waiting.size
            if not self._running:
                self._running = True
                threading.Thread(target=self._run, name="group-commit", daemon=True).start()

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

        outcome: Outcome
        try:
            outcome = self._write(take)
        except BaseException as exc:  # nothing of this batch is stored: each session says 451
            self._failed(exc, max(len(taken), 1))
            outcome = exc
        else:
            self._outage.succeeded()
            self.commits += 1
            if len(outcome) != len(taken):
                outcome = RuntimeError(f"{len(outcome)} ids for {len(taken)} messages")
        with self._lock:
            self._pending -= sum(waiting.size for waiting in taken or [first])
        _answer(taken or [first], outcome)

    def _failed(self, exc: BaseException, count: int) -> None:
        """Log a failed commit (`outages.Outage`). Its sessions, which answer 451, log no
        traceback of their own."""
        self._outage.failed(exc, f"storing {count} messages", then="each is answered 451")
        if not logged(exc):
            exc.add_note(LOGGED)


def logged(exc: BaseException) -> bool:
    """Whether the group commit logged `exc` (a failed commit) already."""
    return LOGGED in getattr(exc, "__notes__", ())


def _answer(taken: Sequence[Waiting[T]], outcome: Outcome) -> None:
    """Resolve each waiter's future: a thread's here, a loop's in one callback on it."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[int, asyncio.Future[int]]]] = {}
    for index, waiting in enumerate(taken):
        if waiting.loop is None:
            _settle(index, waiting.future, outcome)
        else:
            future = waiting.future
            assert isinstance(future, asyncio.Future)
            by_loop.setdefault(waiting.loop, []).append((index, future))
    for loop, futures in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle_all, futures, outcome)
        except RuntimeError:  # that loop is closed: nobody waits on it any more
            continue


def _settle_all(futures: list[tuple[int, asyncio.Future[int]]], outcome: Outcome) -> None:
    for index, future in futures:
        _settle(index, future, outcome)


def _settle(index: int, future: Future[int] | asyncio.Future[int], outcome: Outcome) -> None:
    if future.done():  # cancelled: the session went away before its answer
        return
    try:
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome[index])
    except (InvalidStateError, asyncio.InvalidStateError):  # cancelled just now, by its thread
        return
