"""Processes that process imported mail for `maildesk import` (`--processes N`).

Each is a fresh interpreter (multiprocessing's spawn: no database connection or
lock crosses a fork) that builds its own services from the import's settings,
then waits for orders on a pipe. `DrainPool.start` asks every idle process to
process what is due; `DrainPool.wait` returns once every process found nothing
more due. The importer stores one round at a time and waits between rounds
(`importer.rounds`: a wave, or small waves in a row for one process), so the
processes never hold a reply whose parent another process has not committed yet.

A process claims a whole stored batch at a time (`CLAIM`), so the processes take
the batches in turns, or its even share of a round too small to give each process
batches (`claim_for`); the claims are the spool's ordinary claims with leases, so
a process that dies leaves its rows due again for whoever processes next.

The import's own process processes nothing: an archive is a stranger's mail, and
a message that sticks a parser (in C code, a whole process) must end a process
the import can replace, as serve replaces its workers. Each process watches
itself (`maildesk/watchdog.py`); one that ended itself is replaced, and once
its claims' lease ran out what it held is processed again, each row alone: the
stuck message is quarantined after its attempts, the rest is processed.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from maildesk.config import Settings
from maildesk.inbound.importer import BATCH
from maildesk.watchdog import ended_itself

log = logging.getLogger("maildesk.import")

# Rows a process claims at a time: a batch as the importer stores it. Each claim is a
# transaction with a commit (an fsync) at SQLite's one writer, taken in turns: with
# claims of 16 the processes waited a fifth of their time for each other's commits,
# and an import took a quarter longer. Nor are even shares of each batch as fast:
# processes that claim at once prepare at once, then wait for each other's write,
# where whole batches leave one preparing while the other writes.
CLAIM = BATCH


def claim_for(round_size: int, processes: int) -> int:
    """What each of `processes` claims at a time in a round of `round_size` messages:
    whole batches, or its even share of a round smaller than a batch each, which one
    claim of a whole batch would leave to a single process."""
    return max(1, min(CLAIM, -(-round_size // processes)))


_STOP = "stop"
_DRAIN = "drain"
# A process's answer to a drain: the count of each batch as it is processed (so what
# a process processed before it stuck on a message is counted), then this.
_DRAINED = "drained"


class ImportFailed(Exception):
    """A processing process failed or died; what it said is the message."""


def drain(process_pending: Callable[[int], int], claim: int) -> int:
    """Claim and process `claim` rows at a time until none is due; how many were."""
    done = 0
    while processed := process_pending(claim):
        done += processed
    return done


def _serve(settings: Settings, log_level: str, orders: Connection) -> None:
    from maildesk import logs
    from maildesk.services import build

    logs.configure(log_level)  # a spawned interpreter has no handler: log as the import does
    services = build(settings)
    services.processor.watchdog.start()  # the target runs in this process's main thread

    def process_pending(claim: int) -> int:
        processed = services.processor.process_pending(batch=claim).processed
        if processed:
            orders.send(processed)
        return processed

    try:
        while (order := orders.recv())[0] == _DRAIN:
            try:
                drain(process_pending, order[1])
            except Exception as exc:  # told to the importer, which stops
                orders.send(f"{type(exc).__name__}: {exc}")
                return
            orders.send(_DRAINED)
    finally:
        services.db.dispose()


class DrainPool:
    def __init__(self, settings: Settings, count: int) -> None:
        """`count` processes, started at the first `start`."""
        self._settings = settings
        self._count = count
        self._started = False
        self._pipes: list[Connection] = []
        self._procs: list[BaseProcess] = []
        self._busy: list[bool] = []
        self.claim = CLAIM  # rows a process claims at a time (`start`)
        self.processed = 0
        self.stuck = 0  # processes that ended themselves, stuck on a message

    @property
    def started(self) -> bool:
        return self._started

    def spawn(self) -> None:
        """Start the processes now (else at the first `start`): each takes about a
        second of its own to import and build, which the importer's first pass over
        the archive can hide."""
        if not self._started:
            self._spawn()

    def _spawn(self) -> None:
        self._started = True
        for _ in range(self._count):
            pipe, proc = self._process()
            self._pipes.append(pipe)
            self._procs.append(proc)
            self._busy.append(False)

    def _process(self) -> tuple[Connection, BaseProcess]:
        context = multiprocessing.get_context("spawn")
        log_level = logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()
        ours, theirs = context.Pipe()
        proc = context.Process(target=_serve, args=(self._settings, log_level, theirs), daemon=True)
        proc.start()
        theirs.close()
        return ours, proc

    def start(self, alone: bool = False, claim: int | None = None) -> None:
        """Ask each process that is not processing already to process what is due;
        `alone`: only the first one (rows that must go in their order). `claim`: rows
        a process claims at a time from now on (`claim_for`); one processing already
        keeps what it was given."""
        if not self.started:
            self._spawn()
        if claim is not None:
            self.claim = claim
        for slot, _pipe in enumerate(self._pipes[:1] if alone else self._pipes):
            self._answer(slot, block=False)
            if not self._busy[slot]:
                self._pipes[slot].send((_DRAIN, self.claim))
                self._busy[slot] = True

    def wait(self, alone: bool = False) -> None:
        """Return once nothing stored before this call is left due.

        A process that answered before the last rows were stored may have missed
        them: a second round finds them (and costs one empty claim when none are).
        Before the first `start` there is nothing of ours to wait for.
        """
        if not self.started:
            return
        while True:
            stuck = self.stuck
            for _round in range(2):
                self.start(alone)
                for slot in range(len(self._pipes)):
                    self._answer(slot)
            if self.stuck == stuck:
                return
            # A process ended itself, stuck: what it had claimed (the stuck message and
            # the rest of its claim) is due again once its lease runs out. Processed then,
            # each alone, so the stuck one is quarantined after its attempts and the rest
            # of the archive is not left to the daemon.
            time.sleep(self._settings.workers.lease_seconds)

    def _answer(self, slot: int, replace: bool = True, block: bool = True) -> None:
        """Count what the process in `slot` told, until the end of its drain (`block`)
        or of what it told so far."""
        pipe = self._pipes[slot]
        while self._busy[slot] and (block or pipe.poll()):
            try:
                answer = pipe.recv()
            except EOFError:
                proc = self._procs[slot]
                proc.join()
                if not (replace and ended_itself(proc.exitcode)):
                    raise ImportFailed(
                        f"processing process {proc.pid} died (exit code {proc.exitcode})"
                    ) from None
                self._replace(slot)
                return
            if isinstance(answer, int):
                self.processed += answer
            elif answer == _DRAINED:
                self._busy[slot] = False
            else:
                self._busy[slot] = False
                raise ImportFailed(answer)

    def _replace(self, slot: int) -> None:
        """A process ended itself, stuck on a message: another takes its place."""
        self.stuck += 1
        log.warning(
            "processing process %d ended itself, stuck on a message; what it held is "
            "processed again after its lease, the stuck message alone, then quarantined",
            self._procs[slot].pid,
        )
        self._pipes[slot].close()
        self._pipes[slot], self._procs[slot] = self._process()
        self._busy[slot] = False

    def close(self) -> None:
        for slot, pipe in enumerate(self._pipes):
            try:
                if self._busy[slot]:
                    self._answer(slot, replace=False)
                pipe.send((_STOP, 0))
            except (OSError, EOFError, ImportFailed):
                pass  # it is gone already
            pipe.close()
        for proc in self._procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
                proc.join()

    def __enter__(self) -> DrainPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
