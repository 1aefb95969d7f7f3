"""Whether maildesk is healthy, and if not, why: one answer for /healthz and `maildesk status`.

"degraded" when any of these holds (thresholds in `[health]`):
- the database does not answer, or its SQLite file is gone from disk;
- free space on a disk we write to (the database's, the Maildir outbox's) is
  below `min_free_disk_mb`; or the database's is below `[limits]
  accept_min_free_mb`, and new mail is refused for now (SMTP 452, `inbound/room.py`);
- an outbound message has been failing (the relay refused it or was
  unreachable) for longer than `outbox_failing_minutes`, or any outbound
  message is still unsent after `outbox_backlog_minutes`;
- a received message is still unprocessed after `inbound_backlog_minutes`;
- more than `quarantined_per_hour` messages were quarantined in the last hour.

Every reason is a short sentence with figures, never an error text (which
may name addresses or the relay's reply) and never a URL (which may hold a
password). All times come from the injected clock.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from maildesk.clock import Clock
from maildesk.config import Settings
from maildesk.db import Database
from maildesk.inbound import store
from maildesk.inbound.room import free_bytes
from maildesk.outbound import outbox
from maildesk.states import InboundState, OutboxState

OK = "ok"
DEGRADED = "degraded"


@dataclass(frozen=True)
class Backlog:
    inbound_pending: int = 0
    quarantined: int = 0
    quarantined_last_hour: int = 0
    outbox_pending: int = 0
    outbox_deferred: int = 0
    oldest_inbound_seconds: float = 0.0
    oldest_outbox_seconds: float = 0.0
    outbox_failing_seconds: float = 0.0


@dataclass(frozen=True)
class Health:
    status: str
    reasons: tuple[str, ...]
    database: bool
    free_disk_mb: dict[str, int] = field(default_factory=dict)
    backlog: Backlog | None = None

    @property
    def ok(self) -> bool:
        return self.status == OK

    def summary(self) -> dict[str, Any]:
        """What anyone may see: the status and its reasons without a figure (a count of
        waiting or quarantined mail moves with one person's mail; a disk's size is
        nobody's business)."""
        return {
            "status": self.status,
            "reasons": [_without_figures(reason) for reason in self.reasons],
            "database": "ok" if self.database else "unreachable",
        }

    def as_json(self) -> dict[str, Any]:
        """The /healthz body: status, reasons and the figures behind them."""
        body: dict[str, Any] = {
            "status": self.status,
            "reasons": list(self.reasons),
            "database": "ok" if self.database else "unreachable",
            "free_disk_mb": self.free_disk_mb,
        }
        if self.backlog is not None:
            body.update(asdict(self.backlog))
        return body


def _without_figures(reason: str) -> str:
    """`reason` without its parentheses, each number an "N"."""
    return _NUMBER.sub("N", _PARENTHESES.sub("", reason))


_PARENTHESES = re.compile(r"\s*\([^)]*\)")
_NUMBER = re.compile(r"\d[\d.,]*")


def check(settings: Settings, db: Database | None, clock: Clock) -> Health:
    """Compute health now. Blocking (database and disk): call from a thread in async code.

    `db` None: the caller did not open the database, because its file is gone.
    """
    limits = settings.health
    reasons: list[str] = []
    disks = free_disk_mb(settings)
    for role, free in disks.items():
        if free < limits.min_free_disk_mb:
            reasons.append(
                f"free disk {free} MB for the {role} is below {limits.min_free_disk_mb} MB"
            )
    reserve = settings.limits.accept_min_free_mb
    if reserve > 0 and disks.get("database", reserve) < reserve:
        # Said on its own: the reserve may be set above min_free_disk_mb.
        reasons.append(f"new mail is refused: free disk for the database is below {reserve} MB")
    gone = database_gone(settings)
    backlog: Backlog | None = None
    if gone or db is None:
        reasons.insert(0, "database unreachable: the database file is gone")
    else:
        try:
            backlog = _backlog(db, clock.now())
        except Exception as exc:
            reasons.insert(0, f"database unreachable: {type(exc).__name__}")
    if backlog is not None:
        reasons.extend(_backlog_reasons(settings, backlog))
    return Health(
        status=DEGRADED if reasons else OK,
        reasons=tuple(reasons),
        database=backlog is not None,
        free_disk_mb=disks,
        backlog=backlog,
    )


def database_gone(settings: Settings) -> bool:
    """The SQLite file is missing (the daemon may still write into the unlinked one)."""
    return settings.sqlite_path is not None and not settings.sqlite_path.exists()


def unreachable(why: str) -> Health:
    """The answer when the check itself could not finish (e.g. the database hangs)."""
    return Health(DEGRADED, (f"database unreachable: {why}",), database=False)


def free_disk_mb(settings: Settings) -> dict[str, int]:
    """Free megabytes on each folder we write to, keyed by what it holds.

    Keyed by role, not by path: /healthz is public, and the layout of the
    server's disks is nobody's business there.
    """
    folders: dict[str, Path] = {}
    if settings.sqlite_path is not None:
        folders["database"] = settings.sqlite_path.parent
    if settings.outbound.url.startswith("maildir:"):
        folders["outbox"] = Path(settings.outbound.url.removeprefix("maildir:"))
    return {role: free_bytes(folder) // (1024 * 1024) for role, folder in folders.items()}


def _backlog(db: Database, now: datetime) -> Backlog:
    """What waits, and since when: only the rows still waiting are read (a search of
    each state index), never the history every processed and sent row leaves."""
    with db.reading() as session:
        spool = store.counts(session, now - timedelta(hours=1), store.WAITING)
        unsent = outbox.counts(session, outbox.WAITING)

    def age(moment: datetime | None) -> float:
        return max((now - moment).total_seconds(), 0.0) if moment else 0.0

    return Backlog(
        inbound_pending=spool[InboundState.PENDING],
        quarantined=spool[InboundState.QUARANTINED],
        quarantined_last_hour=spool.quarantined_since,
        outbox_pending=unsent[OutboxState.PENDING],
        outbox_deferred=unsent.deferred,
        oldest_inbound_seconds=age(spool.oldest_pending),
        oldest_outbox_seconds=age(unsent.oldest_pending),
        # Retried (and refused) ever since the oldest unsent row that failed was queued.
        outbox_failing_seconds=age(unsent.failing_since),
    )


def _backlog_reasons(settings: Settings, backlog: Backlog) -> list[str]:
    limits = settings.health
    reasons = []
    if backlog.outbox_failing_seconds > limits.outbox_failing_minutes * 60:
        reasons.append(
            f"outbox failing for {_minutes(backlog.outbox_failing_seconds)} min "
            f"({backlog.outbox_deferred} messages waiting to retry; "
            f"threshold {limits.outbox_failing_minutes:g} min)"
        )
    if backlog.oldest_outbox_seconds > limits.outbox_backlog_minutes * 60:
        reasons.append(
            f"oldest unsent message is {_minutes(backlog.oldest_outbox_seconds)} min old "
            f"(threshold {limits.outbox_backlog_minutes:g} min)"
        )
    if backlog.oldest_inbound_seconds > limits.inbound_backlog_minutes * 60:
        reasons.append(
            f"oldest unprocessed message is {_minutes(backlog.oldest_inbound_seconds)} min old "
            f"({backlog.inbound_pending} waiting; threshold {limits.inbound_backlog_minutes:g} min)"
        )
    if backlog.quarantined_last_hour > limits.quarantined_per_hour:
        reasons.append(
            f"quarantine growing: {backlog.quarantined_last_hour} messages in the last hour "
            f"(threshold {limits.quarantined_per_hour})"
        )
    return reasons


def _minutes(seconds: float) -> int:
    return int(seconds // 60)
