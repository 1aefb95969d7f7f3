"""The outbox sender: drains queued rows to the transport, each sent once in practice.

Rows are claimed with the same claim/lease code as the inbound spool
(`maildesk/leases.py`): a short transaction stamps them with a claim token and
a 30-second lease (`FOR UPDATE SKIP LOCKED` on PostgreSQL, so two instances
never claim one row). Each row is then sent outside any transaction (an SMTP
conversation must not hold SQLite's write lock) while a `Keeper` thread renews
the leases of the rows still held, and is marked sent by a write that names the
token. A sender that dies stops renewing: another instance (or this one,
restarted) claims its rows again within one lease.

Sending is at-least-once only in SMTP's own window: killed between the relay's
250 and our commit, the row is sent again under the same key and Message-ID.
Over SMTP each row is marked as soon as the relay took it, so the receiver sees
the same Message-ID twice at worst, for one message: the one window no sender
can close without the relay's help. The Maildir transport never writes a key
twice, so there a claimed batch is written, its folder fsynced once, and its
rows marked in one commit (three fsyncs per message became about one).

Mail the processor queues usually needs no claim of the sender's own: the
processing transaction that queues it also claims due rows, in the same commit,
and hands them to its process's sender (`Handoff`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Connection, CursorResult, Table, bindparam, case, func, select, update
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from maildesk import leases
from maildesk.clock import Clock, as_utc
from maildesk.config import OutboundSettings
from maildesk.db import Database, rare
from maildesk.hotsql import Hot
from maildesk.inbound import rawbytes
from maildesk.logs import log_context
from maildesk.models import Outbox
from maildesk.outbound.transport import PermanentFailure, TemporaryFailure, Transport
from maildesk.states import OutboxState

if TYPE_CHECKING:  # dkimpy is loaded only where signing is configured
    from maildesk.outbound.dkim import Signer

log = logging.getLogger("maildesk.outbox")

LEASE = leases.LEASE
# A message the relay has refused for this long is an ERROR (someone must look), not
# a WARNING (a relay restarting, a greylisting pause).
FAILING_IS_AN_ERROR = timedelta(hours=1)
# Between two tries to record what the relay said while the database is away
# (`_record`).
RECORD_PAUSE = 0.5


# Built once: an ORM update compiled for every row sent cost more than the send.
_FINISH = (
    update(cast(Table, Outbox.__table__))
    .where(leases.owned_of(Outbox, bindparam("ids", expanding=True), bindparam("token")))
    .values(
        state=bindparam("new_state"),
        last_error=bindparam("error"),
        claim=None,
        sent_at=bindparam("at"),
    )
)


# The lease a sender holds on one row, if it still holds it (`_still_ours`).
_HELD = Hot(
    select(Outbox.next_attempt_at).where(
        leases.owned_of(Outbox, [bindparam("id")], bindparam("token"))
    )
)


@dataclass(frozen=True)
class Claimed:
    id: int
    message_id: str
    sender: str
    recipients: tuple[str, ...]
    attempts: int
    created_at: datetime


@dataclass(frozen=True)
class Batch:
    """Rows claimed together under one token, and when."""

    token: str
    rows: tuple[Claimed, ...]
    at: datetime


class Handoff:
    """Outbox rows the processing transaction claims for this process's sender.

    The sender's own claim is a write transaction, and on SQLite it queued for the
    one write lock behind processing: 1.5-1.7 ms of that lock per processed message
    (`bench/ingest.py --lock-trace`), a sixth of it. So while processing queues mail,
    the transaction that queues it also claims due rows (`claim`, in the caller's
    session; any due rows, not only its own) and, once committed, hands them over
    (`put`); the sender then sends what it is handed and claims for itself only
    when nothing was handed over for a while (`feeding`).

    At most `WAITING` batches wait; while they do, processing claims no more, and
    the sender, once it is through them, claims for itself as before (a relay that is
    down makes it slow). A batch it reaches too late to be sure of its lease is given
    back (`OutboxSender.send_due`), never sent on a lease that may be lost.
    """

    WAITING = 4

    def __init__(self, clock: Clock, limit: int, wake: Callable[[], None]) -> None:
        self._clock = clock
        self._limit = limit
        self._wake = wake
        self._lock = threading.Lock()
        self._batches: deque[Batch] = deque()
        # When the last batch was handed over, in the process's own time (monotonic):
        # how long the sender waits is the scheduler's business, not the desk's clock.
        self._last: float | None = None
        self._closed = False

    def claim(self, session: Session) -> Batch | None:
        """In the processing transaction: due rows for the sender, unless enough batches
        wait for it already or it stopped (None then). Handed over by `put` after the
        commit."""
        with self._lock:
            if self._closed or len(self._batches) >= self.WAITING:
                return None
        batch = claim_due(session, self._clock.now(), self._limit)
        return batch if batch.rows else None

    def put(self, batch: Batch | None) -> None:
        """After the commit that claimed `batch`: the sender's to send."""
        if batch is None:
            return
        with self._lock:
            self._batches.append(batch)
            self._last = time.monotonic()
        self._wake()

    def close(self) -> None:
        """The sender stops: no more claims for it (`take` what was handed over)."""
        with self._lock:
            self._closed = True

    def take(self) -> Batch | None:
        """The oldest batch handed over and not taken yet."""
        with self._lock:
            return self._batches.popleft() if self._batches else None

    def feeding(self, within: float) -> float:
        """Seconds left until `within` seconds have passed since the last batch was
        handed over (0: none lately). Meanwhile the sender waits for the next batch
        rather than claim rows the processor is about to claim."""
        with self._lock:
            last = self._last
        return 0.0 if last is None else max(last + within - time.monotonic(), 0.0)


