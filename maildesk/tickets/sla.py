"""Service levels: when a ticket's first response and resolution are due, in working time.

Pure computation: a ticket's creation, its status events and its first response
go in, with the time now; due times, the share of each target used, and
breaches come out. Nothing here reads a clock or writes anything (`jobs.sla`
sends the reminders and records the breaches); `states` and `overdue` at the
end only read what the computation needs from the database.

The rules, from the support policy:
- Targets are working time (`[sla] hours`, Monday to Friday, in `[sla]
  timezone`, without `[sla] holidays`). A working day is one `hours` window.
  The first-response target of the priorities in `[sla]
  first_response_around_the_clock` (shipped: critical) counts every hour of
  every day instead: a critical bug mailed on Friday evening is due that
  evening, not on Monday. Resolution targets stay in working time.
- The clocks run while the ticket is `new` or `accepted`. They stop while it
  waits for the customer (`waiting_customer`) and while it is `resolved` or
  `closed`; a reopened ticket's clocks go on from where they stopped.
- The first response is met by the first answer that reached the customer
  (an agent's reply, a paid-work notice) or by an agent moving the ticket to
  `waiting_customer`, `resolved` or `closed`. Resolution is met while the
  ticket is `resolved` or `closed`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from maildesk.clock import as_utc
from maildesk.models import Event, Message, Ticket
from maildesk.states import TicketStatus

if TYPE_CHECKING:
    from maildesk.config import SlaSettings

RUNNING = frozenset({TicketStatus.NEW, TicketStatus.ACCEPTED})
DONE = frozenset({TicketStatus.RESOLVED, TicketStatus.CLOSED})
TARGETS = ("first_response", "resolution")
REMIND_AT = 0.75
_SPAN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(m|h|d)\s*$")
_HOURS = re.compile(r"^(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})$")


@dataclass(frozen=True)
class Calendar:
    """Working hours: one window a day, Monday to Friday, holidays off."""

    start: time
    end: time
    zone: ZoneInfo
    holidays: frozenset[date] = frozenset()

    @classmethod
    def parse(cls, hours: str, timezone: str, holidays: Iterable[str]) -> Calendar:
        match = _HOURS.match(hours.strip())
        if not match:
            raise ValueError(f"hours must look like 08:00-17:00, not {hours!r}")
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        start, end = time(h1, m1), time(h2, m2)
        if end <= start:
            raise ValueError(f"hours {hours!r} end before they start")
        return cls(
            start, end, ZoneInfo(timezone), frozenset(date.fromisoformat(d) for d in holidays)
        )

    @property
    def day(self) -> timedelta:
        """One working day: the length of the window."""
        return datetime.combine(date.min, self.end) - datetime.combine(date.min, self.start)

    def _window(self, day: date) -> tuple[datetime, datetime] | None:
        if day.weekday() >= 5 or day in self.holidays:
            return None
        opens = datetime.combine(day, self.start, self.zone).astimezone(UTC)
        closes = datetime.combine(day, self.end, self.zone).astimezone(UTC)
        return opens, closes

    def working(self, since: datetime, until: datetime) -> timedelta:
        """Working time between two moments."""
        total = timedelta()
        if until <= since:
            return total
        day = since.astimezone(self.zone).date()
        last = until.astimezone(self.zone).date()
        while day <= last:
            window = self._window(day)
            if window:
                opens, closes = max(window[0], since), min(window[1], until)
                if closes > opens:
                    total += closes - opens
            day += timedelta(days=1)
        return total

    def add(self, since: datetime, amount: timedelta) -> datetime:
        """The moment `amount` of working time after `since`."""
        day = since.astimezone(self.zone).date()
        left = amount
        for _ in range(3700):  # ten years of days: a bound, never reached by real targets
            window = self._window(day)
            if window:
                opens = max(window[0], since)
                if window[1] > opens:
                    if opens + left <= window[1]:
                        return opens + left
                    left -= window[1] - opens
            day += timedelta(days=1)
        raise ValueError("target too far in working time")


@dataclass(frozen=True)
class AroundTheClock:
    """Every hour of every day counts (a critical first response)."""

    @property
    def day(self) -> timedelta:
        return timedelta(days=1)

    def working(self, since: datetime, until: datetime) -> timedelta:
        return max(until - since, timedelta())

    def add(self, since: datetime, amount: timedelta) -> datetime:
        return since + amount


AROUND_THE_CLOCK = AroundTheClock()
Hours = Calendar | AroundTheClock  # what a target's time is counted in


def span(value: str, calendar: Hours) -> timedelta:
    """`"90m"`, `"8h"` or `"5d"` (days of `calendar`: working days, or whole days)."""
    match = _SPAN.match(value)
    if not match:
        raise ValueError(f"a target looks like 90m, 8h or 5d, not {value!r}")
    amount, unit = float(match.group(1)), match.group(2)
    if unit == "m":
        return timedelta(minutes=amount)
    if unit == "h":
        return timedelta(hours=amount)
    return calendar.day * amount


@dataclass(frozen=True)
class Policy:
    """The calendar and each priority's (first response, resolution) targets."""

    calendar: Calendar
    targets: dict[str, tuple[timedelta, timedelta]]
    # Priorities whose first-response target counts around the clock.
    around_the_clock: frozenset[str] = frozenset()

    def target(self, priority: str, which: str) -> timedelta:
        first, resolution = self.targets.get(priority, self.targets["normal"])
        return first if which == "first_response" else resolution

    def hours(self, priority: str, which: str) -> Hours:
        """What the target's time is counted in: working hours, or every hour."""
        if which == "first_response" and priority in self.around_the_clock:
            return AROUND_THE_CLOCK
        return self.calendar


