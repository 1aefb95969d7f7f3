"""Retention: what maildesk forgets, and when (`[retention]`, `maildesk purge`).

Each kind is purged in batches of `[retention] batch` rows and at most
`BATCH_BYTES` of mail, one transaction per batch, so a purge never holds
SQLite's single writer for long: between two batches the group commit behind
waiting 250s goes first (`db.py`). Sent outbox rows are looked at from where
the last pass ended (a `job_runs` row), not from the first row ever sent.

What goes, and what stays on purpose:
- the raw bytes of processed inbound mail (`done`, `duplicate`). The `inbound`
  row stays as the audit line (when, from whom, to whom, size, digest): the
  ticket's messages point at it (`messages.inbound_id`). The ticket keeps the
  text and the attachments. Quarantined rows are never purged: ops decide with
  `maildesk quarantine`;
- the body of sent (and bounced) outbox rows. The row stays with its
  Message-ID, ticket and state: replies to the mail we minted thread by them
  (`Tickets.thread_key`) and a bounce is filed by them (`pipeline/bounces.py`).
  Failed rows keep their body for `maildesk outbox retry`;
- spam held and never released: its bytes and its hold (the row stays, `expired`);
- console requests (the agents' rate limit counts the last hour; the same
  Message-ID delivered again within the window is still answered once);
- expired portal logins; used or expired confirmations.

Rows keyed by a number that a signed link carries (confirmations) or that logs
name (console requests) are never deleted at the highest id: SQLite
hands out max(id)+1, so deleting the newest row would give its number to the
next one, and an old confirmation link would then be valid for new commands.
Two instances purging at once delete each row once (a delete or update of a
row the other removed first counts nothing); the daemon's job also runs on one
instance at a time (`jobs.one_instance`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from maildesk.clock import as_utc
from maildesk.config import Settings
from maildesk.db import Database, rare
from maildesk.models import (
    AutoReplyMinute,
    Confirmation,
    ConsoleRequest,
    Inbound,
    InboundRaw,
    JobRun,
    Outbox,
    OutboxRaw,
    SpamHold,
    WebSession,
)
from maildesk.outbound import caps
from maildesk.states import InboundState, OutboxState

log = logging.getLogger("maildesk.retention")

KINDS = (
    "inbound_raw",
    "outbox_bodies",
    "held_spam",
    "console_requests",
    "web_sessions",
    "confirmations",
    "reply_minutes",
)
# `job_runs` rows of the purge: when it last finished, and how far the outbox pass got.
JOB = "retention"
DONE_KEY = "finished"
OUTBOX_KEY = "outbox_sent_before"
# Sent rows are looked at from the last pass's cutoff less this (instances' clocks differ).
OUTBOX_OVERLAP = timedelta(days=1)
# A batch also stops at this many bytes of mail: SQLite here is built with secure_delete,
# so a purge writes as many bytes (zeros, through the WAL) as it frees.
BATCH_BYTES = 16 * 1024 * 1024
PROCESSED = (InboundState.DONE, InboundState.DUPLICATE)
SENT = (OutboxState.SENT, OutboxState.BOUNCED)


@dataclass
class Purged:
    """How many rows of each kind went (or would go, on a dry run)."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def _never() -> bool:
    return False


def purge(
    db: Database,
    settings: Settings,
    now: datetime,
    dry_run: bool = False,
    stopping: Callable[[], bool] = _never,
) -> Purged:
    """Purge every kind once; `dry_run` only counts. Once `stopping()` says so (serve is
    shutting down), it returns after the batch under way: the first purge of a large
    desk can take minutes, and a stop must not wait for it. The next run goes on."""
    keep = settings.retention
    purged = Purged()
    purger = _Purger(db, keep.batch, dry_run, stopping)
    purged.counts["inbound_raw"] = purger.inbound_raw(now - timedelta(days=keep.inbound_raw_days))
    purged.counts["outbox_bodies"] = purger.outbox_bodies(
        now - timedelta(days=keep.outbox_body_days)
    )
    purged.counts["held_spam"] = purger.held_spam(now - timedelta(days=keep.spam_days))
    purged.counts["console_requests"] = purger.by_id(
        ConsoleRequest, ConsoleRequest.at < now - timedelta(days=keep.console_days)
    )
    purged.counts["web_sessions"] = purger.web_sessions(
        now - timedelta(days=settings.web.session_days)
    )
    confirmations_before = now - timedelta(days=keep.confirmation_days)
    purged.counts["confirmations"] = purger.by_id(
        Confirmation,
        (Confirmation.expires_at < confirmations_before)
        | (Confirmation.used_at < confirmations_before),
    )
    # Three hours: a live thread forgets its own minutes after two (outbound/caps.py),
    # so these are only those of threads that ended, and no row is deleted twice.
    purged.counts["reply_minutes"] = purger.reply_minutes(caps.minute_of(now) - 180)
    if stopping():
        log.info("purge stopped for the shutdown; the rest goes at the next run")
    elif not dry_run:
        _record(db, DONE_KEY, now)
    if purged.total:
        verb = "would purge" if dry_run else "purged"
        log.info("%s %s", verb, ", ".join(f"{k} {n}" for k, n in purged.counts.items() if n))
    return purged


