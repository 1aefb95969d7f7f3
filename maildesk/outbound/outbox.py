"""The outbox sender: drains queued rows to the transport, each exactly once.

A row is claimed by pushing its `next_attempt_at` forward by a lease in a
short transaction, then sent outside any transaction (an SMTP conversation must
not hold SQLite's write lock), then marked sent. A crash between sending and
marking leaves the lease to expire and the row is sent again under the same
key and Message-ID: the Maildir transport writes it once; over SMTP the
receiver sees the same Message-ID twice at worst, the one window no sender can
close without the relay's help.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update

from maildesk.clock import Clock, as_utc
from maildesk.config import OutboundSettings
from maildesk.db import Database
from maildesk.logs import log_context
from maildesk.models import Outbox
from maildesk.outbound.transport import PermanentFailure, TemporaryFailure, Transport

log = logging.getLogger("maildesk.outbox")

LEASE = timedelta(minutes=5)
# A message the relay has refused for this long is an ERROR (someone must look), not
# a WARNING (a relay restarting, a greylisting pause).
FAILING_IS_AN_ERROR = timedelta(hours=1)


@dataclass(frozen=True)
class Claimed:
    id: int
    message_id: str
    sender: str
    recipients: tuple[str, ...]
    raw: bytes
    attempts: int
    created_at: datetime


class OutboxSender:
    def __init__(
        self, db: Database, transport: Transport, clock: Clock, settings: OutboundSettings
    ) -> None:
        self.db = db
        self.transport = transport
        self.clock = clock
        self.settings = settings

    def send_due(self, limit: int = 100) -> int:
        """Send every row that is due (up to `limit`); returns how many were handled."""
        claimed = self._claim(limit)
        for row in claimed:
            self._send(row)
        return len(claimed)

    def next_due(self) -> datetime | None:
        with self.db.transaction() as session:
            moment = session.scalar(
                select(Outbox.next_attempt_at)
                .where(Outbox.state == "pending")
                .order_by(Outbox.next_attempt_at)
                .limit(1)
            )
        return as_utc(moment) if moment else None

    def _claim(self, limit: int) -> list[Claimed]:
        now = self.clock.now()
        with self.db.transaction() as session:
            rows = session.scalars(
                select(Outbox)
                .where(Outbox.state == "pending", Outbox.next_attempt_at <= now)
                .order_by(Outbox.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).all()
            for row in rows:
                row.next_attempt_at = now + LEASE
                row.attempts += 1
            return [
                Claimed(
                    row.id,
                    row.message_id,
                    row.sender,
                    tuple(row.recipients),
                    row.raw,
                    row.attempts,
                    as_utc(row.created_at),
                )
                for row in rows
            ]

    def _send(self, row: Claimed) -> None:
        with log_context(outbox_id=row.id, message_id=row.message_id):
            self._send_logged(row)

    def _send_logged(self, row: Claimed) -> None:
        try:
            self.transport.send(f"{row.id}.{row.message_id}", row.sender, row.recipients, row.raw)
        except TemporaryFailure as exc:
            self._temporary(row, str(exc))
        except PermanentFailure as exc:
            log.warning("outbox %d failed permanently: %s", row.id, exc)
            self._finish(row.id, "failed", str(exc))
        except Exception as exc:  # a transport bug: retry like a temporary failure
            log.exception("outbox %d: unexpected error", row.id)
            self._temporary(row, f"{type(exc).__name__}: {exc}")
        else:
            log.info("outbox %d sent %s to %s", row.id, row.message_id, ", ".join(row.recipients))
            self._finish(row.id, "sent", "")

    def _temporary(self, row: Claimed, reason: str) -> None:
        now = self.clock.now()
        if now - row.created_at > timedelta(hours=self.settings.give_up_hours):
            log.error("outbox %d gave up after %d attempts: %s", row.id, row.attempts, reason)
            self._finish(row.id, "failed", f"gave up: {reason}")
            return
        delay = min(
            self.settings.retry_base_seconds * 2 ** (row.attempts - 1),
            self.settings.retry_max_seconds,
        )
        failing = now - row.created_at
        level = logging.ERROR if failing > FAILING_IS_AN_ERROR else logging.WARNING
        log.log(
            level,
            "outbox %d deferred %.0fs (failing for %.0f min): %s",
            row.id,
            delay,
            failing.total_seconds() / 60,
            reason,
        )
        with self.db.transaction() as session:
            outbox = session.get(Outbox, row.id)
            if outbox is not None and outbox.state == "pending":
                outbox.next_attempt_at = now + timedelta(seconds=delay)
                outbox.last_error = reason

    def _finish(self, outbox_id: int, state: str, reason: str) -> None:
        with self.db.transaction() as session:
            outbox = session.get(Outbox, outbox_id)
            if outbox is None:
                return
            outbox.state = state
            outbox.last_error = reason
            if state == "sent":
                outbox.sent_at = self.clock.now()


def retry(db: Database, clock: Clock, outbox_id: int) -> bool:
    """Queue a failed (or deferred) row to go out now. False when there is no such row."""
    with db.transaction() as session:
        row = session.get(Outbox, outbox_id)
        if row is None or row.state == "sent":
            return False
        row.state = "pending"
        row.next_attempt_at = clock.now()
        row.last_error = ""
        return True


def release_leases(db: Database, clock: Clock) -> None:
    """At start-up of the only instance (SQLite): rows a crash left claimed are due now.

    Safe because no other process can be sending them, and a row sent twice
    under its key is written once by the Maildir transport. Rows deferred after
    a failure (they carry its reason) keep their back-off.
    """
    now = clock.now()
    with db.transaction() as session:
        session.execute(
            update(Outbox)
            .where(Outbox.state == "pending", Outbox.next_attempt_at > now)
            .where(Outbox.attempts > 0, Outbox.last_error == "")
            .values(next_attempt_at=now)
        )
