"""The worker: turns stored mail into tickets and sends the outbox, until told to stop.

A `Worker` runs two threads over the same `Services`: processing (claims
inbound rows, `Processor.process_pending`) and sending (claims outbox rows,
`OutboxSender.send_due`), both with the leases of `maildesk/leases.py`, so any
number of workers, in any number of processes, share the queues. Each thread
sleeps until woken (`wake`) or until the next sweep, which picks up rows that
no wake announced (`maildesk deliver`, a retry that fell due, another worker's
expired claim).

Where it runs: `serve` with `[workers] count = 0` runs one inside itself;
otherwise each `maildesk worker` process runs one (`run_process`), started by
`serve` (`workerpool.py`) or by ops as a unit of its own.

Stopping: `stop()` (SIGTERM) lets each thread finish the batch it holds and
claim nothing more; `stop(empty_queue=True)` (serve's drain, once its listeners
are closed) processes until nothing is due first.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime

from maildesk.services import Services

log = logging.getLogger("maildesk.worker")

# Seconds between sweeps when nothing wakes a thread (as serve's in-process sweep).
SWEEP_SECONDS = 2.0
# Inbound rows one claim takes: small enough that a burst spreads over the workers
# (a claim of 100 would give one worker all of it), big enough that claiming costs
# little next to processing.
CLAIM_BATCH = 32

# What serve writes on a worker's stdin (`workerpool.py`).
WAKE = b"w"  # new mail is stored: claim now
DRAIN = b"d"  # the listeners are closed: process what is due, then exit
RELOAD = b"r"  # serve applied a new config: read it and the templates too
# What a worker under serve writes on its stdout once it has read the config and runs.
READY = b"R"


class Worker:
    def __init__(self, services: Services, *, claim_batch: int = CLAIM_BATCH) -> None:
        self.services = services
        self.claim_batch = claim_batch
        self._inbound = threading.Event()
        self._outbox = threading.Event()
        self._stop = threading.Event()
        self._empty_queue = False
        self._threads = [
            threading.Thread(target=self._process_loop, name="processing", daemon=True),
            threading.Thread(target=self._send_loop, name="sending", daemon=True),
        ]

    def start(self) -> Worker:
        for thread in self._threads:
            thread.start()
        return self

    def wake(self) -> None:
        """New inbound rows are stored (thread-safe; cheap enough to call per message)."""
        self._inbound.set()

    def wake_sender(self) -> None:
        self._outbox.set()

    def stop(self, *, empty_queue: bool = False) -> None:
        """Finish what is held and exit; with `empty_queue`, process everything due first."""
        self._empty_queue = self._empty_queue or empty_queue
        self._stop.set()
        self._inbound.set()
        self._outbox.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for both threads; True when they ended within `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            thread.join(left)
        return not self.alive

    @property
    def alive(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    def _process_loop(self) -> None:
        processor = self.services.processor
        while True:
            self._inbound.clear()  # a wake from now on is seen by the wait below
            if self._stop.is_set() and not self._empty_queue:
                return
            try:
                result = processor.process_pending(self.claim_batch)
            except Exception:
                if self._stop.is_set():
                    # Stopping, and the database fails: what is accepted stays stored
                    # for the next start, so waiting out the drain time gains nothing.
                    log.exception("processing failed while stopping; the rest waits for a restart")
                    return
                log.exception("processing batch failed; retrying shortly")
                self._inbound.wait(SWEEP_SECONDS)
                continue
            if result.queued_outbound:
                self._outbox.set()
            if not result.processed:
                if self._stop.is_set():
                    return  # stopping, and nothing is due
                self._inbound.wait(SWEEP_SECONDS)

    def _send_loop(self) -> None:
        try:
            sender = self.services.sender()
        except Exception:
            log.exception("cannot open the outbound transport; nothing is sent by this worker")
            return
        try:
            while not self._stop.is_set():
                self._outbox.clear()
                try:
                    handled = sender.send_due()
                    due = None if handled else sender.next_due()
                except Exception:
                    log.exception("sending failed; retrying shortly")
                    handled, due = 0, None
                if not handled:
                    self._outbox.wait(self._seconds_until(due))
        finally:
            sender.transport.close()

    def _seconds_until(self, due: datetime | None) -> float:
        """How long the sender may sleep: until the next retry is due, at most a sweep."""
        if due is None:
            return SWEEP_SECONDS
        seconds = (due - self.services.clock.now()).total_seconds()
        return min(max(seconds, 0.05), SWEEP_SECONDS)


# -- one worker process (`maildesk worker`) ------------------------------------------------


def run_process(services: Services, *, under_serve: bool, reload: Callable[[], object]) -> None:
    """Run one worker until SIGTERM/SIGINT (finish what is held) and return.

    `under_serve`: stdin is a pipe from the `serve` that started this process. Each
    byte is an order: `WAKE`, `DRAIN` or `RELOAD`; end of file means serve is gone
    (killed), and this process exits at once: its claims run out after one lease,
    and on SQLite the restarted serve frees them at start. `reload` re-reads the
    config and the templates, on SIGHUP (a worker of its own) or serve's `RELOAD`.
    """
    if under_serve:
        _die_with_parent()
        # Ctrl-C reaches the whole process group: serve orders the drain, not the key.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    worker = Worker(services).start()
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    if not under_serve:
        signal.signal(signal.SIGINT, lambda *_: worker.stop())
    if under_serve:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # serve says RELOAD once it applied one
    else:
        signal.signal(signal.SIGHUP, lambda *_: threading.Thread(target=reload).start())
    if under_serve:
        orders = threading.Thread(target=_read_orders, args=(worker, reload), name="orders")
        orders.daemon = True
        orders.start()
    log.info("worker %d ready: processing and sending", os.getpid())
    if under_serve:
        os.write(sys.stdout.fileno(), READY)
    # join() in short steps: the main thread must come back to Python for the
    # signal handlers to run.
    while not worker.join(0.5):
        pass
    log.info("worker %d stopped", os.getpid())


def _read_orders(worker: Worker, reload: Callable[[], object]) -> None:
    stdin = sys.stdin.buffer.raw if hasattr(sys.stdin.buffer, "raw") else sys.stdin.buffer
    while True:
        try:
            chunk = stdin.read(4096)
        except OSError:
            chunk = b""
        if not chunk:
            # serve died without telling us (SIGKILL): whatever we hold is released by
            # the next serve or runs out with its lease; finishing it could race them.
            log.warning("worker %d: serve is gone; exiting now", os.getpid())
            os._exit(1)
        if DRAIN in chunk:
            worker.stop(empty_queue=True)
        if WAKE in chunk:
            worker.wake()
        if RELOAD in chunk:
            try:
                reload()
            except Exception:
                log.exception("reloading the configuration failed; the running one stays")


def _die_with_parent() -> None:
    """On Linux, ask the kernel to SIGKILL this process when serve dies (PR_SET_PDEATHSIG).

    Stdin's end of file says the same, but only once the reader thread reads it; this
    also covers a worker busy in a long batch. Elsewhere stdin alone does it.
    """
    parent = os.environ.get("MAILDESK_SERVE_PID", "")
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if parent and os.getppid() != int(parent):
        os._exit(1)  # serve died before the request above took effect
