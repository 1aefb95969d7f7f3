"""The inbound spool: raw bytes committed durably before anyone says "accepted",
and every state a stored row goes through afterwards.

Every route in (SMTP/LMTP, IMAP, `deliver`, portal replies) calls
`InboundStore.put` (or `put_async` on the event loop) and only answers 250 /
exits 0 / moves the IMAP message once it returned. Concurrent puts are
group-committed (`groupcommit.py`): whatever waits is written in one
transaction, and each put returns after that commit. On SQLite that
transaction is in the landing (`landing.py`), a file no processing writes to,
and a claim first moves what landed into the spool; on PostgreSQL it is the
spool itself. `import` writes its own batches (`put_many`).
The processor then `claim`s due rows (leases from `maildesk/leases.py`),
`load`s each one's bytes alone (from `inbound_raw`, written once: the row
itself is updated at every claim and finish), and in its write transaction `lock`s
the row it still owns and `finish`es, `quarantine`s or `retry_later`s it.
A row that used up `MAX_ATTEMPTS` claims without finishing (its processing
crashed, was killed or hung) is quarantined by the next claim. Nothing here
parses mail.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection, Dialect, Integer, String, bindparam, func, insert, select, update
from sqlalchemy.orm import Session, object_session
from sqlalchemy.orm.attributes import set_committed_value

from maildesk import leases, logs
from maildesk.clock import Clock, as_utc
from maildesk.db import LOCK_TIMEOUT_SECONDS, Database, rare
from maildesk.hotsql import Hot, connection_of
from maildesk.inbound import landing, lanes, rawbytes
from maildesk.inbound.groupcommit import GroupCommit, Waiting
from maildesk.inbound.room import Room
from maildesk.models import Inbound, QuarantineRetry
from maildesk.states import InboundState

# What it did is logged once its transaction committed (logs.transactional).
log = logs.transactional("maildesk.spool")

# Claims of one row that may end without finishing it before the next claim
# quarantines it: a message that kills or hangs the processor is tried this
# often, and alone after its first failure, never forever.
MAX_ATTEMPTS = 3
# What an envelope may bring that no database stores: NUL (PostgreSQL's text holds
# none) and lone surrogates (aiosmtpd's surrogateescape for bytes that are no UTF-8).
_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")


@dataclass(frozen=True)
class Envelope:
    source: str  # smtp | lmtp | imap | deliver | import | web
    mail_from: str = ""
    rcpt_to: tuple[str, ...] = ()
    # Importing old mail must not write to customers.
    notify: bool = True
    peer: str = ""  # the SMTP client's IP address


def _storable(value: str) -> str:
    """An envelope's text as every database stores it: the commit holds every mail
    arriving at once, and one sender's MAIL FROM failed it (a 451) for them all."""
    return _UNSTORABLE.sub("\ufffd", value)


def digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


# One statement for a batch's rows, their ids back in the order given.
_INSERT = insert(Inbound).returning(Inbound.id, sort_by_parameter_order=True)
# On SQLite, the same rows one at a time on the driver's cursor, each id its rowid: that
# statement through SQLAlchemy (insertmanyvalues, sorted RETURNING, a result object)
# cost the group commit more CPU than the rest of its transaction.
_COLUMNS = (
    "received_at",
    "source",
    "mail_from",
    "peer",
    "rcpt_to",
    "size",
    "digest",
    "notify",
    "state",
    "attempts",
    "reason",
    "error",
    "lane",
    "turn",
)
_INSERT_SQLITE = "INSERT INTO inbound ({}) VALUES ({})".format(
    ", ".join(_COLUMNS), ", ".join("?" for _ in _COLUMNS)
)

# Above this size `put_async` hashes in a thread: SHA-256 of 24 MB takes 20-40 ms,
# the event loop's time for every other session; 1 MiB takes under 1 ms.
HASH_OFF_LOOP = 1 << 20


@dataclass(frozen=True)
class _Incoming:
    """A message at the door, hashed before it queues: the digest is not computed
    in the group commit's transaction, where it would hold the write lock."""

    raw: bytes
    envelope: Envelope
    digest: str


