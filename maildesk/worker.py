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

import dataclasses
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import NoReturn

from maildesk import config
from maildesk.config import Settings
from maildesk.outages import Outage
from maildesk.outbound.outbox import Handoff
from maildesk.services import Services

log = logging.getLogger("maildesk.worker")

# Seconds between sweeps when nothing wakes a thread (as serve's in-process sweep).
SWEEP_SECONDS = 2.0
# Inbound rows one claim takes: small enough that a burst spreads over the workers
# (a claim of 100 would give one worker all of it), big enough that claiming costs
# little next to processing.
CLAIM_BATCH = 32
# Outbox rows one claim takes: each is sent one after the other (a Maildir file and
# its fsyncs, or an SMTP transaction), so a small claim lets every worker's sender
# share a burst of acknowledgements instead of one sender holding a hundred.
SEND_BATCH = 10
# Outbox rows one processing transaction claims for this process's sender
# (outbound/outbox.py, `Handoff`): what a transaction of 16 messages queues for a
# desk of a few agents, so the sender keeps up without a claim of its own.
HANDOFF_BATCH = 64
# A drain claims new batches for at most this long, then finishes what it holds: under
# serve's drain time (20 s, partly spent on SMTP sessions) even while other instances
# keep storing mail, so a worker exits on its own instead of being killed mid-batch.
DRAIN_CLAIM_SECONDS = 10.0

# What serve writes on a worker's stdin (`workerpool.py`): first the settings it runs
# with (a frame), then one byte per order.
WAKE = b"w"  # new mail is stored: claim now
DRAIN = b"d"  # the listeners are closed: process what is due, then exit
RELOAD = b"r"  # followed by a frame: the settings serve applied at a reload
_LENGTH = 8  # bytes of a frame's length prefix
# The environment variable naming the pipe a worker under serve writes its heartbeat
# on, and how often it does (serve ends a worker silent and idle for a lease).
HEARTBEAT_FD = "MAILDESK_HEARTBEAT_FD"
HEARTBEAT_SECONDS = 1.0


def frame(settings: Settings) -> bytes:
    """Settings as serve hands them to a worker: a length, then the sections as JSON.

    The settings themselves, not the config file's path: a worker (re)started after
    someone edited the file, and before serve accepted the edit with a reload, must
    run what serve runs. JSON read back through `config.from_mapping`, so the worker
    checks them as if read from a file (paths in them are already absolute).
    """
    sections = {
        name: value
        for name, value in dataclasses.asdict(settings).items()
        if name != "base_dir" and value is not None
    }
    data = json.dumps({"base_dir": settings.base_dir, "sections": sections}).encode()
    return len(data).to_bytes(_LENGTH, "big") + data


class OrderPipe:
    """Serve's end of the bargain, read on a worker's stdin: frames and order bytes.

    Reads the file descriptor directly (no read-ahead buffer of its own to lose a
    frame in); end of file means serve is gone, and the process exits at once.
    """

    def __init__(self, fd: int = 0) -> None:
        self._fd = fd
        self._buffer = bytearray()

    def settings(self) -> Settings:
        """The next frame: the settings serve runs with."""
        length = int.from_bytes(self._exactly(_LENGTH), "big")
        data = json.loads(self._exactly(length))
        return config.from_mapping(data["sections"], base_dir=Path(data["base_dir"]))

    def orders(self) -> bytes:
        """The order bytes that arrived (at least one); a RELOAD ends them, its frame next."""
        if not self._buffer:
            self._fill()
        end = self._buffer.find(RELOAD)
        end = len(self._buffer) if end < 0 else end + 1
        orders = bytes(self._buffer[:end])
        del self._buffer[:end]
        return orders

    def _exactly(self, n: int) -> bytes:
        while len(self._buffer) < n:
            self._fill()
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    def _fill(self) -> None:
        try:
            data = os.read(self._fd, 65536)
        except OSError:
            data = b""
        if not data:
            _parent_gone()
        self._buffer += data


def beat_for_serve() -> None:
    """Under serve: tell it that this process runs, one byte a second from a thread of
    its own, on the pipe serve handed over (`workerpool.py` ends a worker that falls
    silent and spends no CPU for a lease: stopped or frozen). No pipe: nothing to do."""
    fd = os.environ.pop(HEARTBEAT_FD, "")
    if not fd.isdigit():
        return
    os.set_blocking(int(fd), False)  # serve behind in reading never blocks the beat
    threading.Thread(target=_beat, args=(int(fd),), name="heartbeat", daemon=True).start()


def _beat(fd: int) -> None:
    while True:
        try:
            os.write(fd, b".")
        except BlockingIOError:
            pass  # serve has not read the last beats yet: it knows we ran
        except OSError:
            return  # serve is gone: the order pipe's end of file ends this process
        time.sleep(HEARTBEAT_SECONDS)


def _parent_gone() -> NoReturn:
    # serve died without telling us (SIGKILL): whatever we hold is released by the
    # next serve or runs out with its lease; finishing it could race them.
    log.warning("worker %d: serve is gone; exiting now", os.getpid())
    os._exit(1)