_CLAIMED_COLUMNS = (
    Outbox.id,
    Outbox.message_id,
    Outbox.sender,
    Outbox.recipients,
    Outbox.attempts,
    Outbox.created_at,
)


def claim_due(session: Session, now: datetime, limit: int) -> Batch:
    """Lease up to `limit` due rows under a fresh token, in `session`'s transaction."""
    rows = leases.select_due(session, Outbox, now, limit, *_CLAIMED_COLUMNS)
    claim = leases.take(session, Outbox, [r.id for r in rows], now)
    found = tuple(
        Claimed(
            r.id, r.message_id, r.sender, tuple(r.recipients), r.attempts + 1, as_utc(r.created_at)
        )
        for r in rows
    )
    return Batch(claim.token, found, now)


class OutboxSender:
    def __init__(
        self,
        db: Database,
        transport: Transport,
        clock: Clock,
        settings: OutboundSettings,
        renew_every: float | None = None,  # None: three renewals per lease
        signer: Signer | None = None,
    ) -> None:
        self.db = db
        self.transport = transport
        self.clock = clock
        self.settings = settings
        self.renew_every = renew_every
        self.signer = signer  # DKIM (outbound/dkim.py), applied to each attempt's bytes
        self.handoff: Handoff | None = None  # set by a worker whose processor hands over

    def send_due(self, limit: int = 100, *, claim: bool = True) -> int:
        """Send the batch the processor handed over, else every row that is due (up to
        `limit`; not without `claim`); returns how many were handled.

        Over a transport that never delivers a key twice (the Maildir), the rows sent
        are marked in one commit at the end, after one `flush`; over SMTP, each as
        soon as the relay took it, so that a crash resends at most one message.
        """
        handed = self.handoff.take() if self.handoff is not None else None
        if handed is not None and self.clock.now() - handed.at > leases.length() / 3:
            # As old as a renewal's interval: another sender may hold these rows by now.
            self.give_back(handed)
            handed = None
        if handed is not None:
            token, claimed = handed.token, list(handed.rows)
        elif claim:
            token, claimed = self.claim(limit)
        else:
            return 0
        with (
            leases.Keeper(self.db, Outbox, self.clock, token, self.renew_every) as keeper,
            self.db.reading_connection() as reader,  # one for the batch's bytes
        ):
            keeper.hold([row.id for row in claimed])
            delivered: list[int] = []  # sent, not yet marked: still held
            for row in claimed:
                if not self._still_ours(reader, keeper, row.id, token):
                    keeper.drop([row.id])
                    continue
                if self._send(reader, row, token):
                    delivered.append(row.id)
                else:
                    keeper.drop([row.id])
                if delivered and not self.transport.idempotent:
                    self._mark_sent(delivered, token)
                    keeper.drop(delivered)
                    delivered = []
            if delivered:
                self._mark_sent(delivered, token)
                keeper.drop(delivered)
        return len(claimed)

    def next_due(self) -> datetime | None:
        with self.db.reading() as session:
            moment = session.scalar(
                select(Outbox.next_attempt_at)
                .where(Outbox.state == OutboxState.PENDING)
                .order_by(Outbox.next_attempt_at)
                .limit(1)
            )
        return as_utc(moment) if moment else None

    def claim(self, limit: int) -> tuple[str, list[Claimed]]:
        """Lease up to `limit` due rows under a fresh token (their bytes are loaded one by one)."""
        with self.db.transaction() as session:
            batch = claim_due(session, self.clock.now(), limit)
        return batch.token, list(batch.rows)

    def give_back(self, batch: Batch) -> None:
        """Unclaim a batch not started (those of its rows still ours): due again now."""
        with self.db.transaction() as session:
            ids = [row.id for row in batch.rows]
            leases.give_back(session, Outbox, ids, batch.token, self.clock.now())

    def _still_ours(
        self, reader: Connection, keeper: leases.Keeper, outbox_id: int, token: str
    ) -> bool:
        """Whether the row is still claimed under `token`, with more lease left than a
        renewal's interval (renewed now, if not), before a conversation about it starts.

        A sender whose process stalled (SIGSTOP, a paused VM, a starved CPU) past its
        lease found, when it resumed, rows another sender had claimed and sent since,
        and sent them again: only the message on the wire during the stall may go out
        twice (SMTP's own window), never one not yet begun. When it is ours, the read
        stays open for the row's bytes (`_raw` ends it): a read of its own cost more
        than the check.
        """
        try:
            found = _HELD.first(reader, {"id": outbox_id, "token": token})
        except BaseException:
            rawbytes.end_reads(reader)
            raise
        if found is not None and as_utc(found[0]) - self.clock.now() > keeper.every:
            return True
        rawbytes.end_reads(reader)
        try:
            if found is not None and outbox_id in keeper.renew_now([outbox_id]):
                return True
        except Exception:  # the database: this row waits out its lease, the batch goes on
            log.exception("outbox %d: renewing its lease failed; left for later", outbox_id)
            return False
        log.warning("outbox %d: no longer ours (our lease ran out); left to its new owner",
                    outbox_id)  # fmt: skip
        return False

    def _raw(self, reader: Connection, outbox_id: int) -> bytes:
        try:
            raw = rawbytes.read(reader, outbox_id, rawbytes.OUTBOX)
        finally:
            # Nothing held while the transport works: a slow relay must not keep a
            # PostgreSQL transaction idle, nor SQLite's old pages from a checkpoint.
            rawbytes.end_reads(reader)
        # No bytes: the purge forgot a sent row's body, and someone queued it again
        # (`maildesk outbox retry` of a bounced row): sent empty, as ever.
        return raw if raw is not None else b""

    def _signature(self, raw: bytes) -> bytes:
        """The DKIM-Signature field to send in front of `raw`; b"" when not signing.

        Signed here, at each attempt, not when the mail was queued: the signature
        (several RSA-signed header blocks per new ticket) then costs the sender's
        time, not the processor's write transaction, which holds SQLite's one write
        lock. A retry carries a fresh signature (its own t=), never a stale one.
        """
        end = raw.find(b"\r\n\r\n") + 4
        if self.signer is None or end < 4:
            return b""  # unsigned, or no header block (a purged body goes out empty)
        view = memoryview(raw)
        # The body in slices of the stored bytes (a 25 MB attachment is not copied whole
        # to be hashed); the signature is the first piece the signer returns.
        body = [
            view[start : start + rawbytes.SLICE] for start in range(end, len(raw), rawbytes.SLICE)
        ]
        return bytes(self.signer((raw[:end], *body))[0])

    def _send(self, reader: Connection, row: Claimed, token: str) -> bool:
        """Hand `row` to the transport, its bytes read through `reader`; True if it took
        it (the row is not marked yet)."""
        # Not its Message-ID: one of a customer's mail is a secret of her ticket (whoever
        # answers it writes as her correspondent), and a log has more readers than that.
        # `outbox list --all --json` says which mail outbox N is.
        with log_context(outbox_id=row.id):
            return self._send_logged(reader, row, token)

    def _send_logged(self, reader: Connection, row: Claimed, token: str) -> bool:
        try:
            raw = self._raw(reader, row.id)
            key = f"{row.id}.{row.message_id}"
            self.transport.send(key, row.sender, row.recipients, raw, head=self._signature(raw))
        except TemporaryFailure as exc:
            self._temporary(row, token, str(exc))
        except PermanentFailure as exc:
            log.warning("outbox %d failed permanently: %s", row.id, exc)
            self._finish([row.id], token, OutboxState.FAILED, str(exc))
        except Exception as exc:  # a transport bug: retry like a temporary failure
            log.exception("outbox %d: unexpected error", row.id)
            self._temporary(row, token, f"{type(exc).__name__}: {exc}")
        else:
            log.info("outbox %d sent to %s", row.id, ", ".join(row.recipients))
            return True
        return False

    def _mark_sent(self, ids: list[int], token: str) -> None:
        try:
            self.transport.flush()
        except TemporaryFailure as exc:
            # Not durable: left claimed, so they are sent again (the same keys) after
            # the lease; the Maildir then finds them there already.
            log.warning("outbox: %d sent rows not marked: %s", len(ids), exc)
            return
        self._finish(ids, token, OutboxState.SENT, "")

    def _temporary(self, row: Claimed, token: str, reason: str) -> None:
        now = self.clock.now()
        if now - row.created_at > timedelta(hours=self.settings.give_up_hours):
            log.error("outbox %d gave up after %d attempts: %s", row.id, row.attempts, reason)
            self._finish([row.id], token, OutboxState.FAILED, f"gave up: {reason}")
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
            # Give up the claim: the back-off is a due time, not a lease.
            session.execute(
                update(Outbox)
                .where(leases.owned(Outbox, row.id, token))
                .values(
                    next_attempt_at=now + timedelta(seconds=delay), last_error=reason, claim=None
                )
            )

    def _finish(self, ids: list[int], token: str, state: OutboxState, reason: str) -> None:
        sent_at = self.clock.now() if state == OutboxState.SENT else None
        done = self._record(
            ids, {"ids": ids, "token": token, "new_state": state, "error": reason, "at": sent_at}
        )
        if getattr(done, "rowcount", len(ids)) < len(ids):
            # Our lease ran out mid-send (a relay slower than a lease with renewals failing):
            # the new owner sends it again under the same key and Message-ID.
            log.warning(
                "outbox %s: lost its lease while sending; left to its new owner",
                ", ".join(map(str, ids)),
            )

    def _record(self, ids: list[int], values: dict[str, object]) -> CursorResult[Any]:
        """Write what the relay said (`_FINISH`), trying again while the database is away
        (a restart, a failover), for one lease at most.

        Only this sender knows the relay took the mail: a row left claimed was sent
        again once its lease ran out, though the daemon never stopped. Past the lease,
        another sender may have claimed it, and the token makes a late write a no-op.
        """
        deadline = time.monotonic() + leases.length().total_seconds()
        first = True
        while True:
            try:
                with self.db.transaction() as session:
                    return session.connection().execute(_FINISH, values)
            except (OperationalError, InterfaceError) as exc:
                if time.monotonic() + RECORD_PAUSE > deadline:
                    raise
                if first:
                    log.warning(
                        "outbox %s: the database is away (%s); recording what the relay "
                        "said once it is back",
                        ", ".join(map(str, ids)),
                        type(exc.orig).__name__,
                    )
                first = False
            time.sleep(RECORD_PAUSE)


