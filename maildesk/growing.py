"""Counts of a table that only grows, read without reading its history again.

Inbound, outbox and ticket rows are never deleted (retention.py keeps them as the
audit line and as the ids replies thread by), and the column counted by (a row's
route) never changes. So a row counted once counts forever: `GrowingCount` keeps
the counts of the rows below an id floor from earlier reads, and each read counts
only the rows from the floor up, then raises the floor. A /metrics scrape then
costs what arrived since the last one, not what a desk kept over years (at
1,000,000 kept messages a scrape read every row, 0.9 s of CPU; `bench/health.py`).

The floor may only rise over ids no transaction can still add. On SQLite that is
every id a read sees: writers take turns, each id is the highest so far plus one,
and a read sees every commit before it began. On PostgreSQL a sequence hands out
ids before their transactions commit, and those commit in any order, so a read can
see row 101 while row 100 is still to come. There the floor rises to the highest
id seen by a read at least `settle` earlier: a row whose transaction took longer
than that to commit is missed, until the next full count, every `recount`.

Counts by state are not kept here: rows change state, so the few rows not in a
table's usual final state are counted through the state index (`metrics.py`), and
the rest is the total less those.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import InstrumentedAttribute, Session

# How late after its id a row's transaction may commit on PostgreSQL and still be
# counted before the next full count: far more than any of our writes holds.
SETTLE = timedelta(seconds=60)
# A full count this often: bounds what a very late commit, or a restore of the
# database under a running daemon, can leave wrong.
RECOUNT = timedelta(hours=1)


class GrowingCount:
    """How many rows the table of `id` holds, by `by` (a column whose value never
    changes; None: in all), read in time proportional to the rows added since the
    last read.

    Not thread-safe: the caller reads under its own lock. Each read must run in one
    snapshot (`Database.reading(snapshot=True)`), so that the highest id and the
    counts agree.
    """

    def __init__(
        self,
        id: InstrumentedAttribute[int],
        by: InstrumentedAttribute[Any] | None = None,
        settle: timedelta = SETTLE,
        recount: timedelta = RECOUNT,
    ) -> None:
        self._id = id
        self._by = by
        self._settle = settle
        self._recount = recount
        self._floor = 0  # every row below is in `_below`
        self._below: Counter[Any] = Counter()
        self._seen: list[tuple[datetime, int]] = []  # (when, highest id then) of recent reads
        self._counted_at: datetime | None = None  # when the last full count began

    def read(self, session: Session, now: datetime) -> dict[Any, int]:
        """Rows by `by` (the key None when `by` is None), as of `session`'s snapshot."""
        due = self._counted_at is None or now - self._counted_at >= self._recount
        if due or (self._seen and now < self._seen[-1][0]):  # or the clock went back
            self._floor, self._below, self._seen = 0, Counter(), []
            self._counted_at = now
        top = session.scalar(select(func.max(self._id))) or 0
        self._seen.append((now, top))
        # The newest read old enough to settle, and those still too young, are kept.
        old_enough = [i for i, (at, _) in enumerate(self._seen) if at <= now - self._settle]
        if old_enough:
            self._seen = self._seen[old_enough[-1] :]
            new_floor = max(self._floor, self._seen[0][1] + 1)
        else:
            new_floor = self._floor

        keys = [self._by] if self._by is not None else []
        is_settled = self._id < new_floor
        found = session.execute(
            select(*keys, is_settled, func.count())
            # The snapshot holds no id above `top`. Said anyway, it makes this a narrow
            # range to PostgreSQL's planner even before the table has statistics
            # (`id >= floor` alone was a scan of 3,000,000 outbox rows).
            .where(self._id.between(self._floor, top))
            .group_by(*keys, is_settled)
        )
        fresh: Counter[Any] = Counter()
        for *value, below, count in found:
            (self._below if below else fresh)[value[0] if value else None] += count
        self._floor = new_floor
        return dict(self._below + fresh)
