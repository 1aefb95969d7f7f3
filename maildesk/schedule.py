"""When serve runs the scheduled jobs (`jobs.py`), and that it waits for them to stop.

APScheduler's asyncio executor runs a plain function in the loop's thread pool,
and its shutdown cannot wait for it: it cancels the asyncio future, while the
thread goes on with its transaction. Serve would then return (and dispose of its
database) with a job still writing, holding row and table locks that whoever
comes next waits for (a schema migration, a `DROP SCHEMA`). So each job here is
a coroutine that runs the function in a thread and is counted while it runs;
`stop` lets no job start any more and waits for the running ones to commit.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from maildesk import jobs

if TYPE_CHECKING:
    from maildesk.services import Services

log = logging.getLogger("maildesk.jobs")


class Schedule:
    def __init__(self, services: Services) -> None:
        self.services = services
        self._scheduler: AsyncIOScheduler | None = None
        self._running: dict[asyncio.Task[None], str] = {}
        self._stopped = False
        self._halt = threading.Event()  # for a job that can stop between batches (purge)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        settings = self.services.settings
        scheduler = AsyncIOScheduler(event_loop=loop)
        # Jobs keep their state in the database, so re-adding them at start is all
        # it takes to survive a restart.
        self._add(
            scheduler,
            "autoclose",
            jobs.autoclose,
            "interval",
            minutes=jobs.AUTOCLOSE_EVERY_MINUTES,
            next_run_time=datetime.now(UTC),
        )
        self._add(
            scheduler,
            "purge",
            functools.partial(jobs.purge, stopping=self._halt.is_set),
            "interval",
            minutes=jobs.PURGE_EVERY_MINUTES,
            # Soon after a start (not at once: starting is busy enough), then hourly.
            next_run_time=datetime.now(UTC) + timedelta(minutes=5),
        )
        if settings.sla.enabled:
            self._add(scheduler, "sla", jobs.sla, "interval", minutes=jobs.SLA_EVERY_MINUTES)
        if settings.agents.digest_time:
            hour, minute = (int(part) for part in settings.agents.digest_time.split(":"))
            self._add(scheduler, "digest", jobs.digest, "cron", hour=hour, minute=minute)
        scheduler.start()
        self._scheduler = scheduler

    async def stop(self) -> None:
        """Start no job any more; return once the running ones have finished.

        Not bounded by the drain time: a job is one transaction, or (the purge) short
        batches that stop at the next one; cutting a job would leave its thread
        running all the same.
        """
        self._stopped = True
        self._halt.set()
        if self._running:
            names = ", ".join(sorted(set(self._running.values())))
            log.info("stopping: waiting for the scheduled jobs running now (%s)", names)
            await asyncio.wait(list(self._running))
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)  # nothing of ours is left to cancel

    def _add(
        self,
        scheduler: AsyncIOScheduler,
        name: str,
        job: Callable[[Services], object],
        trigger: str,
        **when: Any,
    ) -> None:
        run = jobs.one_instance(name, job)
        services = self.services

        async def scheduled() -> None:
            if self._stopped:
                return
            task = asyncio.current_task()
            assert task is not None
            self._running[task] = name
            try:
                await asyncio.get_running_loop().run_in_executor(None, run, services)
            finally:
                del self._running[task]

        scheduler.add_job(scheduled, trigger, id=name, name=name, **when)