class InboundStore:
    def __init__(self, db: Database, clock: Clock, room: Room | None = None) -> None:
        self._db = db
        self._clock = clock
        # Below its reserve, every route's new mail is refused for now (`room.py`).
        self.room = room
        self._door: GroupCommit[_Incoming] = GroupCommit(self._commit_waiting)
        self._listeners: list[Callable[[], None]] = []
        # On SQLite, accepted mail lands in a file of its own (`landing.py`).
        file = landing.sqlite_file(db.url)
        self._landing = landing.Landing(db, landing.path_of(file)) if file else None
        if self._landing is not None:
            db.on_dispose(self._landing.close)

    def on_stored(self, listener: Callable[[], None]) -> None:
        """Call `listener` (from the committing thread) after each commit of new mail:
        the daemon wakes its workers, whichever route (SMTP, IMAP, a portal reply) stored it."""
        self._listeners.append(listener)

    def _announce(self) -> None:
        for listener in self._listeners:
            listener()

    @property
    def commits(self) -> int:
        """Group commits so far in this process (each one fsync for all its messages)."""
        return self._door.commits

    @property
    def waiting(self) -> int:
        """Messages waiting for the next group commit."""
        return self._door.waiting

    def fits(self, size: int) -> bool:
        """Whether a message of `size` bytes leaves the disk's reserve free (`room.py`),
        with what waits at the door for its commit counted as written."""
        return self.room is None or self.room.fits(size + self._door.pending_bytes)

    def _check_room(self, size: int) -> None:
        if self.room is not None:
            self.room.check(size + self._door.pending_bytes)

    def put(self, raw: bytes, envelope: Envelope) -> int:
        """Commit the bytes; returns the spool id. Raises if they are not stored
        (`NoRoom` when the disk is down to its reserve)."""
        self._check_room(len(raw))
        incoming = _Incoming(raw, envelope, digest(raw))
        return self._door.submit(incoming, len(raw)).result()

    async def put_async(self, raw: bytes, envelope: Envelope) -> int:
        """`put` for the event loop: waits for the group commit without holding a thread."""
        self._check_room(len(raw))
        if len(raw) > HASH_OFF_LOOP:
            hashed = await asyncio.to_thread(digest, raw)
        else:
            hashed = digest(raw)
        incoming = _Incoming(raw, envelope, hashed)
        # A database that takes the commit and never answers (a failover, a lock) must
        # not hold the client for as long: SQLite's writer gives up after this long too.
        # Past it the commit may still land; the client, told to retry, sends the same
        # mail again, a duplicate the processor recognizes.
        return await asyncio.wait_for(
            self._door.submit_async(incoming, len(raw)), LOCK_TIMEOUT_SECONDS
        )

    def _commit_waiting(self, take: Callable[[], list[Waiting[_Incoming]]]) -> list[int]:
        # Urgent: someone is waiting for a 250. The batch is taken once the lock is ours,
        # so what arrived while we waited joins this commit.
        ids = self._store(lambda: [w.item for w in take()], urgent=True)
        self._announce()
        return ids

    def _store(self, take: Callable[[], Sequence[_Incoming]], urgent: bool) -> list[int]:
        """Commit what `take()` gives once the write lock is ours: into the landing on
        SQLite, else the spool."""
        if self._landing is None:
            with self._db.writing(urgent) as connection:
                return self._insert(connection, take(), self._clock.now())
        with self._landing.door(urgent) as driver:
            items = take()
            now = self._clock.now()
            ids = _insert_sqlite(driver, self._landing.dialect, [self._row(i, now) for i in items])
            rawbytes.write_sqlite(driver, list(zip(ids, (i.raw for i in items), strict=True)))
            return ids

    @property
    def door(self) -> Database:
        """The database a 250 waits on: the landing's on SQLite (`landing.py`), else the
        spool's own."""
        if self._landing is None:
            return self._db
        self._landing.ready()
        return self._landing.db

    def put_many(self, raws: Sequence[bytes], envelope: Envelope) -> list[int]:
        """Commit several messages in one transaction (one fsync) and return their ids.

        Bulk work (`import`): not urgent, so the 250s waiting for the same lock go first.
        """
        self._check_room(sum(map(len, raws)))
        items = [_Incoming(raw, envelope, digest(raw)) for raw in raws]
        ids = self._store(lambda: items, urgent=False)
        self._announce()
        return ids

    def _insert(
        self, connection: Connection, items: Sequence[_Incoming], now: datetime
    ) -> list[int]:
        """The rows, then their bytes in a table of their own (written once, never updated;
        `rawbytes` streams them in slices)."""
        if not items:
            return []
        # Not ORM objects: this runs under the write lock a 250 waits for, and the ORM's
        # unit of work cost more than the rest of the commit but the fsync.
        rows = [self._row(item, now) for item in items]
        lanes.assign(connection, rows)
        if connection.dialect.name == "sqlite":  # a spool without its landing (`:memory:`)
            driver = connection.connection.driver_connection
            ids = _insert_sqlite(driver, connection.dialect, rows)
        else:
            ids = list(connection.execute(_INSERT, rows).scalars())
        rawbytes.write(connection, list(zip(ids, (item.raw for item in items), strict=True)))
        return ids

    @staticmethod
    def _row(item: _Incoming, now: datetime) -> dict[str, object]:
        envelope = item.envelope
        return dict(
            received_at=now,
            source=envelope.source,
            mail_from=_storable(envelope.mail_from),
            peer=envelope.peer,
            rcpt_to=[_storable(rcpt) for rcpt in envelope.rcpt_to],
            size=len(item.raw),
            digest=item.digest,
            notify=envelope.notify,
            state=InboundState.PENDING,
            attempts=0,
            reason="",
            error="",
            # The turn is given as the row enters the spool (`lanes.assign`).
            lane=_storable(lanes.lane_of(envelope.source, envelope.mail_from, item.raw)),
            turn=0,
        )

    def known_digests(self, digests: Sequence[str]) -> set[str]:
        """Which of these exact byte strings are already stored (for idempotent import)."""
        found: set[str] = set()
        with self._db.transaction() as session:
            for start in range(0, len(digests), 500):
                chunk = list(digests[start : start + 500])
                found.update(
                    session.scalars(select(Inbound.digest).where(Inbound.digest.in_(chunk)))
                )
        if self._landing is not None:
            found |= self._landing.known_digests(digests)
        return found

    def requeue(self, inbound_id: int, by: str = "") -> bool:
        """Send a quarantined message through the pipeline again, with fresh attempts.
        Why it was held is kept (`QuarantineRetry`, with `by`, who asked): should it be
        held again, its new reason does not hide the first."""
        with self._db.transaction() as session:
            row = session.get(Inbound, inbound_id, with_for_update=True)
            if row is None or row.state != InboundState.QUARANTINED:
                return False
            session.add(
                QuarantineRetry(
                    inbound_id=row.id,
                    quarantined_at=row.processed_at,
                    reason=row.reason,
                    error=row.error,
                    retried_at=self._clock.now(),
                    retried_by=by[:64],
                )
            )
            row.state = InboundState.PENDING
            row.attempts = 0
            row.next_attempt_at = None
            row.claim = None
            row.reason = ""
            row.error = ""
            return True

    # -- the processor's side --------------------------------------------------

    def claim(self, limit: int) -> Batch:
        """Lease up to `limit` due rows; quarantine those whose attempts are used up.

        A row claimed before without finishing may be the one that crashed the
        last worker, so it is claimed alone. What landed moves into the spool first,
        in the same transaction: one turn of SQLite's write lock, not two.
        """
        with self._landed() as move:
            now = self._clock.now()
            with self._db.transaction() as session:
                if move is not None:
                    self._move_landed(session, move)
                rows = leases.select_due(session, Inbound, now, limit, *_CLAIMED_COLUMNS)
                spent = [r.id for r in rows if r.attempts >= MAX_ATTEMPTS]
                for row_id in spent:
                    self._exhausted(session, row_id, now)
                rows = [r for r in rows if r.attempts < MAX_ATTEMPTS]
                if rows and rows[0].attempts > 0:
                    rows = rows[:1]
                else:
                    rows = [r for r in rows if r.attempts == 0]
                claim = leases.take(session, Inbound, [r.id for r in rows], now)
                claimed = tuple(Claimed(r.id, r.size, r.mail_from, r.source, r.peer) for r in rows)
        return Batch(claim, claimed, len(spent))

    @contextmanager
    def _landed(self) -> Iterator[landing.Move | None]:
        """The landing's mover turn when mail waits there (SQLite), else None. Once the
        claim's transaction committed, the end of the `with` deletes what moved. A
        landing that cannot be read (a damaged file, a full disk) is logged and left as
        it is: the mail already in the spool is still claimed."""
        turn: AbstractContextManager[landing.Move | None] | None = None
        move = None
        try:
            if self._landing is not None and not self._landing.empty():
                turn = self._landing.moving()
                move = turn.__enter__()
        except Exception:
            log.exception("could not move accepted mail from the landing; it stays there")
            turn = move = None
        if turn is None:
            yield move
            return
        try:
            yield move
        except BaseException:
            turn.__exit__(*sys.exc_info())  # nothing is deleted: the copy did not commit
            raise
        try:
            turn.__exit__(None, None, None)
        except Exception:
            # The spool has the copies, the landing still too: the next move finds them
            # there by digest and only deletes them.
            log.exception("could not delete moved mail from the landing")

    def _move_landed(self, session: Session, move: landing.Move) -> None:
        """Copy what landed into the spool, in the claim's transaction but in a savepoint:
        a copy that fails is logged and undone, and the claim goes on."""
        try:
            with session.begin_nested():
                move.into(session.connection())
        except Exception:
            log.exception("could not move accepted mail from the landing; it stays there")
            move.moved.clear()

    def move_landed(self) -> int:
        """Move whatever waits in the landing into the spool now, as a claim does
        first (SQLite); returns how many messages moved."""
        return self._landing.drain() if self._landing is not None else 0

    def _exhausted(self, session: Session, row_id: int, now: datetime) -> None:
        row = session.get(Inbound, row_id)
        assert row is not None
        reason = (
            f"processing did not finish in {MAX_ATTEMPTS} attempts "
            "(the processor crashed, was killed or hung on this message)"
        )
        self.quarantine(row, reason, row.error, now)

    def load(self, row: int | Claimed) -> Stored:
        """One message's bytes: the only place a processor reads them, one at a time.

        A claimed row already carries its envelope (the claim read it): only the bytes
        are read then."""
        if isinstance(row, int):
            return self._load_anywhere(row)
        with self._db.reading_connection() as connection:
            raw = rawbytes.read(connection, row.id)
        if raw is None:
            raise LookupError(f"inbound {row.id} has no stored bytes")
        return Stored(row.id, raw, row.mail_from, row.source, row.peer)

    def _load_anywhere(self, spool_id: int) -> Stored:
        """A message by its spool id, still in the landing or moved into the spool
        (looked for in that order: a row only ever moves that way)."""
        databases = [self._db]
        if self._landing is not None:
            self._landing.ready()
            databases.insert(0, self._landing.db)
        for database in databases:
            with database.reading_connection() as connection:
                found = connection.execute(_ENVELOPE, {"id": spool_id}).first()
                raw = rawbytes.read(connection, spool_id) if found is not None else None
            if found is not None and raw is not None:
                return Stored(spool_id, raw, found.mail_from, found.source, found.peer)
        raise LookupError(f"inbound {spool_id} has no stored bytes")

    def lock(self, session: Session, ids: Sequence[int], token: str) -> dict[int, Inbound]:
        """Those of the rows still pending and leased under `token`, locked, by id (one
        statement for a transaction's rows, not one per row)."""
        found = session.scalars(_LOCK, {"ids": list(ids), "token": token})
        return {row.id: row for row in found}

    def finish(self, row: Inbound, state: InboundState, now: datetime) -> None:
        """The row's last state. A Core update (the row is locked and ours), and the loaded
        row told it as saved: through the unit of work, this one change made every
        message's savepoint run a flush."""
        session = object_session(row)
        assert session is not None
        _FINISH.run(connection_of(session), {"row_id": row.id, "to_state": state, "at": now})
        values = {"state": state, "processed_at": now, "next_attempt_at": None, "claim": None}
        for name, value in values.items():
            set_committed_value(row, name, value)

    def quarantine(self, row: Inbound, reason: str, trace: str, now: datetime) -> None:
        log.warning("inbound %d quarantined: %s", row.id, reason)
        self.finish(row, InboundState.QUARANTINED, now)
        row.reason = reason[:2000]
        row.error = trace

    def retry_later(self, row: Inbound, trace: str, now: datetime) -> None:
        """A failure that may pass: back off (5 s doubling) and give up the claim."""
        row.error = trace
        row.next_attempt_at = now + timedelta(seconds=5 * 2**row.attempts)
        row.claim = None

    def retry_soon(self, row: Inbound, trace: str, now: datetime) -> None:
        """The row's transaction gave way to another one (a deadlock): due again within
        a second, at a random moment so that the two do not meet the same way again, and
        the attempt given back, as the message was not at fault."""
        row.error = trace
        row.attempts = max(0, row.attempts - 1)
        row.next_attempt_at = now + timedelta(seconds=random.random())  # noqa: S311 (jitter)
        row.claim = None

    def give_back(self, batch: Batch, ids: Sequence[int]) -> None:
        """Rows claimed but not started: due again at once, their attempt not counted."""
        with self._db.transaction() as session:
            leases.give_back(session, Inbound, list(ids), batch.claim.token, self._clock.now())

    def release(self) -> int:
        """At serve's start on SQLite: rows whose claimant has ended (a crash) are due now."""
        with self._db.transaction() as session:
            return leases.release_dead(session, Inbound, self._clock.now())

    def counts(
        self,
        quarantined_since: datetime | None = None,
        states: Sequence[InboundState] = tuple(InboundState),
    ) -> SpoolCounts:
        """How many rows are in each of `states`, and how old the backlog is (a deferred
        read)."""
        with self._db.reading() as session:
            return counts(session, quarantined_since, states)


