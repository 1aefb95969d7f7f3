"""Processes that process imported mail beside `maildesk import` (`--processes N`).

Each is a fresh interpreter (multiprocessing's spawn: no database connection or
lock crosses a fork) that builds its own services from the import's settings,
then waits for orders on a pipe. `DrainPool.start` asks every idle process to
process what is due; `DrainPool.wait` returns once every process found nothing
more due. The importer stores one wave at a time and waits between waves
(`importer.waves`), so the processes never hold a reply whose parent another
process has not committed yet.

Claims are short (`CLAIM`) so that the processes finish a wave together; they
are the spool's ordinary claims with leases, so a process that dies leaves its
rows due again for whoever processes next.

The import's own process is one of the N: while a wave is processed it has
nothing else to do, so at each wait it processes beside the others
(`here`), and one interpreter fewer is started.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from maildesk.config import Settings

CLAIM = 16

_STOP = "stop"
_DRAIN = "drain"


class ImportFailed(Exception):
    """A processing process failed or died; what it said is the message."""


def drain(process_pending: Callable[[int], int]) -> int:
    """Claim and process `CLAIM` rows at a time until none is due; how many were."""
    done = 0
    while processed := process_pending(CLAIM):
        done += processed
    return done


def _serve(settings: Settings, log_level: str, orders: Connection) -> None:
    from maildesk import logs
    from maildesk.services import build

    logs.configure(log_level)  # a spawned interpreter has no handler: log as the import does
    services = build(settings)
    try:
        while orders.recv() == _DRAIN:
            try:
                done = drain(lambda n: services.processor.process_pending(batch=n).processed)
            except Exception as exc:  # told to the importer, which stops
                orders.send(f"{type(exc).__name__}: {exc}")
                return
            orders.send(done)
    finally:
        services.db.dispose()


class DrainPool:
    def __init__(self, settings: Settings, count: int, here: Callable[[], int]) -> None:
        """`count` processes in all, this one included: `here` processes in this one."""
        self._settings = settings
        self._count = count - 1
        self._here = here
        self._started = False
        self._pipes: list[Connection] = []
        self._procs: list[BaseProcess] = []
        self._busy: list[bool] = []
        self.processed = 0

    @property
    def started(self) -> bool:
        return self._started

    def _spawn(self) -> None:
        """The processes, at the first mail to process: a re-run that stores nothing
        starts none (each costs an interpreter and its imports)."""
        self._started = True
        context = multiprocessing.get_context("spawn")
        log_level = logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()
        for _ in range(self._count):
            ours, theirs = context.Pipe()
            proc = context.Process(
                target=_serve, args=(self._settings, log_level, theirs), daemon=True
            )
            proc.start()
            theirs.close()
            self._pipes.append(ours)
            self._procs.append(proc)
            self._busy.append(False)

    def start(self) -> None:
        """Ask each process that is not processing already to process what is due."""
        if not self.started:
            self._spawn()
        for slot, pipe in enumerate(self._pipes):
            if self._busy[slot] and pipe.poll():
                self._answer(slot)
            if not self._busy[slot]:
                pipe.send(_DRAIN)
                self._busy[slot] = True

    def wait(self) -> None:
        """Return once nothing stored before this call is left due.

        A process that answered before the last rows were stored may have missed
        them: a second round finds them (and costs one empty claim when none are).
        Before the first `start` there is nothing of ours to wait for.
        """
        if not self.started:
            return
        for _round in range(2):
            self.start()
            self.processed += self._here()
            for slot in range(len(self._pipes)):
                self._answer(slot)

    def _answer(self, slot: int) -> None:
        if not self._busy[slot]:
            return
        try:
            answer = self._pipes[slot].recv()
        except EOFError:
            raise ImportFailed(
                f"processing process {self._procs[slot].pid} died "
                f"(exit code {self._procs[slot].exitcode})"
            ) from None
        self._busy[slot] = False
        if isinstance(answer, str):
            raise ImportFailed(answer)
        self.processed += answer

    def close(self) -> None:
        for slot, pipe in enumerate(self._pipes):
            try:
                if self._busy[slot]:
                    self._answer(slot)
                pipe.send(_STOP)
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