class Worker:
    def __init__(self, services: Services, *, claim_batch: int = CLAIM_BATCH) -> None:
        self.services = services
        self.claim_batch = claim_batch
        self._inbound = threading.Event()
        self._outbox = threading.Event()
        self._stop = threading.Event()
        self._empty_queue = False
        self._claim_until = 0.0  # monotonic; while draining, no new claim after it
        # The processing thread's transactions claim mail for the sender.
        self._handoff = Handoff(services.clock, HANDOFF_BATCH, self._outbox.set)
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
        """Finish what is held and exit; with `empty_queue`, process what is due first
        (for `DRAIN_CLAIM_SECONDS` at most)."""
        if empty_queue and not self._stop.is_set():
            self._empty_queue = True
            self._claim_until = time.monotonic() + DRAIN_CLAIM_SECONDS
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
        processor.warm_up()
        failing = Outage(log, "processing")  # a database away fails every sweep
        while True:
            self._inbound.clear()  # a wake from now on is seen by the wait below
            if self._stop.is_set() and not (
                self._empty_queue and time.monotonic() < self._claim_until
            ):
                return
            try:
                result = processor.process_pending(self.claim_batch)
            except Exception as exc:
                if self._stop.is_set():
                    # Stopping, and the database fails: what is accepted stays stored
                    # for the next start, so waiting out the drain time gains nothing.
                    log.exception("processing failed while stopping; the rest waits for a restart")
                    return
                failing.failed(exc)
                self._inbound.wait(SWEEP_SECONDS)
                continue
            failing.succeeded()
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
        handoff = sender.handoff = self._handoff
        self.services.processor.handoff = handoff
        failing = Outage(log, "sending")
        try:
            while not self._stop.is_set():
                self._outbox.clear()
                # While processing hands mail over, what is due comes that way: wait
                # for the next batch (woken by it) rather than claim, for a sweep's
                # time after the last one at most.
                fed = handoff.feeding(SWEEP_SECONDS)
                try:
                    handled = sender.send_due(SEND_BATCH, claim=not fed)
                    due = None if handled or fed else sender.next_due()
                except Exception as exc:
                    failing.failed(exc)
                    handled, due = 0, None
                else:
                    failing.succeeded()
                if not handled:
                    self._outbox.wait(fed or self._seconds_until(due))
        finally:
            # Batches handed over and not sent are due again at once (one whose claim
            # was under way as this ran runs out with its lease).
            handoff.close()
            while (left := handoff.take()) is not None:
                try:
                    sender.give_back(left)
                except Exception:
                    log.exception("giving back %d outbox rows failed", len(left.rows))
            sender.transport.close()

    def _seconds_until(self, due: datetime | None) -> float:
        """How long the sender may sleep: until the next retry is due, at most a sweep."""
        if due is None:
            return SWEEP_SECONDS
        seconds = (due - self.services.clock.now()).total_seconds()
        return min(max(seconds, 0.05), SWEEP_SECONDS)


# -- one worker process (`maildesk worker`) ------------------------------------------------


def run_process(
    services: Services,
    *,
    pipe: OrderPipe | None,
    reload: Callable[[], object],
    apply: Callable[[Settings], object],
) -> None:
    """Run one worker until SIGTERM/SIGINT (finish what is held) and return.

    `pipe`: stdin is a pipe from the `serve` that started this process (its
    settings frame already read). Each byte is an order: `WAKE`, `DRAIN` or
    `RELOAD` (then `apply` the settings that follow); end of file means serve is
    gone (killed), and this process exits at once: its claims run out after one
    lease, and on SQLite the restarted serve frees them at start. A worker of its
    own re-reads the config and the templates on SIGHUP (`reload`).
    """
    if pipe is not None:
        _die_with_parent()
        # Ctrl-C reaches the whole process group, and a reload is serve's to check:
        # serve orders the drain, and passes a reload on (RELOAD) once it applied one.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # A stage stuck on one message (in C code, the whole process) ends this process,
    # and whoever started it starts another: serve, or the unit's Restart=.
    services.processor.watchdog.start()
    worker = Worker(services).start()
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    if pipe is not None:
        orders = threading.Thread(target=_read_orders, args=(worker, pipe, apply), name="orders")
        orders.daemon = True
        orders.start()
    else:
        signal.signal(signal.SIGINT, lambda *_: worker.stop())
        signal.signal(signal.SIGHUP, lambda *_: threading.Thread(target=reload).start())
    log.info("worker %d ready: processing and sending", os.getpid())
    # join() in short steps: the main thread must come back to Python for the
    # signal handlers to run.
    while not worker.join(0.5):
        pass
    log.info("worker %d stopped", os.getpid())


def _read_orders(worker: Worker, pipe: OrderPipe, apply: Callable[[Settings], object]) -> None:
    while True:
        orders = pipe.orders()
        if DRAIN in orders:
            worker.stop(empty_queue=True)
        if WAKE in orders:
            worker.wake()
        if RELOAD in orders:
            settings = pipe.settings()
            try:
                apply(settings)
            except Exception:
                log.exception("applying the reloaded configuration failed; the running one stays")


def run_at_niceness(nice: int) -> None:
    """Lower this process's CPU priority to `nice` (`[workers] nice`); never raise it.

    Linux keeps the nice value per thread and a new thread inherits its creator's,
    so every thread alive now is set, and the ones started later follow. Already
    nicer (a unit's `Nice=`, `nice maildesk worker`): left as it is. Refused (a
    seccomp filter without setpriority): the worker runs anyway and the log says so.
    0 (the default) leaves the priority it was started with.
    """
    if nice <= 0:
        return
    try:
        threads = [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:
        threads = [0]  # no /proc: the calling thread, before any other starts
    for tid in threads:
        try:
            if os.getpriority(os.PRIO_PROCESS, tid) < nice:
                os.setpriority(os.PRIO_PROCESS, tid, nice)
        except ProcessLookupError:
            continue  # that thread ended meanwhile
        except OSError as exc:
            log.warning(
                "worker %d cannot lower its priority to nice %d (%s): it competes with "
                "serve's SMTP for the CPU as an equal",
                os.getpid(),
                nice,
                exc.strerror,
            )
            return


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