def _insert_sqlite(driver: Any, dialect: Dialect, rows: Sequence[dict[str, Any]]) -> list[int]:
    """`_INSERT_SQLITE` for each row on the driver's connection, its values converted as
    SQLAlchemy would bind them; the ids (rowids) in order."""
    processors = _bind_processors(dialect)
    cursor = driver.cursor()
    try:
        ids = []
        for row in rows:
            values = [row[name] if p is None else p(row[name]) for name, p in processors]
            cursor.execute(_INSERT_SQLITE, values)
            ids.append(int(cursor.lastrowid))
        return ids
    finally:
        cursor.close()


@lru_cache(maxsize=4)
def _bind_processors(dialect: Dialect) -> tuple[tuple[str, Callable[[Any], Any] | None], ...]:
    """Each of `_COLUMNS` with the dialect's conversion of its type (JSON, timestamps)."""
    columns = Inbound.__table__.c
    return tuple(
        (name, columns[name].type.dialect_impl(dialect).bind_processor(dialect))
        for name in _COLUMNS
    )


# The states of rows that wait for someone: the processor, or ops (`maildesk
# quarantine`). Every row ever stored stays (as the audit line, retention.py), so
# counting all states reads the whole history; these few are a search of the state
# index. /healthz and the status line count these alone.
WAITING = (InboundState.PENDING, InboundState.QUARANTINED)


