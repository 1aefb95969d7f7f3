"""A worker process's hard stop: it ends itself when one message's work will not end.

The per-message budget (`pipeline/prepare.py`) is checked between stages, and the
lease keeper stops renewing a message past its hold, so another worker takes it
over and its attempts run out. Neither stops the stage itself: the stuck thread
keeps its core busy for good, and a regular expression or a `str` method runs in
C holding the GIL, so no other thread of the process runs either (not its
sender, not its lease keeper). Each such mail would take one worker, and
`MAX_ATTEMPTS` of them every worker of a small desk.

So a worker process watches itself in two ways, from one thread:

- **From Python**: each watched stage (`stage`: the processor watches the preparing
  of each message, where a stranger's bytes meet the parsers) is noted with its
  thread's CPU time at its start; one whose thread spent more than `limit`
  seconds of CPU in it ends the process with a log line naming it. CPU time,
  not wall time: a stage waiting for spamd or DNS spends none, and neither
  does a worker starved of the CPU by a busy machine (on a saturated machine
  a niced worker gets a few per cent of a core, and wall time ended healthy
  workers in a test).
- **From the kernel**: each time the thread runs it re-arms a timer of the
  process's CPU time (`ITIMER_PROF`; SIGPROF, left at its default action, which
  ends the process). It fires only when the process spent more than `limit`
  seconds of CPU with no Python running: spinning in C. CPU time, not wall
  time, so a live worker starved of the CPU by a busy machine is never ended.

Serve restarts a worker that ended (`workerpool.py`), as `maildesk import`
replaces its processing processes (`inbound/import_pool.py`); the row's lease
runs out, and its next claim counts an attempt: such a message is claimed alone
and, after `MAX_ATTEMPTS`, quarantined. Not used by serve itself (`[workers]
count = 0`): ending serve would end its listeners too.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("maildesk.watchdog")

# How a worker ends itself when a stage is past its limit (EX_SOFTWARE): serve's log
# tells it from a crash by this code, and from a process spinning in C by SIGPROF.
STUCK_EXIT = 70


def ended_itself(returncode: int | None) -> bool:
    """Whether a process with this return code was ended by its own watchdog."""
    return returncode in (STUCK_EXIT, -signal.SIGPROF)


# Times per limit the watching thread wakes: a stage is seen stuck at most a quarter
# of a limit late, and the timer is re-armed four times before it could fire.
_CHECKS_PER_LIMIT = 4


def _thread_clock() -> int:
    """The calling thread's CPU-time clock; the process's where there is none per thread."""
    if hasattr(time, "pthread_getcpuclockid"):
        return time.pthread_getcpuclockid(threading.get_ident())
    return time.CLOCK_PROCESS_CPUTIME_ID


class Watchdog:
    def __init__(self, limit: float) -> None:
        self.limit = limit
        # Each stage under way: its thread's CPU clock, that clock at its start, its name.
        self._stages: dict[int, tuple[int, float, str]] = {}
        self._next_key = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._timer = True  # the kernel's timer is armed at each check

    def start(self) -> Watchdog:
        """Watch from now on (call from the main thread: it sets SIGPROF's action)."""
        signal.signal(signal.SIGPROF, signal.SIG_DFL)
        try:
            self._arm()
        except OSError as exc:  # a seccomp filter without setitimer: watch from Python alone
            log.warning(
                "worker %d cannot set a CPU timer (%s): a stage stuck in C code will not end it",
                os.getpid(),
                exc,
            )
            self._timer = False
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
        self._thread.start()
        return self

    @contextmanager
    def stage(self, what: str) -> Iterator[None]:
        """Watch the enclosed work: past `limit`, a started watchdog ends the process.

        `what` names it in the log line ("preparing inbound 42"). Cheap enough for every
        message; an unstarted watchdog only notes it."""
        clock = _thread_clock()
        started = time.clock_gettime(clock)
        with self._lock:
            key = self._next_key
            self._next_key += 1
            self._stages[key] = (clock, started, what)
        try:
            yield
        finally:
            with self._lock:
                del self._stages[key]

    def overdue(self) -> tuple[float, str] | None:
        """The stage that spent the most CPU past `limit` (seconds, its name), if any."""
        with self._lock:
            stages = list(self._stages.values())
        late = []
        for clock, started, what in stages:
            try:
                spent = time.clock_gettime(clock) - started
            except OSError:  # its thread ended since: so did the stage
                continue
            if spent > self.limit:
                late.append((spent, what))
        return max(late, default=None)

    def _run(self) -> None:
        while True:
            time.sleep(self.limit / _CHECKS_PER_LIMIT)
            if self._timer:
                self._arm()
            late = self.overdue()
            if late is not None:
                seconds, what = late
                log.error(
                    "worker %d: %s has used %.0f s of CPU (the limit is %.0f s, twice "
                    "[workers] message_seconds and the waits); ending this worker so that it "
                    "stops, and the message is tried again alone, then quarantined",
                    os.getpid(),
                    what,
                    seconds,
                    self.limit,
                )
                os._exit(STUCK_EXIT)

    def _arm(self) -> None:
        # The limit past the next check: only CPU spent while this thread could not run
        # for at least `limit` makes it fire. (The process's threads together may spend
        # CPU faster than the wall clock runs: two busy threads, twice as fast, which
        # a quarter of the limit between checks leaves room for.)
        signal.setitimer(signal.ITIMER_PROF, self.limit + self.limit / _CHECKS_PER_LIMIT)
