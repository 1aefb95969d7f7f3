"""Claims with expiring leases: the one way a worker takes a queued row to work on.

Both queues (the inbound spool and the outbox) claim through here, on SQLite
and PostgreSQL alike. A claim stamps the rows with a fresh random token and
pushes `next_attempt_at` one short lease ahead; the same select runs
`FOR UPDATE SKIP LOCKED` on PostgreSQL, so two instances never claim one row.
While a worker lives it renews its leases (`Keeper`, a thread), so a lease can
be short: a dead worker's rows are due again within one lease (`[workers]
lease_seconds`, 30 s by default), and whoever claims them next gets a new
token. Every finishing write names the token it holds
(`owned`), so a worker that lost its lease (it hung, or the clock jumped) can
never commit over the new owner's work.

A token also names the process that claimed (`claim_token`), so that a serve
starting on SQLite frees at once the claims of processes that have ended (a
crash), and only those: a `maildesk worker` running beside it as a unit of its
own keeps what it holds (`release_dead`).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

from sqlalchemy import ColumnElement, Integer, Table, and_, bindparam, or_, select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import BindParameter

from maildesk.clock import Clock, new_token
from maildesk.db import Database, rare
from maildesk.models import Inbound, Outbox
from maildesk.states import PENDING

log = logging.getLogger("maildesk.leases")

# The default length of a claim; `[workers] lease_seconds` sets this process's
# (`use_length`, called once by the composition root). One length per process,
# not per call: every claim and renewal of the process must agree, and every
# process sharing the database reads it from the same config.
LEASE = timedelta(seconds=30)
# A live worker renews three times per lease: one missed renewal (a busy writer
# lock, a slow fsync) does not lose a claim.
RENEW_EVERY = LEASE / 3
_length = LEASE


def use_length(length: timedelta) -> None:
    """Claims of this process last `length` (from `[workers] lease_seconds`)."""
    global _length
    _length = length


def length() -> timedelta:
    """How long a claim of this process lasts without renewal."""
    return _length


Queue = type[Inbound] | type[Outbox]


@dataclass(frozen=True)
class Claim:
    """Rows one worker claimed together: their ids and the token that proves it."""

    token: str
    ids: tuple[int, ...]


def due(model: Queue, now: datetime | BindParameter[datetime]) -> ColumnElement[bool]:
    """Pending, and either never claimed (inbound), due for a retry, or its lease ran out."""
    when: ColumnElement[bool] = model.next_attempt_at <= now
    if cast(Table, model.__table__).c.next_attempt_at.nullable:
        when = or_(model.next_attempt_at.is_(None), when)
    # rare(): else a quiet desk's statistics walk the history.
    return and_(rare(model.state == PENDING), when)


def select_due(session: Session, model: Queue, now: datetime, limit: int, *columns: Any) -> Any:
    """The due rows, oldest first, skipping rows another transaction holds (PostgreSQL)."""
    statement = _select_due(model, columns)
    return session.connection().execute(statement, {"now": now, "limit": limit}).all()


def take(session: Session, model: Queue, ids: list[int], now: datetime) -> Claim:
    """Claim `ids` (already selected FOR UPDATE in `session`): count an attempt, lease them.

    A Core update on the session's connection: a claiming transaction holds no ORM
    object of its queue to keep in step, and the ORM's update cost a claim of a few
    rows a fifth of its time."""
    token = claim_token()
    if ids:
        values = {"ids": ids, "until": now + _length, "token": token}
        session.connection().execute(_take(model), values)
    return Claim(token, tuple(ids))


# Built once per queue (and set of columns): claims run for every few messages.
@functools.cache
def _select_due(model: Queue, columns: tuple[Any, ...]) -> Any:
    return (
        select(*columns)
        .where(due(model, bindparam("now", type_=model.next_attempt_at.type)))
        .order_by(*_claim_order(model))
        .limit(bindparam("limit", type_=Integer))
        .with_for_update(skip_locked=True)
    )


def _claim_order(model: Queue) -> tuple[Any, ...]:
    """Inbound mail by fair turns, each sender's in arrival order (a reply is threaded
    after what it answers; `inbound/lanes.py`), in the order of the state index
    `ix_inbound_state_turn_id`. Outbound mail due longest first, the order of its state
    index (`ix_outbox_state_next`): in id order, every claim sorted all the mail waiting
    (a relay outage's backlog) while it held the write lock."""
    if model is Inbound:
        return (model.turn, model.id)
    return (model.next_attempt_at, model.id)


@functools.cache
def _take(model: Queue) -> Any:
    table = cast(Table, model.__table__)
    return (
        update(table)
        .where(table.c.id.in_(bindparam("ids", expanding=True)))
        .values(
            attempts=table.c.attempts + 1,
            next_attempt_at=bindparam("until", type_=table.c.next_attempt_at.type),
            claim=bindparam("token", type_=table.c.claim.type),
        )
    )


def owned(model: Queue, row_id: int, token: str) -> ColumnElement[bool]:
    """The row is still pending and still ours: the guard of every finishing write."""
    return and_(model.id == row_id, model.state == PENDING, model.claim == token)


def owned_of(model: Queue, ids: Any, token: Any) -> ColumnElement[bool]:
    """`owned` for several rows at once (`ids` a list, or an expanding bind parameter)."""
    return and_(model.id.in_(ids), model.state == PENDING, model.claim == token)


def give_back(session: Session, model: Queue, ids: list[int], token: str, now: datetime) -> None:
    """Unclaim rows not started: due again at once, the attempt not counted."""
    if ids:
        session.execute(
            update(model)
            .where(model.id.in_(ids), model.claim == token, model.state == PENDING)
            .values(attempts=model.attempts - 1, next_attempt_at=now, claim=None)
        )


def release_dead(session: Session, model: Queue, now: datetime) -> int:
    """At serve's start on SQLite: the claims of processes that have ended (a crash) are
    due now, instead of after their lease; the others stay their holders'.

    A live process's claim (a `maildesk worker` unit beside serve, an orphan that
    outlived its serve) is never freed: another worker would then send or process
    the same row while it still works on it. Rows waiting out a back-off after a
    failure keep it (they carry no claim token).
    """
    held = rare(model.state == PENDING)
    claimed = select(model.claim).where(held, model.claim.is_not(None)).distinct()
    dead: list[str] = []
    live: list[str] = []
    for token in session.scalars(claimed):
        if token is not None:
            (dead if _holder_ended(token) else live).append(token)
    if live:
        pids = sorted({int(p) for t in live if (p := t.partition(".")[0]).isdigit()})
        log.info(
            "%s: claims left to their holders, which may still run: pids %s",
            cast(Table, model.__table__).name,
            ", ".join(map(str, pids)) or "not named",
        )
    if not dead:
        return 0
    result = session.execute(
        update(model).where(held, model.claim.in_(dead)).values(next_attempt_at=now, claim=None)
    )
    return int(getattr(result, "rowcount", 0) or 0)


# -- who holds a claim ---------------------------------------------------------------
#
# A token is `pid.start.pidns.random`: the claiming process's pid, its start time
# (clock ticks since boot, from /proc/<pid>/stat: a pid used again by another
# process has another) and its PID namespace (the inode of /proc/self/ns/pid: a pid
# means nothing in another namespace, such as another container's), both in base 36.
# Whatever cannot be judged (no /proc, another namespace, a process /proc hides, a
# token from before this format) counts as alive: its lease decides, as on PostgreSQL.

# The claim columns' width (models.py: String(32)); the random part fills the rest.
TOKEN_LENGTH = 32
_MIN_RANDOM = 6  # characters: the random part tells apart one process's claims
_this: tuple[int, str | None] | None = None  # (pid, claimant): a new process computes its own


def claim_token() -> str:
    """A fresh claim token naming this process (`new_token` alone without /proc)."""
    global _this
    pid = os.getpid()
    if _this is None or _this[0] != pid:
        _this = (pid, claimant(pid))
    me = _this[1]
    random = new_token()
    if me is None or len(me) + 1 + _MIN_RANDOM > TOKEN_LENGTH:
        return random
    return f"{me}.{random}"[:TOKEN_LENGTH]


def claimant(pid: int) -> str | None:
    """How a token names process `pid` of this PID namespace (`pid.start.pidns`); None
    when /proc does not tell."""
    stat, namespace = _stat(pid), _namespace()
    if stat is None or namespace is None:
        return None
    return f"{pid}.{_base36(stat[1])}.{namespace}"


def _holder_ended(token: str) -> bool:
    """Whether the process that took the claim `token` has surely ended."""
    parts = token.split(".")
    if len(parts) != 4 or not parts[0].isdigit() or int(parts[0]) <= 0:
        return False
    pid, start, namespace = int(parts[0]), parts[1], parts[2]
    if namespace != _namespace():
        return False
    try:
        os.kill(pid, 0)  # hidepid= hides other users' processes in /proc, not here
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # it exists: another user's
    stat = _stat(pid)
    if stat is None:
        return False  # /proc hides it, or it ended this moment: its lease decides
    state, ticks = stat
    # A zombie has ended; another start time is another process under the same pid.
    return state in ("Z", "X") or _base36(ticks) != start


def _stat(pid: int) -> tuple[str, int] | None:
    """Process `pid`'s state and start time (clock ticks since boot), from /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # pid (comm) state ...: the comm may hold anything, so read after its last ')'.
    # The state is the 3rd field, the start time the 22nd.
    fields = stat.rpartition(")")[2].split()
    try:
        return fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None


def _namespace() -> str | None:
    try:
        return _base36(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return None


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    text = ""
    while True:
        n, rest = divmod(n, 36)
        text = digits[rest] + text
        if not n:
            return text


class Keeper:
    """A thread that renews the leases of the rows a worker holds, while it holds them.

    `hold(ids, until)` renews them until `until` (a processing deadline) at most:
    a worker stuck past its deadline stops renewing, its lease runs out, and the
    next claim counts another attempt. `drop(ids)` stops renewing finished rows.
    """

    def __init__(
        self,
        db: Database,
        model: Queue,
        clock: Clock,
        token: str,
        every: float | None = None,
    ) -> None:
        self._db, self._model, self._clock, self._token = db, model, clock, token
        # Seconds between renewals: three per lease (tests renew often to watch it on a
        # manual clock).
        self._every = every if every is not None else (_length / 3).total_seconds()
        self._held: dict[int, datetime | None] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)

    def __enter__(self) -> Keeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def hold(self, ids: tuple[int, ...] | list[int], until: datetime | None = None) -> None:
        with self._lock:
            for row_id in ids:
                self._held[row_id] = until

    def drop(self, ids: tuple[int, ...] | list[int]) -> None:
        with self._lock:
            for row_id in ids:
                self._held.pop(row_id, None)

    @property
    def every(self) -> timedelta:
        """The time between two renewals: a live holder's lease has more left than this."""
        return timedelta(seconds=self._every)

    def renew(self) -> None:
        now = self._clock.now()
        with self._lock:
            ids = [i for i, until in self._held.items() if until is None or now < until]
        if ids:
            self.renew_now(ids)

    def renew_now(self, ids: list[int]) -> set[int]:
        """Renew these rows' leases at once; the ids of those still ours (the others
        are no longer held: another worker claimed them, or they were retried)."""
        model = self._model
        with self._db.transaction() as session:
            renewed = set(
                session.scalars(
                    update(model)
                    .where(model.id.in_(ids), model.claim == self._token, model.state == PENDING)
                    .values(next_attempt_at=self._clock.now() + _length)
                    .returning(model.id)
                )
            )
        lost = [row_id for row_id in ids if row_id not in renewed]
        if lost:
            self.drop(lost)
        return renewed

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            try:
                self.renew()
            except Exception:  # the next renewal may succeed; the lease has slack
                log.exception("renewing leases failed")