@dataclass(frozen=True)
class SpoolCounts:
    """The spool at one moment: what status lines, /healthz and /metrics show."""

    by_state: dict[str, int]  # each state counted, zeros included (KeyError: not counted)
    oldest_pending: datetime | None  # when the oldest unprocessed message was received
    quarantined_since: int = 0  # quarantined after the moment `counts` was asked about
    landed: int = 0  # of the pending: accepted, not yet moved into the spool's table

    def __getitem__(self, state: InboundState) -> int:
        return self.by_state[state]


def busiest_senders(session: Session, limit: int = 3) -> list[tuple[str, int]]:
    """The lanes (`lanes.py`) with the most mail waiting, most first: who a flood
    comes from. A read of every waiting row (the lane index, and on SQLite the
    landing): for `status`, not for /healthz."""
    rows = session.execute(
        select(Inbound.lane, func.count())
        .where(rare(Inbound.state == InboundState.PENDING))
        .group_by(Inbound.lane)
    )
    waiting = Counter({lane: int(count) for lane, count in rows})
    file = landing.sqlite_file(str(session.get_bind().engine.url))
    if file is not None:
        waiting.update(landing.waiting_by_lane(landing.path_of(file)))
    return sorted(waiting.items(), key=lambda item: (-item[1], item[0]))[:limit]


