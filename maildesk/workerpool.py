"""Serve's worker processes: start `[workers] count` of them, wake them, restart, drain.

Each worker is `maildesk --config PATH worker --under-serve`, a child of serve
(`worker.py` says what it does). Serve keeps a pipe to each child's stdin:

- **Wake**: when serve stores mail it writes one byte (`WAKE`) to every child,
  coalesced to one write per event-loop turn, so the next claim starts within
  a millisecond of the 250 instead of at the next sweep. We chose the pipe over
  PostgreSQL's LISTEN/NOTIFY because it works the same on SQLite, costs no
  database round trip per message and needs no connection per worker; mail
  stored by other processes (`maildesk deliver`, another instance) is found by
  the workers' 2-second sweep. A standalone `maildesk worker` (a unit of its
  own) has no pipe and relies on that sweep alone.
- **Restart**: a child that exits while serve runs (one that ended itself as
  stuck on a message included: `watchdog.py`) is started again after a
  back-off (1 s, doubling up to 30 s while it keeps dying within a minute),
  and the log says so. Its claims are due again after one lease
  (`[workers] lease_seconds`), whoever claims them next.
- **Frozen**: each child writes a byte every second on a pipe of its own (its
  heartbeat, `worker.beat_for_serve`). A child that sent none and spent no CPU
  for a whole lease is not running (SIGSTOP, a debugger left attached, a frozen
  cgroup) and is SIGKILLed, then restarted as above: its claims are lost by then
  anyway, and on SQLite one frozen inside a write transaction kept the write lock,
  so every other worker's claims and serve's jobs failed until someone killed it.
  A child that spends CPU without beating (C code holding the GIL) is its own
  watchdog's to judge, in CPU time.
- **Settings**: a child gets the settings serve runs with through the pipe,
  first thing, not from the config file: one restarted after someone edited
  the file, before serve accepted the edit, runs what serve runs.
- **Reload**: once serve has applied a new config (SIGHUP), it writes `RELOAD`
  and the settings now in force; each child applies them and re-reads the
  templates.
- **Drain**: at SIGTERM serve first closes its listeners, then writes `DRAIN`:
  each child processes what is due, sends what it holds and exits. What is left
  when the drain time runs out is SIGKILLed and waits, stored, for the next start.
- **Parent death**: a child exits when its stdin reaches end of file, and on
  Linux the kernel kills it when serve dies (`worker._die_with_parent`), so a
  SIGKILLed serve leaves no orphan working beside its successor.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from maildesk.config import Settings
from maildesk.watchdog import STUCK_EXIT, ended_itself
from maildesk.worker import DRAIN, HEARTBEAT_FD, RELOAD, WAKE, frame

log = logging.getLogger("maildesk.workers")

FIRST_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 30.0
# A child that lived this long before dying starts the back-off afresh.
STABLE_SECONDS = 60.0
# How often serve looks for children that stopped running (see "Frozen" above).
FROZEN_CHECK_SECONDS = 1.0
# Environment a child must not inherit: it is not the service systemd watches.
_NOT_INHERITED = ("NOTIFY_SOCKET", "WATCHDOG_PID", "WATCHDOG_USEC", "LISTEN_FDS", "LISTEN_PID")


def worker_command(config_path: Path, verbose: bool) -> list[str]:
    """The command line of one child: this interpreter, this config, this code.

    `-P`: `python -m` would put serve's working directory first on the module path,
    so a `maildesk` folder there (a checkout, or anything written to the service's
    directory) would be what the workers run, not what serve runs."""
    command = [sys.executable, "-P", "-m", "maildesk", "--config", str(config_path.resolve())]
    if verbose:
        command.append("-v")
    return [*command, "worker", "--under-serve"]


class _Child:
    """One slot of the pool: the process now in it and its restart state."""

    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.proc: asyncio.subprocess.Process | None = None
        self.started = 0.0
        self.backoff = FIRST_BACKOFF_SECONDS
        self.restarts = 0
        self.stuck = 0  # times its process ended itself, stuck on a message (watchdog.py)
        self.heartbeat: int | None = None  # serve's end of its heartbeat pipe
        self.beaten = False  # a heartbeat came since the last check
        self.cpu: int | None = None  # its CPU time at the last check (clock ticks)
        self.quiet = 0  # checks in a row that saw it neither beat nor spend CPU
        self.frozen = False  # ended by serve for not running (not killed twice)


class WorkerPool:
    def __init__(self, count: int, command: list[str], settings: Callable[[], Settings]) -> None:
        self.command = command
        self.settings = settings  # the settings in force now (they change at a reload)
        self._children = [_Child(slot) for slot in range(count)]
        self._watchers: list[asyncio.Task[None]] = []
        self._stopping = False
        self._wake_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def running(self) -> int:
        """Children alive now (/metrics: maildesk_worker_processes)."""
        return sum(1 for c in self._children if c.proc is not None and c.proc.returncode is None)

    @property
    def restarts(self) -> int:
        return sum(c.restarts for c in self._children)

    @property
    def stuck(self) -> int:
        """Children that ended themselves, stuck on a message (/metrics)."""
        return sum(c.stuck for c in self._children)

    def pids(self) -> list[int]:
        return [c.proc.pid for c in self._children if c.proc and c.proc.returncode is None]

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for child in self._children:
            await self._spawn(child)
            self._watchers.append(asyncio.create_task(self._watch(child)))
        self._watchers.append(asyncio.create_task(self._end_frozen()))
        log.info("started %d worker processes: %s", len(self._children), self.pids())

    async def _spawn(self, child: _Child) -> None:
        env = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
        env["MAILDESK_SERVE_PID"] = str(os.getpid())
        heartbeat, beat_end = os.pipe()
        env[HEARTBEAT_FD] = str(beat_end)
        try:
            # Spawned from the event loop's thread: PR_SET_PDEATHSIG in the child fires
            # when the thread that forked it ends, and this one lives as long as serve.
            child.proc = await asyncio.create_subprocess_exec(
                *self.command, stdin=asyncio.subprocess.PIPE, env=env, pass_fds=(beat_end,)
            )
        except BaseException:
            os.close(heartbeat)
            raise
        finally:
            os.close(beat_end)
        self._listen(child, heartbeat)
        child.started = self._now()
        child.beaten, child.cpu, child.quiet, child.frozen = False, None, 0, False
        # The settings in force, not the file: it may hold an edit serve has not accepted.
        assert child.proc.stdin is not None
        child.proc.stdin.write(frame(self.settings()))

    def _listen(self, child: _Child, heartbeat: int) -> None:
        """Note each heartbeat `child` writes on the pipe `heartbeat` (serve's end)."""
        assert self._loop is not None
        self._forget_heartbeat(child)
        os.set_blocking(heartbeat, False)
        child.heartbeat = heartbeat
        self._loop.add_reader(heartbeat, self._beat, child, heartbeat)

    def _beat(self, child: _Child, heartbeat: int) -> None:
        try:
            data = os.read(heartbeat, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            child.beaten = True
        elif child.heartbeat == heartbeat:  # end of file: that process is gone
            self._forget_heartbeat(child)

    def _forget_heartbeat(self, child: _Child) -> None:
        if child.heartbeat is not None and self._loop is not None:
            self._loop.remove_reader(child.heartbeat)
            os.close(child.heartbeat)
        child.heartbeat = None

    async def _end_frozen(self) -> None:
        """Kill each child that stopped running (see "Frozen" above): serve restarts it."""
        while True:
            await asyncio.sleep(FROZEN_CHECK_SECONDS)
            lease = self.settings().workers.lease_seconds
            for child in self._children:
                self._end_if_frozen(child, math.ceil(lease / FROZEN_CHECK_SECONDS))

    def _end_if_frozen(self, child: _Child, checks: int) -> None:
        """Kill `child` once `checks` checks in a row found it silent and idle. Checks,
        not seconds: a paused machine stops serve too, and when it resumes, its workers
        may run a moment after serve's first check."""
        proc = child.proc
        if proc is None or proc.returncode is not None or child.frozen:
            return
        cpu = _cpu_ticks(proc.pid)
        # Spending CPU without beating (C code holding the GIL) is its watchdog's to judge.
        if child.beaten or cpu != child.cpu:
            child.beaten, child.cpu, child.quiet = False, cpu, 0
            return
        child.quiet += 1
        if child.quiet < checks:
            return
        log.error(
            "worker %d (pid %d) has not run for %.0f s (stopped or frozen: SIGSTOP, a "
            "debugger?); killing it, as its claims ran out and on SQLite it may hold the "
            "write lock every other worker waits for",
            child.slot,
            proc.pid,
            child.quiet * FROZEN_CHECK_SECONDS,
        )
        child.frozen = True
        proc.kill()

    async def _watch(self, child: _Child) -> None:
        while True:
            assert child.proc is not None
            code = await child.proc.wait()
            if self._stopping:
                return
            lived = self._now() - child.started
            if ended_itself(code):
                child.stuck += 1
            if lived >= STABLE_SECONDS:
                child.backoff = FIRST_BACKOFF_SECONDS
            log.error(
                "worker %d (pid %d) exited with %s after %.0f s; restarting in %.0f s "
                "(its claims are due again after one lease)",
                child.slot,
                child.proc.pid,
                _describe(code),
                lived,
                child.backoff,
            )
            await asyncio.sleep(child.backoff)
            child.backoff = min(child.backoff * 2, MAX_BACKOFF_SECONDS)
            if self._stopping:
                return
            try:
                await self._spawn(child)
            except OSError:
                log.exception("worker %d could not be started; trying again", child.slot)
                continue
            child.restarts += 1
            log.info("worker %d restarted as pid %d", child.slot, child.proc.pid)

    def stop_restarting(self) -> None:
        """Serve is stopping: a child that exits now stays down."""
        self._stopping = True

    def wake(self) -> None:
        """Tell every child that mail is stored; callable from any thread."""
        loop = self._loop
        if loop is None or self._wake_scheduled:
            return
        self._wake_scheduled = True  # one write per loop turn, however many messages
        loop.call_soon_threadsafe(self._send_wake)

    def _send_wake(self) -> None:
        self._wake_scheduled = False
        self._write(WAKE)

    def _write(self, order: bytes, always: bool = False) -> None:
        for child in self._children:
            proc = child.proc
            if proc is None or proc.returncode is not None or proc.stdin is None:
                continue
            transport = proc.stdin.transport
            if transport.is_closing():
                continue
            # A child that does not read (stuck) gets no more wakes than a page of them.
            if not always and transport.get_write_buffer_size() > 4096:
                continue
            try:
                proc.stdin.write(order)
            except (BrokenPipeError, ConnectionResetError):
                continue  # it is dying; its watcher restarts it

    def reload(self) -> None:
        """Serve applied a new config: each child gets it and re-reads the templates.

        Through the pipe, not SIGHUP: a child still starting up has no handler yet,
        and SIGHUP would kill it; what is written waits in the pipe until it reads.
        """
        self._write(RELOAD + frame(self.settings()), always=True)

    async def drain(self, timeout: float) -> None:
        """Tell the children to finish what is due and exit; kill what is left at `timeout`."""
        self._stopping = True
        for task in self._watchers:
            task.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)
        self._write(DRAIN, always=True)
        procs = [c.proc for c in self._children if c.proc and c.proc.returncode is None]
        if not procs:
            return
        await asyncio.wait(
            [asyncio.create_task(p.wait()) for p in procs], timeout=max(timeout, 0.0)
        )
        late = [p for p in procs if p.returncode is None]
        for proc in late:
            log.warning("worker pid %d did not finish in time; killed (its mail stays)", proc.pid)
            proc.kill()
        for proc in late:
            await proc.wait()
        for child in self._children:
            self._forget_heartbeat(child)
        log.info("worker processes stopped")

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()


def _cpu_ticks(pid: int) -> int | None:
    """The CPU time process `pid` has spent (user and system, clock ticks), from /proc;
    None where there is no such file (then its heartbeat alone tells that it runs)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # pid (comm) state ...: utime and stime are the 14th and 15th fields, after comm.
    fields = stat.rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])


def _describe(code: int) -> str:
    if code == -signal.SIGPROF:
        return "signal SIGPROF (its watchdog: it spun in C code, no Python running, too long)"
    if code == STUCK_EXIT:
        return f"status {code} (its watchdog: a stage on one message ran too long)"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"status {code}"
