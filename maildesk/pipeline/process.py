"""The processor: claims stored inbound rows and runs each through the stages.

    guard → parse → duplicate? → loops/bounce → thread → record → notify

A batch of rows is claimed (attempts counted, leased) in a short transaction
of the spool (`inbound/store.py`); a row that already used `MAX_ATTEMPTS`
claims is quarantined there, so a message that crashes, is killed in or hangs
the processor is tried at most that often and never blocks the rows behind it.
Each claimed message is then loaded alone and prepared outside any write
transaction (`prepare.py`: guard, parse, reply text, under a per-message
deadline). A few prepared messages at a time go through the database stages
in one short write transaction, each in a savepoint whose state change (done,
duplicate, quarantined) commits together with the ticket rows and outbox rows
it caused: a crash at any point leaves either all of it or none of it, so a
restart redoes exactly the unfinished rows. The write names the claim's token,
so a processor that lost its lease commits nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import traceback
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from maildesk import folding, leases, logs
from maildesk.clock import Clock
from maildesk.config import Settings
from maildesk.db import Database
from maildesk.inbound.guard import HostileInput, Limits
from maildesk.inbound.store import MAX_ATTEMPTS, Claimed, InboundStore, Stored
from maildesk.language import Detector
from maildesk.logs import log_context
from maildesk.mailauth import Authentication, MailAuth
from maildesk.message import ParsedMessage, UnparseableMessage
from maildesk.models import Inbound, Ticket
from maildesk.outbound.caps import caps_reached, lane_cap
from maildesk.outbound.notify import InReplyTo
from maildesk.outbound.outbox import Handoff
from maildesk.pipeline.agent_mail import AgentFlow, AgentMail
from maildesk.pipeline.authenticity import identify
from maildesk.pipeline.bounces import record_bounce
from maildesk.pipeline.console import Console
from maildesk.pipeline.loops import Verdict, classify
from maildesk.pipeline.notices import Notices
from maildesk.pipeline.own_addresses import OwnAddresses
from maildesk.pipeline.prepare import Budget, DeadlineExceeded, Prepared, hold_for, prepare
from maildesk.pipeline.spam import CHECKED_SOURCES, NOT_SCORED, SpamCheck, SpamVerdict
from maildesk.pipeline.threader import Match, Threader
from maildesk.pipeline.trust import UNVERIFIED_FLAG, Standing, proves_writer, standing
from maildesk.states import InboundState, TicketStatus
from maildesk.tickets.agents import Agents
from maildesk.tickets.lifecycle import Lifecycle, only_agrees
from maildesk.tickets.service import NewMessage, Tickets
from maildesk.watchdog import Watchdog

# What it did is logged once its transaction committed (logs.transactional).
log = logs.transactional("maildesk.pipeline")

LEASE = leases.LEASE
# Prepared messages written per transaction: one fsync for several, and a
# short hold on the write lock. Raw bytes bound the group too, so a large
# message is written alone and never sits in memory beside many others.
GROUP = 16
# A claim of quiet imports (no --notify) is written in one transaction: their mail
# queues nothing, so nobody waits on that commit, and each commit (its fsync, the
# search index's flush) cost an import a tenth of its time in groups of 16.
QUIET_GROUP = 100
GROUP_BYTES = 4 * 1024 * 1024
# Raw bytes of the messages prepared ahead at once (`[workers] prepare_ahead` of them
# at most): one large message is prepared alone, never beside others.
AHEAD_BYTES = 4 * 1024 * 1024

# Kinds of stored mail whose text is not the mail's whole text (an agent's mail keeps
# it without its commands): told duplicates by Message-ID and sender alone, as an
# agent's is proven before it is stored as such.
_TEXT_NOT_STORED_WHOLE = frozenset({"agent", "note"})

__all__ = ["MAX_ATTEMPTS", "LEASE", "Processor", "BatchResult", "Quarantine"]


class Quarantine(Exception):
    """This message cannot be processed as it is; hold it for a human."""


class _FailedInGroup(Exception):
    """A message failed in a transaction written without savepoints (`Processor._write`)."""

    def __init__(self, inbound_id: int, trace: str, lost_to_another_transaction: bool) -> None:
        super().__init__(f"inbound {inbound_id} failed")
        self.inbound_id = inbound_id
        self.trace = trace
        self.lost_to_another_transaction = lost_to_another_transaction


@dataclass(frozen=True)
class BatchResult:
    processed: int
    queued_outbound: int


@dataclass(frozen=True)
class _Failure:
    reason: str
    trace: str
    permanent: bool  # hostile or unparseable input, or past its deadline preparing: no retry


@dataclass(frozen=True)
class _Work:
    """One claimed message after its preparation: ready, or failed with a reason."""

    id: int
    size: int
    budget: Budget
    prepared: Prepared | None
    failure: _Failure | None
    spam: SpamVerdict = NOT_SCORED
    auth: Authentication = Authentication()


@dataclass(frozen=True)
class _VouchedImports:
    """Imported rows whose DKIM/DMARC check (DNS lookups) would change nothing.

    An import's proof is the operator who imported it (pipeline/trust.py). The
    check still matters for mail from an agent's address (is it the agent?) and
    for an import with --notify (a DMARC failure is not acknowledged), so those
    rows keep it. An agent added after the batch started is checked as a
    customer: their imported mail is then recorded unproven, never trusted more.
    """

    rows: frozenset[int]  # source "import", notify off
    agents: frozenset[str]  # active agents' addresses, lower case

    def covers(self, row_id: int, from_addr: str) -> bool:
        return row_id in self.rows and from_addr.lower() not in self.agents


class Processor:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        clock: Clock,
        notices: Notices,
        threader: Threader,
        store: InboundStore,
    ) -> None:
        self.db = db
        self.store = store
        self.settings = settings
        self.clock = clock
        self.notices = notices
        self.notifier = notices.notifier
        self.threader = threader
        self.own = OwnAddresses(settings.support)
        self.mailauth = MailAuth(settings.trust, settings.agents.trusted_authserv_ids)
        self.spam = SpamCheck(settings.spam, clock)
        self.agent_flow = AgentFlow(self.notifier, notices, settings.support.language)
        self.console = Console(self.agent_flow, threader.tag, settings.support.language)
        # Every worker reads the one small language model kept there.
        state = settings.state_folder
        self.detector = Detector(state if state.is_dir() else None)
        # One message's processing budget, and how long its stages may run before it
        # counts as stuck (its lease is no longer renewed; a worker process ends itself).
        self.deadline = timedelta(seconds=settings.workers.message_seconds)
        self.hold = hold_for(self.deadline, settings)
        self.watchdog = Watchdog(self.hold.total_seconds())  # started by worker processes
        self._preparers: ThreadPoolExecutor | None = None  # made at the first batch
        # Groups are written without a savepoint per message unless one failed lately
        # (`_write`); messages that failed in the database stages, counted.
        self._careful = False
        self._stage_failures = 0
        # This process's sender, when a worker runs both: the transaction that queues
        # mail also claims due mail for it (outbound/outbox.py, `Handoff`).
        self.handoff: Handoff | None = None

        limits = settings.limits
        self.limits = Limits(
            max_message_size=settings.smtp.max_message_size,
            max_header_bytes=limits.max_header_bytes,
            max_header_line=limits.max_header_line,
            max_mime_depth=limits.max_mime_depth,
            max_mime_parts=limits.max_mime_parts,
        )

    def warm_up(self) -> None:
        """Build what every processing process needs (the folding tables, 0.3 s of CPU)
        before the first message, which would otherwise wait for it. The language
        model (3.5 MB, and numpy: 16 MB of RSS in all) stays lazy: a worker whose
        mail all says its language, or is too short to judge, never needs it."""
        folding.warm()

    # -- claiming -----------------------------------------------------------

    def release_leases(self) -> None:
        """At serve's start on SQLite: rows whose claimant has ended (a crash) are due now."""
        self.store.release()

    # -- processing ---------------------------------------------------------

    def process_pending(self, batch: int = 100) -> BatchResult:
        """Process one batch of due rows; returns counts (0 processed: nothing was due)."""
        claimed = self.store.claim(batch)
        token = claimed.claim.token
        queued = done = 0
        vouched = self._vouched_imports([row.id for row in claimed.rows])
        quiet = all(row.id in vouched.rows for row in claimed.rows)
        most = QUIET_GROUP if quiet else GROUP
        with leases.Keeper(self.db, Inbound, self.clock, token) as keeper:
            keeper.hold([row.id for row in claimed.rows])
            group: list[_Work] = []
            for work in self._prepared(claimed.rows, keeper, vouched):
                group.append(work)
                if len(group) >= most or sum(w.size for w in group) >= GROUP_BYTES:
                    queued += self._write(group, token, keeper)
                    done, group = done + len(group), []
            if group:
                queued += self._write(group, token, keeper)
                done += len(group)
        return BatchResult(done + claimed.exhausted, queued)

    def _vouched_imports(self, ids: list[int]) -> _VouchedImports:
        """Which of these rows are imports whose sender proof could change nothing."""
        if not ids:
            return _VouchedImports(frozenset(), frozenset())
        with self.db.reading() as session:  # reads only: no write lock on SQLite
            quiet = session.scalars(
                select(Inbound.id).where(
                    Inbound.id.in_(ids), Inbound.source == "import", Inbound.notify.is_(False)
                )
            ).all()
            agents = [agent.email.lower() for agent in Agents(session).active()] if quiet else []
        return _VouchedImports(frozenset(quiet), frozenset(agents))

    def _prepared(
        self, items: Sequence[Claimed], keeper: leases.Keeper, vouched: _VouchedImports
    ) -> Iterator[_Work]:
        """Each of `items` prepared, in their order.

        When a step waits on the network (spamd, DKIM/DMARC lookups), up to `[workers]
        prepare_ahead` of them are prepared at once in threads, within
        `AHEAD_BYTES`: a spamd round trip (tens of milliseconds of spamd's work) and
        DKIM/DMARC lookups no longer run one message after the other, and parsing the
        next messages goes on while this thread waits for the write transaction's
        commit. The write stays in this thread and in this order.
        """
        waits = any(self._may_wait(item, vouched) for item in items)
        ahead = self.settings.workers.prepare_ahead if waits else 1
        if ahead <= 1 or len(items) <= 1:
            for item in items:
                yield self._prepare(item, keeper, vouched)
            return
        if self._preparers is None:
            self._preparers = ThreadPoolExecutor(ahead, thread_name_prefix="prepare")
        waiting = deque(items)
        running: deque[tuple[Claimed, Future[_Work]]] = deque()
        held = 0  # raw bytes of the messages in `running`
        try:
            while waiting or running:
                while (
                    waiting
                    and len(running) < ahead
                    and (not running or held + waiting[0].size <= AHEAD_BYTES)
                ):
                    item = waiting.popleft()
                    running.append(
                        (item, self._preparers.submit(self._prepare, item, keeper, vouched))
                    )
                    held += item.size
                item, future = running.popleft()
                held -= item.size
                yield future.result()
        finally:
            for _item, future in running:  # the caller stopped early: nothing more starts
                future.cancel()

    def _may_wait(self, item: Claimed, vouched: _VouchedImports) -> bool:
        """Whether preparing `item` may wait on the network (spamd, DKIM/DMARC lookups).
        Only such a step gains from threads: without one they only contend for the GIL
        (5-8 % more CPU per message, measured)."""
        if self.spam.spamd is not None and item.source in CHECKED_SOURCES:
            return True
        return self.settings.trust.verify_dkim and item.id not in vouched.rows

    def _prepare(self, item: Claimed, keeper: leases.Keeper, vouched: _VouchedImports) -> _Work:
        """Load one message and run the stages that need no database, outside the lock."""
        with self.watchdog.stage(f"preparing inbound {item.id}"):
            return self._prepare_watched(item, keeper, vouched)

    def _prepare_watched(
        self, item: Claimed, keeper: leases.Keeper, vouched: _VouchedImports
    ) -> _Work:
        budget = Budget(self.clock, self.deadline)
        keeper.hold([item.id], until=self.clock.now() + self.hold)
        budget.start()
        try:
            stored = self.store.load(item)
            ready = prepare(stored.raw, stored.mail_from, self.limits, budget, self.detector)
            # spamd's round trip, here: never while holding the write lock. Its wait
            # is bounded by [spam] spamd_timeout, not by this message's CPU budget.
            budget.stop()
            spam = self.spam.score(item.id, stored.source, stored.raw)
            # DKIM and DMARC lookups likewise wait for DNS, bounded by [trust] dns_timeout.
            if vouched.covers(item.id, ready.message.from_addr):
                auth = Authentication()
            else:
                auth = self._authenticate(stored, ready.message)
            budget.start()
            return _Work(item.id, item.size, budget, ready, None, spam, auth)
        except (HostileInput, UnparseableMessage, DeadlineExceeded) as exc:
            reason = getattr(exc, "reason", None) or str(exc)
            return _Work(item.id, item.size, budget, None, _Failure(reason, "", True))
        except Exception as exc:
            failure = _Failure(_failed(exc), traceback.format_exc(), False)
            return _Work(item.id, item.size, budget, None, failure)
        finally:
            budget.stop()

    def _write(self, group: list[_Work], token: str, keeper: leases.Keeper) -> int:
        """The database stages of prepared messages, in one short write transaction.

        When a group commit (sessions waiting for their 250) queues for SQLite's write
        lock, the transaction ends after the current message and the rest go on in
        the next one: a 250 waits for one message's database stages, not sixteen.

        Each message is written without a savepoint of its own, as nearly every one
        succeeds: a savepoint per message made SQLite's FTS5 flush the search index at
        each message (then merge the pieces: 0.3 ms a message) and cost SQLAlchemy's
        session bookkeeping. When one fails, the transaction is rolled back and the
        same messages are written again, each in its savepoint (`_process_row`), so
        that the failure is that message's alone, as before. What a try logged is
        written only once it committed (`logs.after_commit`, in `Database.transaction`):
        a group written again tells each message's fate once.
        """
        queued = 0
        left = list(group)
        failed: _FailedInGroup | None = None
        while left:
            careful = failed is not None or self._careful
            failures = self._stage_failures
            try:
                with self.db.transaction() as session:
                    written, queued_now = self._write_some(session, left, token, careful, failed)
                    handoff = self.handoff
                    handed = handoff.claim(session) if handoff and queued_now else None
            except _FailedInGroup as failure:
                log.info(
                    "inbound %d failed among %d messages in one transaction; "
                    "writing them again, each in a savepoint",
                    failure.inbound_id,
                    len(left),
                )
                failed = failure
                continue
            # After a failure the next messages go in savepoints until some pass without
            # one: a flood of failing mail (a backscatter storm) is not written twice.
            self._careful = careful and (failed is not None or self._stage_failures > failures)
            if handoff is not None:
                handoff.put(handed)
            queued += queued_now
            left, failed = left[written:], None
        keeper.drop([work.id for work in group])
        return queued

    def _write_some(
        self,
        session: Session,
        group: list[_Work],
        token: str,
        careful: bool,
        failed: _FailedInGroup | None,
    ) -> tuple[int, int]:
        """Write the first messages of `group`: (how many, outbox rows queued); when
        `careful`, each in a savepoint. `failed`: the failure that rolled back the
        last try of these messages."""
        # Senders first, before any ticket or person row: see lock_new_people.
        Tickets(session).lock_new_people(self._people_in(group))
        owned = self.store.lock(session, [work.id for work in group], token)
        written = queued = 0
        for work in group:
            written += 1
            row = owned.get(work.id)
            if row is None:  # our lease ran out and someone else owns it now
                log.warning("inbound %d: lost its lease; left to its new owner", work.id)
                continue
            with log_context(inbound_id=work.id):
                if failed and failed.inbound_id == work.id and failed.lost_to_another_transaction:
                    # Not tried again now: the other transaction may still hold the row.
                    self._lost_deadlock(row, failed.trace)
                else:
                    queued += self._process_row(session, row, work, savepoint=careful)
            if self.db.urgent_waiting():
                break
        return written, queued

    def _people_in(self, group: list[_Work]) -> Iterator[str]:
        """Whom the group's messages may make people: each sender, and those they copied
        as far as a ticket takes participants (`_add_participants`). A longer Cc list
        is not locked for: a hostile one would fill PostgreSQL's lock table."""
        limit = self.settings.limits.participants_per_ticket
        for work in group:
            if work.prepared is not None:
                yield work.prepared.message.from_addr
                yield from work.prepared.message.cc[:limit]

    def _process_row(
        self, session: Session, row: Inbound, work: _Work, *, savepoint: bool = True
    ) -> int:
        """The database stages of one message. In its savepoint, a failure is recorded
        on the row and the transaction goes on; without one (`_write`'s first try),
        it is raised as `_FailedInGroup`, to roll the transaction back."""
        now = self.clock.now()
        if work.prepared is None:
            assert work.failure is not None
            self._fail(row, work.failure)
            return 0
        work.budget.start()
        try:
            # What the stages logged is written once the transaction committed, and not
            # at all when this message is rolled back (logs.transactional).
            with logs.undone_on_error(), session.begin_nested() if savepoint else nullcontext():
                state, queued = self._stages(session, row, work)
                work.budget.check("the database stages")
                self.store.finish(row, state, now)
                return queued
        except Exception as exc:
            trace = traceback.format_exc()
            if not savepoint:
                raise _FailedInGroup(row.id, trace, _lost_to_another_transaction(exc)) from exc
            self._stage_failures += 1
            if isinstance(exc, DeadlineExceeded):
                # The time may have been the database's (a failover, a lock), not this
                # message's: tried again, held for a human after MAX_ATTEMPTS.
                self._fail(row, _Failure(exc.reason, exc.reason, False))
            elif isinstance(exc, (HostileInput, UnparseableMessage, Quarantine)):
                reason = getattr(exc, "reason", None) or str(exc)
                self.store.quarantine(row, reason, "", now)
            elif _lost_to_another_transaction(exc):
                self._lost_deadlock(row, trace)
            else:
                self._fail(row, _Failure(_failed(exc), trace, False))
        finally:
            work.budget.stop()
        return 0

    def _own_id(
        self, tickets: Tickets, row: Inbound, message: ParsedMessage
    ) -> ParsedMessage | None:
        """`message`, or None when it is stored already: the same mail by a second route,
        an MTA's retry, our own mail coming back.

        A Message-ID is the sender's word, and so is a From. Mail that came first with
        this id does not make this one a duplicate unless it is the same mail: from the
        same sender, with the same text. Anyone Cc'd on a customer's mail could send
        one ahead with its id (and flood to delay the real one); with her From forged
        too, her real mail was dropped unseen and his text stood in the ticket in her
        place. Such mail is stored under an id of its own, derived from the one it
        gave and from its text. The stored text is compared, never the stored mail
        parsed again: a sender could then make each small mail cost a parse of an
        earlier 25 MB one inside the write transaction.
        """
        stored = tickets.stored_as(message.message_id)
        if stored is None:
            return message
        if stored.direction == "out":
            return None
        if stored.sender == message.from_addr and (
            stored.kind in _TEXT_NOT_STORED_WHOLE
            or tickets.stored_text(message.message_id) == message.text
        ):
            return None
        key = f"{message.from_addr}\0{message.message_id}\0{message.text}"
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
        own = dataclasses.replace(
            message,
            message_id=f"{digest[:40]}@taken-id.maildesk.invalid",
            claimed_id=message.message_id,
        )
        if tickets.message_exists(own.message_id):
            return None  # this mail with the taken id, again
        log.warning("inbound %d: <%s> was first used by %s, with another text; stored as <%s>",
                    row.id, message.message_id, stored.sender, own.message_id)  # fmt: skip
        return own

    @staticmethod
    def _contest(tickets: Tickets, message: ParsedMessage) -> None:
        """`message` gave an id another sender's mail had first (`_own_id`), and will be
        kept in a ticket.

        Which of the two chose the id, nothing tells: from now on it leads only each
        sender's own mail, to that sender's message (`Tickets.thread_key`), or the first
        could take the second's follow-ups (and a colleague's answers). One sender's two
        texts (a list's copy with its footer) lead on as before. Held spam and bounces
        contest nothing: they join no ticket, and a spam run reusing a customer's id
        would otherwise take her colleagues' answers from her thread unseen.
        """
        if message.claimed_id is None:
            return
        stored = tickets.stored_as(message.claimed_id)
        if stored is not None and stored.sender != message.from_addr:
            tickets.contest(message.claimed_id)

    def _lost_deadlock(self, row: Inbound, trace: str) -> None:
        log.info("inbound %d: lost a deadlock to another transaction; due again", row.id)
        self.store.retry_soon(row, trace, self.clock.now())

    def _fail(self, row: Inbound, failure: _Failure) -> None:
        now = self.clock.now()
        if failure.permanent or row.attempts >= MAX_ATTEMPTS:
            self.store.quarantine(row, failure.reason, failure.trace, now)
        else:
            log.warning(
                "inbound %d failed (attempt %d), will retry: %s",
                row.id,
                row.attempts,
                failure.reason,
            )
            self.store.retry_later(row, failure.trace, now)

    def _stages(self, session: Session, row: Inbound, work: _Work) -> tuple[InboundState, int]:
        assert work.prepared is not None
        prepared, spam, auth = work.prepared, work.spam, work.auth
        tickets = Tickets(session)
        message = self._own_id(tickets, row, prepared.message)
        if message is None:
            log.info("inbound %d is a duplicate of <%s>", row.id, prepared.message.message_id)
            return InboundState.DUPLICATE, 0
        verdict = classify(message, row.mail_from)
        if verdict.is_bounce:
            if not record_bounce(session, tickets, row.id, message, self.clock.now()):
                raise Quarantine("bounce for no message maildesk sent")
            return InboundState.DONE, 0
        if self.spam.hold_if_spam(session, row, message, spam, self.clock.now()):
            return InboundState.HELD, 0
        self._contest(tickets, message)
        sender = identify(session, message, row.rcpt_to, self.threader.tokens, auth)
        archive = row.source == "import"
        match = self.threader.match(
            tickets, message, row.rcpt_to, proven_agent=sender.agent, archive=archive
        )
        if sender.agent is not None and not sender.proves_for(match):
            # Proof for another ticket (a reply token of ticket 6 beside a ticket-1
            # In-Reply-To) proves nothing here.
            sender = sender.unproven()
            match = self.threader.match(tickets, message, row.rcpt_to, archive=archive)
        # A quiet import (no --notify) is the archive's history: an agent's mail in it
        # asks nothing of us now. No command runs, nothing is answered or relayed.
        quiet = not row.notify
        # `#list`, `#show`, … and commands from an unproven mail: answered to the
        # agent's registered address only (pipeline/console.py).
        request = None if quiet else self.console.route(session, row, message, sender, match,
                                                        prepared.text)  # fmt: skip
        if request is not None:
            return InboundState.DONE, self.console.handle(session, request, self.clock.now())
        if sender.agent is not None:
            mail = AgentMail(row, message, sender.agent, match.ticket, match.rule, prepared.text)
            log.info("inbound %d from agent %s (%s)", row.id, sender.agent.email, sender.proof)
            if not quiet:
                return InboundState.DONE, self.agent_flow.handle(session, mail, self.clock.now())
            if match.ticket is not None:
                return InboundState.DONE, self.agent_flow.file(session, mail, self.clock.now())
            # Console requests, confirmations, a phone intake: orders of the past, for no
            # ticket. Filed nowhere (the archive keeps them), rather than opened as tickets.
            log.info("inbound %d: an imported agent's mail for no ticket; not filed", row.id)
            return InboundState.DONE, 0
        if sender.forged:
            log.warning("inbound %d claims agent %s without proof", row.id, message.from_addr)
        return InboundState.DONE, self._record(
            session,
            tickets,
            row,
            message,
            verdict,
            match,
            auth,
            sender.forged,
            prepared,
        )

    def _authenticate(self, stored: Stored, message: ParsedMessage) -> Authentication:
        via_mta = self.mailauth.via_our_mta(stored.source, stored.peer)
        return self.mailauth.check(
            stored.raw, message.from_addr, message.authentication_results, via_mta
        )

    def _record(
        self,
        session: Session,
        tickets: Tickets,
        row: Inbound,
        message: ParsedMessage,
        verdict: Verdict,
        match: Match,
        auth: Authentication,
        forged: bool,
        prepared: Prepared,
    ) -> int:
        """A customer's (or anyone else's) message: record it, move the ticket, notify."""
        text, language = prepared.text, prepared.language
        now = self.clock.now()
        lifecycle = Lifecycle(session, now)
        ticket, rule = match.ticket, match.rule
        takes_part = ticket is not None and tickets.is_participant(ticket.id, message.from_addr)
        original = not forged and self._answered_by_opener(tickets, match, message, row)
        trust = standing(match, auth, row.source, takes_part or original)
        # Her mail came after a reply to it that opened the ticket: she asked, she is
        # the requester. Proven only: anyone the reply was written to knows its id.
        handed_over = original and auth.proven and match.named_under(auth)
        if ticket is not None and handed_over:
            self._hand_over(tickets, lifecycle, ticket, message, now)
        # Asked before this mail's Cc join: they were not sent the ticket's secret.
        matched, sender = ticket, message.from_addr
        requester = matched.requester.email if matched is not None else sender
        own_word = proves_writer(
            trust, sender, requester,
            lambda: matched is not None and tickets.others_take_part(matched),
        )  # fmt: skip
        hers = own_word and sender.lower() == requester.lower()
        # Only a person with something to say reopens a ticket: an out-of-office
        # answering our "closed" notice is filed with the closed ticket, and so are
        # unverified mail and a "Thanks!" (which opened a new ticket after reopen_days).
        opened = ticket is None
        if (
            ticket is not None
            and ticket.status == TicketStatus.CLOSED
            and verdict.may_reply
            and trust.verified
            and not only_agrees(text)
        ):
            if tickets.closed_too_long(ticket, now, self.settings.lifecycle.reopen_days):
                ticket = self._open(
                    tickets, message, language, now, auth, trust.verified, previous=ticket
                )
                rule, opened = "new", True  # acknowledged, and told to agents, as new
            else:
                lifecycle.change(ticket, "status", TicketStatus.ACCEPTED, message.from_addr, "mail")
        if ticket is None:
            ticket = self._open(tickets, message, language, now, auth, trust.verified)
        kind = self._kind(ticket, message, verdict)
        tickets.add_message(
            ticket,
            NewMessage(
                message_id=message.message_id,
                claimed_id=message.claimed_id,
                direction="in",
                kind=kind,
                from_addr=message.from_addr,
                from_name=message.from_name,
                subject=message.subject,
                body_text=message.text,
                body_html=message.html,
                created_at=now,
                to_addrs=message.to,
                cc_addrs=message.cc,
                references=message.thread_ids,
                thread_rule=rule,
                inbound_id=row.id,
                attachments=tuple(
                    (a.filename, a.content_type, a.data) for a in message.attachments
                ),
                flag=self._flag(opened, trust, forged),
                proof=trust.proof,
                search_document=prepared.search_document,
            ),
        )
        if hers and not ticket.sender_proven:
            ticket.sender_proven = True  # her own word: the ticket is hers (visibility.py)
        if trust.verified:
            self._add_participants(
                tickets, ticket, message, now,
                copies=trust.copies, own_word=own_word, source=row.source,
            )  # fmt: skip
        # Where it went (written once committed): the answered mail made the ticket hers.
        told = f"{rule}, the original: its sender is the requester now" if handed_over else rule
        log.info("inbound %d -> ticket %d (%s)", row.id, ticket.id, told,
                 extra={"ticket": ticket.id, "message_id": message.message_id})  # fmt: skip
        queued = 0
        if opened or handed_over:
            if self._may_acknowledge(session, row, message, verdict, auth, ticket) and not forged:
                answering = InReplyTo(message.message_id, message.references)
                queued += self.notices.acknowledge(session, ticket, answering, trust.verified)
            if row.notify and handed_over:
                queued += self.notices.to_agents(session, ticket, "original", message, text=text)
            elif row.notify:
                event = "forged" if forged else "new_ticket"
                queued += self.notices.new_ticket(session, ticket, message, event)
            return queued
        if kind == "auto" or not row.notify:
            return queued
        if forged:
            outcome = "forged"
        else:
            # Only paid work is the requester's alone to answer (`hers`, above).
            by_requester = ticket.paid_state == "pending" and hers
            outcome = lifecycle.customer_replied(
                ticket,
                text,
                message.from_addr,
                message.thread_ids,
                trust.verified,
                by_requester=by_requester,
            )
            if not trust.verified:
                outcome = "unverified"  # the agents' notice says what it could not do
        if outcome == "confirmed":
            queued += self.notices.status_notice(session, ticket)
        return queued + self.notices.replied(session, ticket, outcome, message, text)

    def _answered_by_opener(
        self, tickets: Tickets, match: Match, message: ParsedMessage, row: Inbound
    ) -> bool:
        """Whether this mail is the one that the reply which opened its ticket answered,
        written To its sender (mail is not delivered in order: someone she copied can
        answer everyone before her own mail reaches us)."""
        ticket = match.ticket
        if ticket is None or not match.reply_came_first or row.source == "import":
            return False
        sender = message.from_addr
        if ticket.status == TicketStatus.CLOSED or ticket.requester.email == sender:
            return False
        if self.own.include(tickets.session, sender):
            return False
        return tickets.opened_answering(ticket, message.message_id, sender)

    def _hand_over(
        self,
        tickets: Tickets,
        lifecycle: Lifecycle,
        ticket: Ticket,
        message: ParsedMessage,
        now: datetime,
    ) -> None:
        before = ticket.requester.email
        person = tickets.person(message.from_addr, message.from_name, now, proven=True)
        tickets.hand_over(ticket, person)
        ticket.sender_proven = True  # her own mail proved her: the ticket is hers
        lifecycle.record(ticket, "requester", before, person.email, person.email, "mail")

    @staticmethod
    def _flag(opened: bool, trust: Standing, forged: bool) -> str:
        if forged:
            return "forged-agent"
        # A new ticket is its sender's own; in someone's ticket, unproven text is marked.
        return UNVERIFIED_FLAG if not opened and not trust.verified else ""

    def _open(
        self,
        tickets: Tickets,
        message: ParsedMessage,
        language: str | None,
        now: datetime,
        auth: Authentication,
        verified: bool,
        previous: Ticket | None = None,
    ) -> Ticket:
        """A new ticket in the language its first mail said or was written in (prepare.py).

        `verified`: the mail proves its sender (trust.py). Anyone can write a From, so
        unproven mail names only a requester we did not know, and proven mail replaces
        the name such mail gave (see `Tickets.person`)."""
        requester = tickets.person(message.from_addr, message.from_name, now, proven=verified)
        chosen = language or self.settings.support.language
        return tickets.open(
            requester, message.subject, chosen, now, previous, sender_proven=auth.proven
        )

    def _kind(self, ticket: Ticket, message: ParsedMessage, verdict: Verdict) -> str:
        if not verdict.may_reply:
            return "auto"
        return "customer" if ticket.requester.email == message.from_addr else "participant"

    def _add_participants(
        self,
        tickets: Tickets,
        ticket: Ticket,
        message: ParsedMessage,
        now: datetime,
        *,
        copies: bool,
        own_word: bool,
        source: str,
    ) -> None:
        """The sender, and with `copies` the people they copied, may write into this
        ticket from now on. `own_word`: the mail proves its sender wrote it
        (`trust.proves_writer`), so its display name may rename them, or prove the name
        they have theirs. A portal reply's name is the one we hold: not their word."""
        said = None if source == "web" else message.from_name
        people: list[tuple[str, str | None]] = [(message.from_addr, said)]
        if copies:
            people += [(addr, None) for addr in message.cc]
        elif message.cc:
            log.info(
                "the Cc of ticket %d's new message is not covered by the signature that"
                " proves its sender: nobody it copies joins the ticket",
                ticket.id,
            )
        session = tickets.session
        wanted = [(addr, name) for addr, name in people if not self.own.include(session, addr)]
        limit = self.settings.limits.participants_per_ticket
        left_out = tickets.add_participants(ticket, wanted, now, limit=limit, proven=own_word)
        if left_out:
            log.warning(
                "ticket %d has %d participants: %d more Cc'd addresses were not added",
                ticket.id,
                limit,
                len(left_out),
            )

    def _may_acknowledge(
        self,
        session: Session,
        row: Inbound,
        message: ParsedMessage,
        verdict: Verdict,
        auth: Authentication,
        ticket: Ticket,
    ) -> bool:
        """`ticket`: the one the acknowledgement is about; its proof picks the cap it
        counts in (`caps.py`: a forger's mail in her name uses up none of hers)."""
        if not row.notify or not verdict.may_reply:
            return False
        if auth.dmarc_failed:
            # The From domain says this mail is not theirs: an answer would be backscatter.
            log.info("no acknowledgement to %s: the mail fails DMARC", message.from_addr)
            return False
        sender = message.from_addr
        if self.own.include(session, sender):
            return False
        limits = self.settings.limits
        cap, total = limits.auto_replies_per_hour, limits.auto_replies_per_hour_total
        proven = bool(ticket.sender_proven)
        # Unproven mail (anyone may forge it) and each proven domain get a share of the
        # total, so that no flood of either silences the rest (caps.py).
        percent = (
            limits.auto_replies_domain_percent if proven else limits.auto_replies_unproven_percent
        )
        share = lane_cap(total, percent)
        hour_ago = self.clock.now() - timedelta(hours=1)
        reached = caps_reached(session, sender, cap, total, hour_ago, proven=proven, share=share)
        proof = "proven" if proven else "unproven"
        if reached.sender:
            log.info("no acknowledgement to %s: %d automatic replies about %s mail this hour",
                     sender, cap, proof)  # fmt: skip
            return False
        if reached.total:
            log.warning(
                "no acknowledgement to %s: %d automatic replies to all this hour", sender, total
            )
            return False
        if reached.lane:
            lane = "its domain's" if proven else "unproven mail's"
            log.warning("no acknowledgement to %s: %s share of %d automatic replies this hour"
                        " is used up", sender, lane, share)  # fmt: skip
            return False
        return True


# PostgreSQL's deadlock_detected and serialization_failure: two workers' transactions
# met, and one was chosen to give way. Nothing about the message itself.
_CONFLICTS = frozenset({"40P01", "40001"})


def _lost_to_another_transaction(exc: Exception) -> bool:
    return isinstance(exc, DBAPIError) and getattr(exc.orig, "sqlstate", None) in _CONFLICTS


def _failed(exc: Exception) -> str:
    return f"processing failed: {type(exc).__name__}: {exc}"