def counts(
    session: Session,
    quarantined_since: datetime | None = None,
    states: Sequence[InboundState] = tuple(InboundState),
) -> SpoolCounts:
    """The spool's counts of `states` (default all: a read of every row ever stored;
    `WAITING`: of the rows still waiting), read in `session` (callers that read more
    in one transaction)."""
    pending, oldest = session.execute(
        select(func.count(), func.min(Inbound.received_at)).where(
            rare(Inbound.state == InboundState.PENDING)
        )
    ).one()
    landed_count = 0
    file = landing.sqlite_file(str(session.get_bind().engine.url))
    if file is not None:
        # Accepted, not yet moved into the spool: pending all the same.
        landed = landing.waiting(landing.path_of(file))
        pending += landed.count
        landed_count = landed.count
        if landed.oldest is not None and (oldest is None or landed.oldest < as_utc(oldest)):
            oldest = landed.oldest
    by_state = dict.fromkeys(map(str, states), 0)
    if InboundState.PENDING in states:
        by_state[InboundState.PENDING] = int(pending)
    if rest := [state for state in states if state != InboundState.PENDING]:
        found = session.execute(
            select(Inbound.state, func.count())
            .where(rare(Inbound.state.in_(rest)))
            .group_by(Inbound.state)
        )
        by_state.update({str(state): int(n) for state, n in found})
    recent: int | None = 0
    if quarantined_since is not None:
        recent = session.scalar(
            select(func.count()).where(
                rare(Inbound.state == InboundState.QUARANTINED),
                Inbound.processed_at > quarantined_since,
            )
        )
    return SpoolCounts(by_state, as_utc(oldest) if oldest else None, int(recent or 0), landed_count)