@dataclass(frozen=True)
class OutboxCounts:
    """The outbox at one moment: what status lines, /healthz and /metrics show."""

    by_state: dict[str, int]  # each state counted, zeros included (KeyError: not counted)
    deferred: int  # pending rows that failed at least once and wait to retry
    oldest_pending: datetime | None  # when the oldest unsent row was queued
    # When the oldest unsent row that has failed was queued: failing ever since.
    failing_since: datetime | None

    def __getitem__(self, state: OutboxState) -> int:
        return self.by_state[state]


# The rows that wait to be sent. Sent rows stay (their Message-IDs thread replies,
# retention.py), so counting all states reads the whole history; the pending ones are
# a search of the state index. /healthz and the status line count these alone.
WAITING = (OutboxState.PENDING,)


def counts(session: Session, states: Sequence[OutboxState] = tuple(OutboxState)) -> OutboxCounts:
    """The outbox's counts of `states` (default all: a read of every row ever queued;
    `WAITING`: of the rows still to send), read in `session` (callers that read more in
    one transaction)."""
    # One statement over the pending rows alone: a lone min(created_at) would walk the
    # created_at index from the oldest row ever queued up to the first one pending.
    failing = Outbox.last_error != ""
    pending, deferred, oldest, failing_since = session.execute(
        select(
            func.count(),
            func.count(case((failing, 1))),
            func.min(Outbox.created_at),
            func.min(case((failing, Outbox.created_at))),
        ).where(rare(Outbox.state == OutboxState.PENDING))
    ).one()
    by_state = dict.fromkeys(map(str, states), 0)
    if OutboxState.PENDING in states:
        by_state[OutboxState.PENDING] = int(pending)
    if rest := [state for state in states if state != OutboxState.PENDING]:
        found = session.execute(
            select(Outbox.state, func.count())
            .where(rare(Outbox.state.in_(rest)))
            .group_by(Outbox.state)
        )
        by_state.update({str(state): int(n) for state, n in found})
    return OutboxCounts(
        by_state,
        int(deferred),
        as_utc(oldest) if oldest else None,
        as_utc(failing_since) if failing_since else None,
    )


