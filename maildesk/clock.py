"""Time and randomness, injected so tests move time instead of sleeping."""

from __future__ import annotations

import secrets
import threading
from datetime import UTC, datetime, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class ManualClock:
    """A clock that only moves when told to: for tests and replays."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, delta: timedelta) -> None:
        with self._lock:
            self._now += delta


def new_token(nbytes: int = 12) -> str:
    """A random URL- and Message-ID-safe token."""
    return secrets.token_urlsafe(nbytes).replace("-", "x").replace("_", "y")


def as_utc(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; everything we store is UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def desk_time(moment: datetime, timezone: str) -> str:
    """`moment` as the desk reads it in mail to agents: in `timezone` (`[sla] timezone`)."""
    return as_utc(moment).astimezone(ZoneInfo(timezone)).strftime("%Y-%m-%d %H:%M %Z")


__all__ = ["Clock", "SystemClock", "ManualClock", "new_token", "as_utc", "desk_time", "timedelta"]