@dataclass(frozen=True)
class Stored:
    id: int
    raw: bytes
    mail_from: str
    source: str  # the route: which mail a stranger could have written (spam check)
    peer: str = ""  # the SMTP client: whether our MTA relayed it (sender proof)


@dataclass(frozen=True)
class Claimed:
    """A row as its claim read it: enough to load its bytes without another query."""

    id: int
    size: int
    mail_from: str = ""
    source: str = ""
    peer: str = ""


_CLAIMED_COLUMNS = (
    Inbound.id,
    Inbound.attempts,
    Inbound.size,
    Inbound.mail_from,
    Inbound.source,
    Inbound.peer,
)
_ENVELOPE = select(Inbound.mail_from, Inbound.source, Inbound.peer).where(
    Inbound.id == bindparam("id")
)
_FINISH = Hot(  # every processed message's last statement (hotsql.py)
    update(Inbound)
    .where(Inbound.id == bindparam("row_id", type_=Integer))
    .values(
        state=bindparam("to_state"),
        processed_at=bindparam("at"),
        next_attempt_at=None,
        claim=None,
    )
)
# Built once: this runs for every message, and building the clause cost more than
# executing it.
_LOCK = (
    select(Inbound)
    .where(
        leases.owned_of(Inbound, bindparam("ids", expanding=True), bindparam("token", type_=String))
    )
    .with_for_update()
)


@dataclass(frozen=True)
class Batch:
    """What one `claim` leased, and how many rows it quarantined as exhausted."""

    claim: leases.Claim
    rows: tuple[Claimed, ...]
    exhausted: int
