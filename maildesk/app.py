"""Composition: builds the parts from settings, starts them, stops them.

`Services` (in `services.py`) is everything that needs no event loop;
`Daemon` adds the listeners and the two workers — the processor, which turns
stored inbound rows into tickets, and the sender, which drains the outbox —
each woken as soon as there is work, with a periodic sweep as a safety net
for rows written by other processes (`maildesk deliver`) or due for retry.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy.exc import DBAPIError

from maildesk import jobs
from maildesk.exclusive import while_holding
from maildesk.inbound.imap import ImapPoller
from maildesk.inbound.recipients import Recipients
from maildesk.inbound.smtp import InboundHandler, Listener, start_server
from maildesk.inbound.store import Envelope
from maildesk.metrics import Metrics
from maildesk.outbound import outbox
from maildesk.sdnotify import Notifier as SdNotifier
from maildesk.services import Services, build
from maildesk.startup import bind_failure, database_failure
from maildesk.supervisor import Supervisor
from maildesk.tickets.tokens import ReplyTokens
from maildesk.web.ops import start_metrics_listener
from maildesk.web.server import start_web

__all__ = ["Daemon", "Services", "build"]

log = logging.getLogger("maildesk")

SWEEP_SECONDS = 2.0
# SIGTERM: how long sessions in a transaction, then the processor, may take to finish
# (the unit's TimeoutStopSec= is 30 s).
DRAIN_SECONDS = 20.0


@dataclass
class _Wakeup:
    """An asyncio event that threads may set too."""

    loop: asyncio.AbstractEventLoop
    event: asyncio.Event = field(default_factory=asyncio.Event)

    def set(self) -> None:
        self.loop.call_soon_threadsafe(self.event.set)

    async def wait(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self.event.wait(), timeout)
        except TimeoutError:
            pass
        self.event.clear()


class Daemon:
    def __init__(
        self,
        services: Services,
        *,
        config_path: Path | None = None,
        notifier: SdNotifier | None = None,
    ) -> None:
        self.services = services
        self.settings = services.settings
        self._stopping = asyncio.Event()
        # Set once the listeners are closed: no new mail can arrive, so the processor
        # may stop as soon as nothing is pending.
        self._drained = asyncio.Event()
        # Readiness, status, watchdog and reload (SIGHUP) for the service manager.
        self.supervisor = Supervisor(services, config_path, notifier or SdNotifier())
        # This process's /metrics registry (the SMTP, IMAP and web parts count into it).
        self.metrics = Metrics(services.db, services.clock)

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        services, settings = self.services, self.settings
        inbound_ready, outbox_ready = _Wakeup(loop), _Wakeup(loop)
        try:
            await loop.run_in_executor(None, services.prepare)
        except DBAPIError as exc:
            raise database_failure(settings.database.url, exc) from exc
        await loop.run_in_executor(None, self.metrics.database.start)
        if services.db.is_sqlite:
            # The only instance: whatever a crash left claimed is due now.
            services.processor.release_leases()
            outbox.release_leases(services.db, services.clock)
        hostname = socket.getfqdn()
        listeners: list[Listener] = []
        if settings.smtp.enabled:
            handler = InboundHandler(
                services.store,
                settings.support.domain,
                inbound_ready.set,
                lmtp=settings.smtp.lmtp,
                max_size=settings.smtp.max_message_size,
                recipients=Recipients(
                    settings.support.address,
                    settings.support.aliases,
                    ReplyTokens(settings.support.address, settings.secret_key()),
                ),
                require_tls=settings.smtp.require_tls,
                on_refused=self.metrics.refused,
            )
            try:
                listener = await start_server(settings.smtp, handler, hostname)
            except OSError as exc:
                raise bind_failure("smtp", settings.smtp.host, settings.smtp.port, exc) from exc
            limiter = listener.limiter
            if limiter is not None:
                self.metrics.watch_sessions(lambda: limiter.active)
            listeners.append(listener)
            kind = "LMTP" if settings.smtp.lmtp else "SMTP"
            log.info("listening for %s on %s", kind, listener.address)
        web_runner = None
        if settings.web.enabled:
            try:
                web_runner, address = await start_web(services, self.metrics)
            except OSError as exc:
                raise bind_failure("web", settings.web.host, settings.web.port, exc) from exc
            log.info("listening for HTTP on %s", address)
        try:
            metrics_runner = await start_metrics_listener(services, self.metrics)
        except OSError as exc:
            metrics = settings.metrics
            raise bind_failure("metrics", metrics.host, metrics.port, exc) from exc
        if metrics_runner is not None:
            metrics = settings.metrics
            log.info("listening for /metrics on %s:%d", metrics.host, metrics.port)
        imap_stop = threading.Event()
        imap_thread = self._start_imap(inbound_ready, imap_stop)

        scheduler = AsyncIOScheduler(event_loop=loop)
        scheduler.add_job(inbound_ready.set, "interval", seconds=SWEEP_SECONDS, id="sweep-inbound")
        scheduler.add_job(outbox_ready.set, "interval", seconds=SWEEP_SECONDS, id="sweep-outbox")
        # Jobs keep their state in the database, so re-adding them at start is all
        # it takes to survive a restart.
        scheduler.add_job(
            jobs.one_instance("autoclose", jobs.autoclose),
            "interval",
            minutes=jobs.AUTOCLOSE_EVERY_MINUTES,
            args=[services],
            id="autoclose",
            next_run_time=datetime.now(UTC),
        )
        if settings.sla.enabled:
            scheduler.add_job(
                jobs.one_instance("sla", jobs.sla),
                "interval",
                minutes=jobs.SLA_EVERY_MINUTES,
                args=[services],
                id="sla",
            )
        if settings.agents.digest_time:
            hour, minute = (int(part) for part in settings.agents.digest_time.split(":"))
            scheduler.add_job(
                jobs.one_instance("digest", jobs.digest),
                "cron",
                hour=hour,
                minute=minute,
                args=[services],
                id="digest",
            )
        scheduler.start()

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._on_signal)
            loop.add_signal_handler(signal.SIGHUP, self.supervisor.request_reload)
        workers = [
            asyncio.create_task(self._process_loop(inbound_ready, outbox_ready)),
            asyncio.create_task(self._send_loop(outbox_ready)),
        ]
        # Every listener is bound and the database answered (prepare): READY=1.
        await self.supervisor.ready()
        self.supervisor.start()
        await self._stopping.wait()
        log.info("stopping: closing the listeners, finishing the mail in flight")
        self.supervisor.stopping()
        deadline = loop.time() + DRAIN_SECONDS
        for listener in listeners:
            cut = await listener.drain(max(deadline - loop.time(), 0.0))
            if cut:
                log.warning("%d SMTP sessions were cut mid-message; their senders retry", cut)
        scheduler.shutdown(wait=False)
        imap_stop.set()
        # Nothing new arrives now: the processor finishes what was accepted, in time.
        self._drained.set()
        inbound_ready.set()
        await asyncio.wait(workers[:1], timeout=max(deadline - loop.time(), 0.0))
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        if web_runner is not None:
            await web_runner.cleanup()
        if metrics_runner is not None:
            await metrics_runner.cleanup()
        if imap_thread is not None:
            await loop.run_in_executor(None, imap_thread.join, 10)
        await self.supervisor.close()
        services.db.dispose()
        log.info("stopped")

    def _on_signal(self) -> None:
        if self._stopping.is_set():
            log.warning("second signal: exiting now")
            raise SystemExit(1)
        self.stop()

    def _start_imap(self, ready: _Wakeup, stop: threading.Event) -> threading.Thread | None:
        imap = self.settings.imap
        if imap is None:
            return None
        store = self.services.store

        def put(raw: bytes) -> int:
            return store.put(raw, Envelope(source="imap"))

        poller = ImapPoller(imap, put, on_stored=ready.set, on_poll=self.metrics.imap_polled)
        # One instance polls a mailbox at a time (several instances on one PostgreSQL).
        mailbox = f"maildesk:imap:{imap.username}@{imap.host}:{imap.port}/{imap.folder}"

        def poll() -> None:
            while_holding(self.services.db, mailbox, stop, lambda: poller.run(stop))

        thread = threading.Thread(target=poll, name="imap", daemon=True)
        thread.start()
        log.info("polling IMAP %s@%s:%d/%s", imap.username, imap.host, imap.port, imap.folder)
        return thread

    async def _process_loop(self, ready: _Wakeup, outbox_ready: _Wakeup) -> None:
        loop = asyncio.get_running_loop()
        processor = self.services.processor
        while True:
            try:
                result = await loop.run_in_executor(None, processor.process_pending)
            except Exception:
                if self._drained.is_set():
                    # Stopping, and the database fails: what is accepted stays stored
                    # for the next start, so waiting out the drain time gains nothing.
                    log.exception("processing failed while stopping; the rest waits for a restart")
                    return
                log.exception("processing batch failed; retrying shortly")
                await ready.wait(SWEEP_SECONDS)
                continue
            if result.queued_outbound:
                outbox_ready.set()
            if not result.processed:
                if self._drained.is_set():
                    return  # stopping, and everything accepted is processed
                await ready.wait(SWEEP_SECONDS * 5)

    async def _send_loop(self, ready: _Wakeup) -> None:
        loop = asyncio.get_running_loop()
        sender = await loop.run_in_executor(None, self.services.sender)

        def step() -> tuple[int, datetime | None]:
            handled = sender.send_due()
            return handled, None if handled else sender.next_due()

        try:
            while True:
                try:
                    handled, due = await loop.run_in_executor(None, step)
                except Exception:
                    log.exception("sending failed; retrying shortly")
                    handled, due = 0, None
                if not handled:
                    await ready.wait(self._seconds_until(due))
        finally:
            sender.transport.close()

    def _seconds_until(self, due: datetime | None) -> float:
        """How long the sender may sleep: until the next retry is due, at most a sweep."""
        if due is None:
            return SWEEP_SECONDS * 5
        seconds = (due - self.services.clock.now()).total_seconds()
        return min(max(seconds, 0.05), SWEEP_SECONDS * 5)