@dataclass(frozen=True)
class StatusChange:
    at: datetime
    status: str


@dataclass(frozen=True)
class Clock:
    """One target's state at a moment."""

    name: str  # first_response | resolution
    target: timedelta
    used: timedelta  # working time the clock ran
    met_at: datetime | None  # when the target was met (the clock stopped for good)
    due: datetime | None  # when it runs out if it keeps running; None while paused or met
    breached: bool
    running: bool

    @property
    def share(self) -> float:
        return self.used / self.target if self.target else 1.0


@dataclass(frozen=True)
class State:
    first_response: Clock
    resolution: Clock

    @property
    def clocks(self) -> tuple[Clock, Clock]:
        return (self.first_response, self.resolution)

    def as_json(self) -> dict[str, object]:
        def iso(m: datetime | None) -> str | None:
            return m.isoformat() if m else None

        out: dict[str, object] = {}
        for c in self.clocks:
            out[f"{c.name}_due"] = iso(c.due)
            out[f"{c.name}_breached"] = c.breached
            out[f"{c.name}_met_at"] = iso(c.met_at)
            out[f"{c.name}_used"] = round(c.share, 3)
        out["paused"] = not self.resolution.running and self.resolution.met_at is None
        return out


def running_intervals(
    created: datetime, initial: str, changes: Sequence[StatusChange], until: datetime
) -> list[tuple[datetime, datetime]]:
    """The intervals up to `until` during which the status was `new` or `accepted`."""
    out: list[tuple[datetime, datetime]] = []
    status, since = initial, created
    for change in sorted(changes, key=lambda c: c.at):
        if change.at > until:
            break
        if status in RUNNING and change.at > since:
            out.append((since, change.at))
        status, since = change.status, change.at
    if status in RUNNING and until >= since:  # running now, even if it just started
        out.append((since, until))
    return out


def state(
    policy: Policy,
    priority: str,
    created: datetime,
    changes: Sequence[StatusChange],
    first_response: datetime | None,
    now: datetime,
    status: str,
) -> State:
    """Both clocks of one ticket at `now`. `changes` are its status events."""
    initial: str = TicketStatus.NEW  # every ticket starts new; its events say the rest
    first = _clock(
        policy.hours(priority, "first_response"),
        "first_response",
        policy.target(priority, "first_response"),
        running_intervals(created, initial, changes, min(first_response or now, now)),
        first_response if first_response and first_response <= now else None,
        now,
    )
    resolved_at = None
    if status in DONE:
        resolved_at = max((c.at for c in changes if c.status in DONE), default=now)
    resolution = _clock(
        policy.hours(priority, "resolution"),
        "resolution",
        policy.target(priority, "resolution"),
        running_intervals(created, initial, changes, now),
        resolved_at,
        now,
    )
    return State(first, resolution)


