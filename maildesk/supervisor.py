"""The running daemon as its service manager sees it: ready, status, watchdog, reload.

Decides:
- **When it is ready**: the daemon calls `ready()` once every listener is bound
  and the database has answered (app.py); systemd then counts the start done.
- **What status it shows** (`systemctl status`): "12 pending, 0 quarantined,
  3 to send", refreshed every few seconds from the database (a deferred read,
  never the write lock), in a thread so a slow query never delays a watchdog
  ping. The counts come from the database, not from this process, so they stay
  true when processing and sending run in worker processes (or other instances).
- **That the loop is alive**: `WATCHDOG=1` from a task on the event loop itself, at
  half of `WatchdogSec=`. A loop that hangs stops pinging, and systemd restarts it.
- **What a reload changes** (SIGHUP, `systemctl reload`): the config file and the
  templates are read and checked first; anything invalid is refused in one
  error line and the running version stays. A valid new config applies
  `[log] level`, `[templates]` and `[agents] addresses` at once; a change to a
  section that needs new sockets or a new database (see `RESTART_SECTIONS`)
  is reported as needing a restart. SMTP sessions are never touched.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from maildesk import logs, template_files
from maildesk.inbound.room import for_settings
from maildesk.sdnotify import Notifier

if TYPE_CHECKING:
    from maildesk.config import Settings
    from maildesk.services import Services

log = logging.getLogger("maildesk.supervisor")

STATUS_EVERY_SECONDS = 5.0
# Reloadable at once: read each time they are used, or handed over below.
RELOAD_SECTIONS = ("log", "templates", "agents")


class Supervisor:
    def __init__(self, services: Services, config_path: Path | None, notifier: Notifier) -> None:
        self.services = services
        self.config_path = config_path
        self.notifier = notifier
        self._tasks: set[asyncio.Task[None]] = set()

    # -- readiness, status, watchdog ------------------------------------------------

    async def ready(self) -> None:
        status = await asyncio.get_running_loop().run_in_executor(None, self.status_line)
        self.notifier.ready(status)
        log.info("ready: %s", status)

    def status_line(self) -> str:
        """'12 pending, 0 quarantined, 3 to send', or why there are no counts."""
        from maildesk.inbound import store
        from maildesk.outbound import outbox
        from maildesk.states import InboundState, OutboxState

        try:
            with self.services.db.reading() as session:  # every 5 s: the waiting rows only
                spool = store.counts(session, states=store.WAITING)
                unsent = outbox.counts(session, outbox.WAITING)
        except Exception as exc:
            return f"database unavailable ({type(exc).__name__})"
        return (
            f"{spool[InboundState.PENDING]} pending, {spool[InboundState.QUARANTINED]} "
            f"quarantined, {unsent[OutboxState.PENDING]} to send"
        )

    def start(self) -> None:
        """Start pinging the watchdog and refreshing the status (both only under systemd)."""
        if not self.notifier.enabled:
            return
        if self.notifier.watchdog_seconds:
            self._spawn(self._watchdog(self.notifier.watchdog_seconds / 2), "maildesk-watchdog")
        self._spawn(self._status(), "maildesk-status")

    async def _watchdog(self, every: float) -> None:
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(every)

    async def _status(self) -> None:
        loop = asyncio.get_running_loop()
        last = ""
        while True:
            await asyncio.sleep(STATUS_EVERY_SECONDS)
            line = await loop.run_in_executor(None, self.status_line)
            if line != last:
                self.notifier.status(line)
                last = line

    def stopping(self) -> None:
        self.notifier.stopping()
        for task in list(self._tasks):
            if task.get_name() == "maildesk-status":
                task.cancel()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coro: object, name: str | None = None) -> None:
        assert asyncio.iscoroutine(coro)
        task = asyncio.get_running_loop().create_task(coro)
        if name:
            task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- reload -----------------------------------------------------------------

    def request_reload(self, applied: Callable[[], None] | None = None) -> None:
        """SIGHUP: reload in the background; the event loop keeps serving meanwhile.

        `applied` runs once a valid new config is in force (serve then tells its
        worker processes to read it too, so only serve reports an invalid one).
        """
        self._spawn(self._reload_then(applied), "maildesk-reload")

    async def _reload_then(self, applied: Callable[[], None] | None) -> None:
        if await self.reload() and applied is not None:
            applied()

    async def reload(self) -> bool:
        """Re-read the config and the templates; True when the new ones were applied."""
        self.notifier.send(
            RELOADING="1",
            STATUS="reloading the configuration",
            MONOTONIC_USEC=str(time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000),
        )
        loop = asyncio.get_running_loop()
        try:
            new = await loop.run_in_executor(None, self._load_and_check)
            if new is not None:
                await loop.run_in_executor(None, self.apply, new)
            return new is not None
        finally:
            await self.ready()

    def reload_now(self) -> bool:
        """`reload` for a process without an event loop (a worker, on SIGHUP)."""
        new = self._load_and_check()
        if new is not None:
            self.apply(new)
        return new is not None

    def _load_and_check(self) -> Settings | None:
        from maildesk import config
        from maildesk.startup import StartupError, check_templates

        current = self.services.settings
        try:
            new = config.load(self.config_path) if self.config_path else current
            check_templates(new)
        except (config.ConfigError, StartupError) as exc:
            log.error("reload refused, the running configuration stays: %s", exc)
            return None
        return new

    def apply(self, new: Settings) -> None:
        """Put checked settings in force: what can change at once does, the rest waits."""
        from maildesk.tickets.agents import Agents

        old = self.services.settings
        changed = [
            f.name
            for f in dataclasses.fields(old)
            if f.name != "base_dir" and getattr(old, f.name) != getattr(new, f.name)
        ]
        # The reserve for new mail applies at once (inbound/room.py): an operator lowers
        # it to take mail again while freeing space, with no restart to drain sessions.
        old_with_reserve = dataclasses.replace(
            old.limits, accept_min_free_mb=new.limits.accept_min_free_mb
        )
        needs_restart = [
            name
            for name in changed
            if name not in RELOAD_SECTIONS and (name != "limits" or old_with_reserve != new.limits)
        ]
        logs.set_level(new.log.level)
        if old_with_reserve != old.limits:
            room = for_settings(new)
            self.services.store.room = room
        if new.templates != old.templates:
            self.services.renderer.use_path(new.templates.path)
        # The templates were just checked: the next mail has the admin's edit, not
        # the version a look up to a second old found (template_files.py).
        template_files.look_again()
        if new.agents.addresses != old.agents.addresses:
            with self.services.db.transaction() as session:
                Agents(session).seed(new.agents.addresses, self.services.clock.now())
        kept = {name: getattr(old, name) for name in needs_restart}
        if "limits" in kept:  # the other caps wait for the restart; the reserve did not
            kept["limits"] = old_with_reserve
        self.services.settings = dataclasses.replace(new, **kept)
        if needs_restart:
            log.warning(
                "reloaded; changes to %s need a restart (systemctl restart maildesk)",
                ", ".join(f"[{name}]" for name in needs_restart),
            )
        else:
            log.info("reloaded the configuration and the templates")
