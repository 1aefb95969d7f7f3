"""Composition: builds the parts from settings, starts them, stops them.

`Services` (in `services.py`) is everything that needs no event loop;
`Daemon` adds the listeners (SMTP/LMTP, web, metrics), IMAP polling and the
scheduled jobs, and the work behind them: processing stored mail into tickets
and sending the outbox. With `[workers] count` ≥ 1 that work runs in worker
processes (`workerpool.py` starts, wakes, restarts and drains them); with 0 it
runs as a `Worker`'s two threads inside this process (`worker.py`, the same
loops). Either way whatever stores mail here wakes the workers at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import threading
from pathlib import Path

from sqlalchemy.exc import DBAPIError

from maildesk.exclusive import while_holding
from maildesk.inbound.imap import ImapPoller
from maildesk.inbound.recipients import Recipients
from maildesk.inbound.smtp import InboundHandler, Listener, start_server
from maildesk.inbound.store import Envelope
from maildesk.metrics import Metrics
from maildesk.outbound import outbox
from maildesk.schedule import Schedule
from maildesk.sdnotify import Notifier as SdNotifier
from maildesk.services import Services, build
from maildesk.startup import bind_failure, database_failure
from maildesk.supervisor import Supervisor
from maildesk.tickets.tokens import ReplyTokens
from maildesk.web.ops import start_metrics_listener
from maildesk.web.server import start_web
from maildesk.worker import Worker
from maildesk.workerpool import WorkerPool, worker_command

__all__ = ["Daemon", "Services", "build"]

log = logging.getLogger("maildesk")

# SIGTERM: how long sessions in a transaction, then the workers, may take to finish
# (the unit's TimeoutStopSec= is 30 s).
DRAIN_SECONDS = 20.0


class Daemon:
    def __init__(
        self,
        services: Services,
        *,
        config_path: Path | None = None,
        notifier: SdNotifier | None = None,
        verbose: bool = False,
    ) -> None:
        self.services = services
        self.settings = services.settings
        self._stopping = asyncio.Event()
        # Readiness, status, watchdog and reload (SIGHUP) for the service manager.
        self.supervisor = Supervisor(services, config_path, notifier or SdNotifier())
        # This process's /metrics registry (the SMTP, IMAP and web parts count into it).
        self.metrics = Metrics(services.db, services.clock)
        self.config_path = config_path
        self.verbose = verbose
        # Who processes and sends: worker processes, or (count 0, or no config file to
        # hand them) one Worker's threads in this process.
        count = self.settings.workers.count
        self.pool: WorkerPool | None = None
        self.worker: Worker | None = None
        if count and config_path is not None:
            command = worker_command(config_path, verbose)
            self.pool = WorkerPool(count, command, lambda: self.services.settings)
        else:
            self.worker = Worker(services)

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        services, settings = self.services, self.settings
        # Every commit of new mail wakes the workers, whichever route stored it.
        services.store.on_stored(self._wake)
        try:
            await loop.run_in_executor(None, services.prepare)
        except DBAPIError as exc:
            raise database_failure(settings.database.url, exc) from exc
        await loop.run_in_executor(None, self.metrics.database.start)
        if services.db.is_sqlite:
            # One machine: what a crashed process left claimed is due now; what a live
            # one holds (a `maildesk worker` unit beside serve) stays its own.
            services.processor.release_leases()
            outbox.release_leases(services.db, services.clock)
        hostname = socket.getfqdn()
        listeners: list[Listener] = []
        if settings.smtp.enabled:
            handler = InboundHandler(
                services.store,
                settings.support.domain,
                lmtp=settings.smtp.lmtp,
                max_size=settings.smtp.max_message_size,
                max_recipients=settings.smtp.max_recipients,
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
            limiter, budget = listener.limiter, listener.budget
            if limiter is not None and budget is not None:
                self.metrics.watch_sessions(lambda: limiter.active, lambda: budget.held)
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
        imap_thread = self._start_imap(imap_stop)

        schedule = Schedule(services)
        schedule.start(loop)

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._on_signal)
            loop.add_signal_handler(signal.SIGHUP, self._on_reload)
        if self.pool is not None:
            await self.pool.start()
            pool = self.pool
            self.metrics.watch_workers(
                lambda: pool.running, lambda: pool.restarts, lambda: pool.stuck
            )
        else:
            assert self.worker is not None
            self.worker.start()
        # Every listener is bound and the database answered (prepare): READY=1.
        await self.supervisor.ready()
        self.supervisor.start()
        await self._stopping.wait()
        log.info("stopping: closing the listeners, finishing the mail in flight")
        self.supervisor.stopping()
        if self.pool is not None:
            self.pool.stop_restarting()
        deadline = loop.time() + DRAIN_SECONDS
        for listener in listeners:
            cut = await listener.drain(max(deadline - loop.time(), 0.0))
            if cut:
                log.warning("%d SMTP sessions were cut mid-message; their senders retry", cut)
        imap_stop.set()
        # Before the workers drain: the mail a job queues is sent with the rest.
        await schedule.stop()
        # Nothing new arrives now: the workers finish what was accepted, in time.
        await self._drain_workers(max(deadline - loop.time(), 0.0))
        if web_runner is not None:
            await web_runner.cleanup()
        if metrics_runner is not None:
            await metrics_runner.cleanup()
        if imap_thread is not None:
            await loop.run_in_executor(None, imap_thread.join, 10)
        await self.supervisor.close()
        services.db.dispose()
        log.info("stopped")

    def _wake(self) -> None:
        """Mail is stored: the workers claim it now (any thread)."""
        if self.pool is not None:
            self.pool.wake()
        elif self.worker is not None:
            self.worker.wake()

    def _on_reload(self) -> None:
        self.supervisor.request_reload(self.pool.reload if self.pool is not None else None)

    async def _drain_workers(self, timeout: float) -> None:
        if self.pool is not None:
            await self.pool.drain(timeout)
            return
        worker = self.worker
        assert worker is not None
        worker.stop(empty_queue=True)
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(None, worker.join, timeout):
            log.warning("processing did not finish in time; the rest waits for the next start")

    def _on_signal(self) -> None:
        if self._stopping.is_set():
            log.warning("second signal: exiting now")
            raise SystemExit(1)
        self.stop()

    def _start_imap(self, stop: threading.Event) -> threading.Thread | None:
        imap = self.settings.imap
        if imap is None:
            return None
        store = self.services.store

        def put(raw: bytes) -> int:
            return store.put(raw, Envelope(source="imap"))

        poller = ImapPoller(
            imap,
            put,
            on_poll=self.metrics.imap_polled,
            fits=store.fits,
            max_size=self.settings.smtp.max_message_size,
        )
        # One instance polls a mailbox at a time (several instances on one PostgreSQL).
        mailbox = f"maildesk:imap:{imap.username}@{imap.host}:{imap.port}/{imap.folder}"

        def poll() -> None:
            while_holding(self.services.db, mailbox, stop, poller.run)

        thread = threading.Thread(target=poll, name="imap", daemon=True)
        thread.start()
        log.info("polling IMAP %s@%s:%d/%s", imap.username, imap.host, imap.port, imap.folder)
        return thread