def _clock(
    cal: Hours,
    name: str,
    target: timedelta,
    intervals: list[tuple[datetime, datetime]],
    met_at: datetime | None,
    now: datetime,
) -> Clock:
    used = timedelta()
    breached_at: datetime | None = None
    for since, until in intervals:
        part = cal.working(since, until)
        if breached_at is None and used + part > target:
            breached_at = cal.add(since, target - used)
        used += part
    running = met_at is None and bool(intervals) and intervals[-1][1] >= now
    due = breached_at
    if due is None and running:
        last = intervals[-1]
        due = cal.add(last[0], target - (used - cal.working(*last)))
    return Clock(name, target, used, met_at, due, breached_at is not None, running)


def policy_from(settings: SlaSettings) -> Policy:
    """The policy `[sla]` describes; raises ValueError naming what is wrong."""
    calendar = Calendar.parse(settings.hours, settings.timezone, settings.holidays)
    priorities = ("critical", "normal", "low")
    around = frozenset(settings.first_response_around_the_clock)
    if not around <= set(priorities):
        unknown = ", ".join(sorted(around - set(priorities)))
        raise ValueError(f"first_response_around_the_clock: not a priority: {unknown}")
    targets = {}
    for priority in priorities:
        pair = getattr(settings, priority)
        if len(pair) != 2:
            raise ValueError(f'{priority} must be [first response, resolution], e.g. ["8h", "5d"]')
        first = AROUND_THE_CLOCK if priority in around else calendar
        targets[priority] = (span(pair[0], first), span(pair[1], calendar))
    return Policy(calendar, targets, around)


# -- reading the database ----------------------------------------------------------------

# Mail that answered the customer: the first of these meets the first response.
ANSWERS = ("agent_reply", "paid_notice")
ANSWERED_STATUSES = (TicketStatus.WAITING_CUSTOMER, TicketStatus.RESOLVED, TicketStatus.CLOSED)
BREACH = "breached"


def states(
    session: Session, policy: Policy, now: datetime, tickets: Sequence[Ticket]
) -> dict[int, State]:
    """Both clocks of each ticket, from its status events and first answer (two queries)."""
    ids = [t.id for t in tickets]
    if not ids:
        return {}
    changes: dict[int, list[StatusChange]] = {i: [] for i in ids}
    answered: dict[int, datetime] = {}
    events = session.execute(
        select(Event.ticket_id, Event.at, Event.new, Event.actor)
        .where(Event.ticket_id.in_(ids), Event.field == "status")
        .order_by(Event.id)
    )
    for tid, at, new, actor in events:
        at = as_utc(at)
        changes[tid].append(StatusChange(at, new or ""))
        if new in ANSWERED_STATUSES and actor != "system" and tid not in answered:
            answered[tid] = at
    replies = session.execute(
        select(Message.ticket_id, func.min(Message.created_at))
        .where(Message.ticket_id.in_(ids), Message.direction == "out", Message.kind.in_(ANSWERS))
        .group_by(Message.ticket_id)
    )
    for tid, at in replies:
        at = as_utc(at)
        answered[tid] = min(at, answered.get(tid, at))
    return {
        t.id: state(
            policy,
            t.priority,
            as_utc(t.created_at),
            changes[t.id],
            answered.get(t.id),
            now,
            t.status,
        )
        for t in tickets
    }


def overdue(session: Session) -> list[Ticket]:
    """Open tickets that breached a target (the job records breaches as events), latest first."""
    breached = (
        select(Event.ticket_id, func.max(Event.id).label("last"))
        .where(Event.field == "sla", Event.new.like(f"%{BREACH}"))
        .group_by(Event.ticket_id)
        .subquery()
    )
    query = (
        select(Ticket)
        .join(breached, breached.c.ticket_id == Ticket.id)
        .where(Ticket.status.not_in(DONE))
        .order_by(breached.c.last.desc())
    )
    return list(session.scalars(query))