def last_finished(session: Session) -> datetime | None:
    """When a purge last finished on any instance (None: never)."""
    at = session.scalar(select(JobRun.at).where(JobRun.name == JOB, JobRun.key == DONE_KEY))
    return as_utc(at) if at is not None else None


class _Purger:
    def __init__(
        self, db: Database, batch: int, dry_run: bool, stopping: Callable[[], bool]
    ) -> None:
        self.db = db
        self.batch = batch
        self.dry_run = dry_run
        self.stopping = stopping

    def inbound_raw(self, before: datetime) -> int:
        """Bytes of mail processed before `before`.

        Walks `inbound_raw` (which holds only what is not purged yet) in id order
        and stops at the first row received after `before`: ids grow with time,
        so what follows is younger (a straggler goes at the next run).
        """
        after, total = 0, 0
        while True:
            with self.db.reading() as session:
                rows = session.execute(
                    select(
                        Inbound.id,
                        Inbound.state,
                        Inbound.size,
                        Inbound.received_at,
                        Inbound.processed_at,
                    )
                    .join(InboundRaw, InboundRaw.inbound_id == Inbound.id)
                    .where(InboundRaw.inbound_id > after)
                    .order_by(InboundRaw.inbound_id)
                    .limit(self.batch)
                ).all()
            if not rows:
                return total
            after = rows[-1].id
            young = any(as_utc(r.received_at) >= before for r in rows)
            old = [
                (r.id, r.size)
                for r in rows
                if r.state in PROCESSED and as_utc(r.processed_at or r.received_at) < before
            ]
            while old and not self.stopping():
                ids = _within(old)
                total += self._delete_raw(ids)
                old = old[len(ids) :]
            if young or len(rows) < self.batch or self.stopping():
                return total

    def _delete_raw(self, ids: list[int]) -> int:
        if not ids or self.dry_run:
            return len(ids)
        with self.db.transaction() as session:
            # The state is checked again: a row may have been requeued since it was read.
            done = select(Inbound.id).where(Inbound.id.in_(ids), Inbound.state.in_(PROCESSED))
            result = session.execute(
                delete(InboundRaw).where(InboundRaw.inbound_id.in_(done.scalar_subquery()))
            )
            return _count(result)

    def outbox_bodies(self, before: datetime) -> int:
        """Forget the body of rows sent before `before` (their `outbox_raw` row), from where
        the last pass ended."""
        with self.db.reading() as session:
            last = session.scalar(
                select(JobRun.at).where(JobRun.name == JOB, JobRun.key == OUTBOX_KEY)
            )
        since = as_utc(last) - OUTBOX_OVERLAP if last is not None else None
        pick = (
            select(Outbox.id, func.length(OutboxRaw.raw))
            .join(OutboxRaw, OutboxRaw.outbox_id == Outbox.id)
            .where(Outbox.state.in_(SENT), Outbox.sent_at < before)
        )
        if since is not None:
            pick = pick.where(Outbox.sent_at >= since)
        # The state is checked again: a row may have been queued again since it was read.
        total = self._batches(
            pick.order_by(Outbox.sent_at),
            lambda session, ids: _count(
                session.execute(
                    delete(OutboxRaw).where(
                        OutboxRaw.outbox_id.in_(
                            select(Outbox.id).where(Outbox.id.in_(ids), Outbox.state.in_(SENT))
                        )
                    )
                )
            ),
            sized=True,
        )
        if not self.dry_run:
            _record(self.db, OUTBOX_KEY, before)
        return total

    def held_spam(self, before: datetime) -> int:
        """Spam held since before `before` and never released: its bytes and its hold.

        The row stays, `expired`, as the audit line of a message that was received
        (and so /metrics' count of accepted mail never goes down).
        """
        pick = (
            select(Inbound.id)
            .join(SpamHold, SpamHold.inbound_id == Inbound.id)
            .where(
                rare(Inbound.state == InboundState.HELD),
                SpamHold.held_at < before,
                SpamHold.released_at.is_(None),
            )
            .order_by(Inbound.id)
        )

        def remove(session: Session, ids: list[int]) -> int:
            held = select(Inbound.id).where(Inbound.id.in_(ids), Inbound.state == InboundState.HELD)
            ids = list(session.scalars(held.with_for_update()))
            if not ids:
                return 0
            session.execute(delete(InboundRaw).where(InboundRaw.inbound_id.in_(ids)))
            session.execute(delete(SpamHold).where(SpamHold.inbound_id.in_(ids)))
            expire = update(Inbound).where(Inbound.id.in_(ids), Inbound.state == InboundState.HELD)
            return _count(
                session.execute(
                    expire.values(state=InboundState.EXPIRED).execution_options(
                        synchronize_session=False
                    )
                )
            )

        return self._batches(pick, remove)

    def web_sessions(self, before: datetime) -> int:
        pick = select(WebSession.id_hash).where(WebSession.last_seen_at < before)
        return self._batches(
            pick,
            lambda session, keys: _count(
                session.execute(
                    delete(WebSession).where(
                        WebSession.id_hash.in_(keys), WebSession.last_seen_at < before
                    )
                )
            ),
        )

    def reply_minutes(self, before: int) -> int:
        """Automatic replies counted per minute (for the hourly cap) before `before`."""
        old = AutoReplyMinute.minute < before
        if self.stopping():
            return 0
        if self.dry_run:
            with self.db.reading() as session:
                return int(session.scalar(select(func.count()).where(old)) or 0)
        with self.db.transaction() as session:
            return _count(session.execute(delete(AutoReplyMinute).where(old)))

    def by_id(self, model: type[ConsoleRequest] | type[Confirmation], old: Any) -> int:
        """Rows of `model` matching `old`, except the one with the highest id (see above)."""
        newest = select(func.max(model.id)).scalar_subquery()
        pick = select(model.id).where(old, model.id < newest).order_by(model.id)
        return self._batches(
            pick,
            lambda session, ids: _count(session.execute(delete(model).where(model.id.in_(ids)))),
        )

    def _batches(
        self, pick: Select[Any], remove: Callable[[Session, list[Any]], int], sized: bool = False
    ) -> int:
        """Run `remove` on `pick`'s rows, `batch` at a time, one transaction each.

        `sized`: `pick` gives (key, bytes), and a batch also stops at `BATCH_BYTES`.
        """
        if self.dry_run:
            with self.db.reading() as session:
                return session.scalar(select(func.count()).select_from(pick.subquery())) or 0
        total = 0
        while not self.stopping():
            with self.db.transaction() as session:
                rows = [tuple(row) for row in session.execute(pick.limit(self.batch))]
                keys = _within(rows) if sized else [row[0] for row in rows]
                removed = remove(session, keys) if keys else 0
            total += removed
            # Nothing removed of what was picked: another instance took it; done for now.
            if (len(rows) < self.batch and len(keys) == len(rows)) or not removed:
                return total
        return total


def _within(rows: list[tuple[Any, ...]]) -> list[Any]:
    """The keys of the first (key, bytes) rows that fit in `BATCH_BYTES` (at least one)."""
    keys: list[Any] = []
    size = 0
    for key, length in rows:
        size += int(length or 0)
        if keys and size > BATCH_BYTES:
            break
        keys.append(key)
    return keys


def _count(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


def _record(db: Database, key: str, at: datetime) -> None:
    try:
        with db.transaction() as session:
            row = session.get(JobRun, (JOB, key))
            if row is None:
                session.add(JobRun(name=JOB, key=key, at=at))
            elif as_utc(row.at) < at:
                row.at = at
    except IntegrityError:  # another instance recorded it at the same moment
        pass