class Sending(Exception):
    """`retry` of a row a sender holds right now: it may be on the wire."""


def retry(db: Database, clock: Clock, outbox_id: int) -> bool:
    """Queue a failed (or deferred) row to go out now. False when there is no such row;
    `Sending` when a sender holds it: cleared, its claim let the relay's 250 find the
    row no longer the sender's, left due, and sent again."""
    with db.transaction() as session:
        row = session.get(Outbox, outbox_id)
        if row is None or row.state == OutboxState.SENT:
            return False
        now = clock.now()
        if row.state == OutboxState.PENDING and row.claim is not None:
            if row.next_attempt_at is not None and as_utc(row.next_attempt_at) > now:
                raise Sending(f"outbox {outbox_id} is being sent right now")
        row.state = OutboxState.PENDING
        row.next_attempt_at = now
        row.claim = None
        row.last_error = ""
        return True


def release_leases(db: Database, clock: Clock) -> int:
    """At serve's start on SQLite: rows claimed by a process that has ended (a crash)
    are due now; a live sender's (a `maildesk worker` beside serve) stay its own.

    Rows deferred after a failure carry no claim and keep their back-off. (On
    PostgreSQL another machine's instance may be sending them: their leases run
    out within `LEASE` instead.)
    """
    with db.transaction() as session:
        return leases.release_dead(session, Outbox, clock.now())
