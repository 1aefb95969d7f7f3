"""What /metrics reports (Prometheus text format), and where each figure comes from.

Two sources, chosen per figure:

- **The database, read at scrape time** (`DatabaseCollector`): everything that
  is state or leaves a row. Inbound messages by source and by state (accepted,
  duplicate, quarantined, pending), outbox rows by state (queued, deferred,
  sent, failed, bounced), tickets by status, the age of the oldest pending
  inbound and outbox row, the time since the last retention purge finished,
  and the processing latency (acceptance → ticket,
  from each row's `received_at` and `processed_at`). Every process that
  writes mail shares the database: the daemon, `maildesk deliver` and
  `import`, and the worker processes that process and send. So one scrape of any instance
  sees the work of all of them, the figures survive restarts, and no
  multiprocess mode or push gateway is needed. These series are global: scrape
  one instance, or take `max` across instances, never `sum`.
- **This process** (prometheus_client counters): what never reaches the
  database. SMTP refusals by reason (the message was never stored), SMTP
  sessions open now, IMAP polls and errors, web requests by route and status,
  serve's worker processes alive now and restarted so far. Sum these across
  instances.

Both are read incrementally, since the tables only grow. The totals (rows by
route, outbox rows, tickets) count only the ids above those counted at earlier
scrapes (`growing.py`); the states other than each table's final bulk (done,
sent, closed) are few rows, counted through the state indexes, and the bulk is
the total less them. The latency histogram looks only at rows from the oldest
row that was still pending at the last scrape onward, and counts each finished
row once. So it covers mail finished since this process started, whichever
process finished it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from maildesk import retention
from maildesk.clock import Clock, as_utc
from maildesk.db import Database, rare
from maildesk.growing import SETTLE, GrowingCount
from maildesk.inbound import store
from maildesk.models import Inbound, Outbox, Ticket
from maildesk.outbound import outbox
from maildesk.pipeline import quiet
from maildesk.states import InboundState, OutboxState, TicketStatus

log = logging.getLogger("maildesk.metrics")

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
# Rows a latency scan may look back over; a row pending for longer is not waited for.
MAX_SCAN = 50_000
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})


class Metrics:
    """The registry of one process: its own counters plus the database collector."""

    def __init__(self, db: Database, clock: Clock) -> None:
        # This process's own series; `registry` adds the database's to them.
        self.own = CollectorRegistry(auto_describe=False)
        self.smtp_refused = Counter(
            "maildesk_smtp_refused",
            "SMTP/LMTP commands or messages refused, by reason (never stored).",
            ["reason"],
            registry=self.own,
        )
        self.smtp_sessions = Gauge(
            "maildesk_smtp_sessions", "SMTP/LMTP sessions open now.", registry=self.own
        )
        self.smtp_data_held = Gauge(
            "maildesk_smtp_data_held_bytes",
            "Bytes of SMTP/LMTP DATA not yet ended, held in memory now ([smtp] data_memory_mb).",
            registry=self.own,
        )
        self.imap_polls = Counter(
            "maildesk_imap_polls", "IMAP polls of the mailbox.", registry=self.own
        )
        self.imap_errors = Counter(
            "maildesk_imap_errors", "IMAP connection or poll errors.", registry=self.own
        )
        self.http_requests = Counter(
            "maildesk_http_requests",
            "Web requests by route (the route pattern, not the path) and status.",
            ["route", "method", "status"],
            registry=self.own,
        )
        self.workers = Gauge(
            "maildesk_worker_processes",
            "Worker processes of this serve alive now ([workers] count when all is well).",
            registry=self.own,
        )
        self.worker_restarts = Gauge(
            "maildesk_worker_restarts",
            "Worker processes this serve restarted after they died, since it started.",
            registry=self.own,
        )
        self.workers_stuck = Gauge(
            "maildesk_worker_stuck",
            "Worker processes of this serve that ended themselves since it started: a stage "
            "on one message ran past its hold (watchdog.py).",
            registry=self.own,
        )
        self.database = DatabaseCollector(db, clock)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.own)
        self.registry.register(self.database)
        self._unanswered = CollectorRegistry(auto_describe=False)
        self._unanswered.register(self.own)
        self._unanswered.register(_DatabaseDown())

    def scrape(self) -> bytes:
        """Every series, in the text format (blocking: reads the database)."""
        return generate_latest(self.registry)

    def without_database(self) -> bytes:
        """This process's own series and `maildesk_database_up 0`: a scrape's answer
        when the database did not answer in time."""
        return generate_latest(self._unanswered)

    def refused(self, reason: str) -> None:
        self.smtp_refused.labels(reason).inc()

    def imap_polled(self, error: bool) -> None:
        self.imap_polls.inc()
        if error:
            self.imap_errors.inc()

    def http_request(self, route: str, method: str, status: int) -> None:
        method = method if method in HTTP_METHODS else "other"
        self.http_requests.labels(route, method, str(status)).inc()

    def watch_sessions(self, count: Callable[[], int], held: Callable[[], int]) -> None:
        self.smtp_sessions.set_function(lambda: float(count()))
        self.smtp_data_held.set_function(lambda: float(held()))

    def watch_workers(
        self, running: Callable[[], int], restarts: Callable[[], int], stuck: Callable[[], int]
    ) -> None:
        self.workers.set_function(lambda: float(running()))
        self.worker_restarts.set_function(lambda: float(restarts()))
        self.workers_stuck.set_function(lambda: float(stuck()))


class _DatabaseDown(Collector):
    def collect(self) -> Iterator[Metric]:
        yield _database_up(0.0)


def _database_up(value: float) -> Metric:
    up = GaugeMetricFamily("maildesk_database_up", "1 when the database answered the scrape.")
    up.add_metric([], value)
    return up


class DatabaseCollector(Collector):
    """Series computed from the database on each scrape (see the module docstring)."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock
        self._lock = threading.Lock()
        self._latency = Histogram(
            "maildesk_processing_seconds",
            "From acceptance (the 250) to the message's ticket being written.",
            buckets=LATENCY_BUCKETS,
            registry=None,
        )
        # Rows are never deleted: totals are counted incrementally, and each table's
        # bulk state (done, sent, closed) is its total less the other states.
        self._inbound = GrowingCount(Inbound.id, by=Inbound.source, settle=_settle(db))
        self._outbox = GrowingCount(Outbox.id, settle=_settle(db))
        self._tickets = GrowingCount(Ticket.id, settle=_settle(db))
        self._floor: int | None = None  # rows below this id are all counted
        self._counted: set[int] = set()  # finished rows at or above the floor, counted

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            try:
                families = list(self._read())
            except Exception as exc:  # the scrape still answers, saying the database did not
                log.warning("metrics: database query failed: %s", type(exc).__name__)
                yield _database_up(0.0)
                return
        yield _database_up(1.0)
        yield from families
        yield from self._latency.collect()

    def _read(self) -> Iterable[Metric]:
        now = self.clock.now()
        # Reads: a scrape must never wait for, nor hold, SQLite's write lock. One
        # snapshot: each bulk state is a total less the other states' counts.
        with self.db.reading(snapshot=True) as session:
            by_source = self._inbound.read(session, now)
            spool = store.counts(session, states=_INBOUND_COUNTED)
            unsent = outbox.counts(session, states=_OUTBOX_COUNTED)
            outbox_rows = self._outbox.read(session, now).get(None, 0)
            tickets = dict(
                session.execute(
                    select(Ticket.status, func.count())
                    .where(rare(Ticket.status.in_(_TICKETS_COUNTED)))
                    .group_by(Ticket.status)
                ).all()
            )
            ticket_rows = self._tickets.read(session, now).get(None, 0)
            quiet_senders = quiet.quiet_count(session, now)
            self._scan_latency(session)
            purged_at = retention.last_finished(session)
        spool_rows = sum(spool.by_state.values()) - spool.landed  # landed: not in the table yet
        inbound_states = {**spool.by_state, InboundState.DONE: sum(by_source.values()) - spool_rows}
        outbox_states = {
            **unsent.by_state,
            OutboxState.SENT: outbox_rows - sum(unsent.by_state.values()),
        }
        tickets[TicketStatus.CLOSED] = ticket_rows - sum(tickets.values())

        accepted = CounterMetricFamily(
            "maildesk_inbound_accepted",
            "Messages accepted (stored durably), by route: smtp, lmtp, imap, deliver, import, web.",
            labels=["source"],
        )
        for source, count in sorted(by_source.items()):
            accepted.add_metric([source], count)
        yield accepted

        inbound = GaugeMetricFamily(
            "maildesk_inbound_messages",
            "Stored messages by state: pending, done, duplicate, quarantined, held (spam), "
            "expired (held spam purged unreleased).",
            labels=["state"],
        )
        for state in InboundState:
            inbound.add_metric([state], inbound_states[state])
        yield inbound

        out = GaugeMetricFamily(
            "maildesk_outbox_messages",
            "Outbound messages by state: queued (never failed), deferred (waiting to retry "
            "after a temporary failure), sent, failed, bounced.",
            labels=["state"],
        )
        out.add_metric(["queued"], unsent[OutboxState.PENDING] - unsent.deferred)
        out.add_metric(["deferred"], unsent.deferred)
        for outbox_state in OutboxState:
            if outbox_state != OutboxState.PENDING:
                out.add_metric([outbox_state], outbox_states[outbox_state])
        yield out

        by_status = GaugeMetricFamily("maildesk_tickets", "Tickets by status.", labels=["status"])
        for status in TicketStatus:
            by_status.add_metric([status], tickets.get(status, 0))
        yield by_status

        yield GaugeMetricFamily(
            "maildesk_senders_filed_quietly",
            "Senders whose new tickets are filed quietly now: more than [limits] "
            "new_ticket_notices_per_hour of them within the hour (a flood).",
            value=quiet_senders or 0,
        )

        yield _age(
            "maildesk_inbound_oldest_pending_seconds",
            "Age of the oldest stored message not yet processed (0: none).",
            spool.oldest_pending,
            now,
        )
        yield _age(
            "maildesk_outbox_oldest_pending_seconds",
            "Age of the oldest outbound message not yet sent (0: none).",
            unsent.oldest_pending,
            now,
        )
        yield _age(
            "maildesk_retention_last_purge_seconds",
            "Seconds since a retention purge last finished on any instance (0: never yet). "
            "It runs hourly: much more means it fails.",
            purged_at,
            now,
        )

    def start(self) -> None:
        """Count latency from now on: from the oldest pending row, or the next new one.

        Blocking; call once the schema is migrated (a scrape before that starts here too).
        """
        with self._lock, self.db.reading() as session:
            self._start(session)

    def _start(self, session: Session) -> None:
        top = session.scalar(select(func.max(Inbound.id))) or 0
        first_pending = session.scalar(
            select(func.min(Inbound.id)).where(rare(Inbound.state == InboundState.PENDING))
        )
        self._floor = first_pending if first_pending is not None else top + 1

    def _scan_latency(self, session: Session) -> None:
        """Observe each row finished since the last scrape once (see the module docstring)."""
        if self._floor is None:
            self._start(session)
            return
        top = session.scalar(select(func.max(Inbound.id))) or 0
        floor = max(self._floor, top - MAX_SCAN)
        rows = session.execute(
            select(Inbound.id, Inbound.state, Inbound.received_at, Inbound.processed_at)
            .where(Inbound.id >= floor)
            .order_by(Inbound.id)
        ).all()
        next_floor = top + 1
        for row_id, state, received_at, processed_at in rows:
            if state == InboundState.PENDING:
                next_floor = min(next_floor, row_id)
                continue
            if row_id in self._counted:
                continue
            self._counted.add(row_id)
            if state == InboundState.DONE and processed_at is not None:
                seconds = (as_utc(processed_at) - as_utc(received_at)).total_seconds()
                self._latency.observe(max(seconds, 0.0))
        self._floor = next_floor
        self._counted = {row_id for row_id in self._counted if row_id >= next_floor}


# The states counted through the state index: all but the bulk of a long history.
_INBOUND_COUNTED = tuple(state for state in InboundState if state != InboundState.DONE)
_OUTBOX_COUNTED = tuple(state for state in OutboxState if state != OutboxState.SENT)
_TICKETS_COUNTED = tuple(status for status in TicketStatus if status != TicketStatus.CLOSED)


def _settle(db: Database) -> timedelta:
    """How long an id seen may still be passed by a later commit (`growing.py`)."""
    return timedelta(0) if db.is_sqlite else SETTLE


def _age(name: str, documentation: str, moment: datetime | None, now: datetime) -> Metric:
    gauge = GaugeMetricFamily(name, documentation)
    gauge.add_metric([], max((now - as_utc(moment)).total_seconds(), 0.0) if moment else 0.0)
    return gauge
