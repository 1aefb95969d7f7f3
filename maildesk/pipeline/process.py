"""The processor: claims stored inbound rows and runs each through the stages.

    guard → parse → duplicate? → loops/bounce → thread → record → notify

Each row is handled in a savepoint of one batch transaction, and its state
change (done, duplicate, quarantined) commits together with the ticket rows
and outbox rows it caused: a crash at any point leaves either all of it or
none of it, so a restart redoes exactly the unfinished rows. A row is claimed
(its attempt counted and leased) in a separate short transaction first, so a
message that crashes the whole process is retried alone and quarantined
after `MAX_ATTEMPTS`, never blocking the rows behind it.
"""

from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from maildesk.clock import Clock
from maildesk.config import Settings
from maildesk.db import Database
from maildesk.inbound.guard import HostileInput, Limits, check
from maildesk.message import ParsedMessage, UnparseableMessage, parse
from maildesk.models import Inbound, Ticket
from maildesk.outbound.notify import InReplyTo
from maildesk.pipeline.agent_mail import AgentFlow, AgentMail
from maildesk.pipeline.authenticity import identify
from maildesk.pipeline.bounces import record_bounce
from maildesk.pipeline.loops import Verdict, classify
from maildesk.pipeline.notices import Notices
from maildesk.pipeline.threader import Match, Threader
from maildesk.replies import new_text
from maildesk.tickets.agents import Agents
from maildesk.tickets.lifecycle import Lifecycle
from maildesk.tickets.service import NewMessage, Tickets

log = logging.getLogger("maildesk.pipeline")

MAX_ATTEMPTS = 3
LEASE = timedelta(seconds=60)


class Quarantine(Exception):
    """This message cannot be processed as it is; hold it for a human."""


@dataclass(frozen=True)
class BatchResult:
    processed: int
    queued_outbound: int


class Processor:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        clock: Clock,
        notices: Notices,
        threader: Threader,
    ) -> None:
        self.db = db
        self.settings = settings
        self.clock = clock
        self.notices = notices
        self.notifier = notices.notifier
        self.threader = threader
        self.agent_flow = AgentFlow(self.notifier, notices, settings.support.language)
        limits = settings.limits
        self.limits = Limits(
            max_message_size=settings.smtp.max_message_size,
            max_header_bytes=limits.max_header_bytes,
            max_header_line=limits.max_header_line,
            max_mime_depth=limits.max_mime_depth,
            max_mime_parts=limits.max_mime_parts,
        )

    # -- claiming -----------------------------------------------------------

    def release_leases(self) -> None:
        """At start-up of the only instance (SQLite): rows a crash left claimed are due now."""
        with self.db.transaction() as session:
            session.execute(
                update(Inbound).where(Inbound.state == "pending").values(next_attempt_at=None)
            )

    def _claim(self, limit: int) -> list[int]:
        now = self.clock.now()
        with self.db.transaction() as session:
            rows = session.execute(
                select(Inbound.id, Inbound.attempts)
                .where(
                    Inbound.state == "pending",
                    or_(Inbound.next_attempt_at.is_(None), Inbound.next_attempt_at <= now),
                )
                .order_by(Inbound.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).all()
            # A row tried before may be the one that crashed us: try it alone.
            if rows and rows[0].attempts > 0:
                rows = rows[:1]
            else:
                rows = [r for r in rows if r.attempts == 0]
            ids = [r.id for r in rows]
            if ids:
                session.execute(
                    update(Inbound)
                    .where(Inbound.id.in_(ids))
                    .values(attempts=Inbound.attempts + 1, next_attempt_at=now + LEASE)
                )
            return ids

    # -- processing ---------------------------------------------------------

    def process_pending(self, batch: int = 100) -> BatchResult:
        """Process one batch of due rows; returns counts (0 processed: nothing was due)."""
        ids = self._claim(batch)
        if not ids:
            return BatchResult(0, 0)
        queued = done = 0
        with self.db.transaction() as session:
            rows = session.scalars(
                select(Inbound).where(Inbound.id.in_(ids)).order_by(Inbound.id)
            ).all()
            for row in rows:
                queued += self._process_row(session, row)
                done += 1
                # A message waiting for its 250 must not wait for the whole batch.
                if self.db.others_waiting():
                    break
            for row in rows[done:]:  # not started: due again at once, attempt not counted
                row.attempts -= 1
                row.next_attempt_at = None
        return BatchResult(done, queued)

    def _process_row(self, session: Session, row: Inbound) -> int:
        now = self.clock.now()
        try:
            with session.begin_nested():
                state, queued = self._stages(session, row)
                row.state = state
                row.processed_at = now
                row.next_attempt_at = None
                return queued
        except (HostileInput, UnparseableMessage, Quarantine) as exc:
            reason = getattr(exc, "reason", None) or str(exc)
            self._quarantine(row, reason, "")
        except Exception as exc:
            trace = traceback.format_exc()
            if row.attempts >= MAX_ATTEMPTS:
                self._quarantine(row, f"processing failed: {type(exc).__name__}: {exc}", trace)
            else:
                log.warning("inbound %d failed (attempt %d), will retry", row.id, row.attempts)
                row.error = trace
                row.next_attempt_at = now + timedelta(seconds=5 * 2**row.attempts)
        return 0

    def _quarantine(self, row: Inbound, reason: str, trace: str) -> None:
        log.warning("inbound %d quarantined: %s", row.id, reason)
        row.state = "quarantined"
        row.reason = reason[:2000]
        row.error = trace
        row.processed_at = self.clock.now()
        row.next_attempt_at = None

    def _stages(self, session: Session, row: Inbound) -> tuple[str, int]:
        check(row.raw, self.limits)
        message = parse(row.raw, null_sender=row.mail_from == "<>")
        tickets = Tickets(session)
        if tickets.message_exists(message.message_id):
            log.info("inbound %d is a duplicate of <%s>", row.id, message.message_id)
            return "duplicate", 0
        verdict = classify(message, row.mail_from)
        if verdict.is_bounce:
            if not record_bounce(session, tickets, row.id, message, self.clock.now()):
                raise Quarantine("bounce for no message maildesk sent")
            return "done", 0
        sender = identify(
            session,
            message,
            row.rcpt_to,
            self.threader.tokens,
            self.settings.agents.trusted_authserv_ids,
        )
        match = self.threader.match(tickets, message, row.rcpt_to, proven_agent=sender.agent)
        if sender.agent is not None:
            mail = AgentMail(row, message, sender.agent, match.ticket, match.rule)
            log.info("inbound %d from agent %s (%s)", row.id, sender.agent.email, sender.proof)
            return "done", self.agent_flow.handle(session, mail, self.clock.now())
        if sender.forged:
            log.warning("inbound %d claims agent %s without proof", row.id, message.from_addr)
        return "done", self._record(session, tickets, row, message, verdict, match, sender.forged)

    def _record(
        self,
        session: Session,
        tickets: Tickets,
        row: Inbound,
        message: ParsedMessage,
        verdict: Verdict,
        match: Match,
        forged: bool,
    ) -> int:
        """A customer's (or anyone else's) message: record it, move the ticket, notify."""
        now = self.clock.now()
        lifecycle = Lifecycle(session, now)
        ticket, rule = match.ticket, match.rule
        # Only a person reopens a ticket: an out-of-office answering our "closed"
        # notice is filed with the closed ticket.
        if ticket is not None and ticket.status == "closed" and verdict.may_reply:
            if tickets.closed_too_long(ticket, now, self.settings.lifecycle.reopen_days):
                ticket = self._open(tickets, message, now, previous=ticket)
                rule = "new"
            else:
                lifecycle.change(ticket, "status", "accepted", message.from_addr, "mail")
        opened = ticket is None
        if ticket is None:
            ticket = self._open(tickets, message, now)
        kind = self._kind(ticket, message, verdict)
        tickets.add_message(
            ticket,
            NewMessage(
                message_id=message.message_id,
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
                flag="forged-agent" if forged else "",
            ),
        )
        self._add_participants(tickets, ticket, message, now)
        log.info("inbound %d -> ticket %d (%s)", row.id, ticket.id, rule)
        queued = 0
        if opened:
            if self._may_acknowledge(session, row, message, verdict) and not forged:
                answering = InReplyTo(message.message_id, message.references)
                queued += self.notices.acknowledge(session, ticket, answering)
            if row.notify:
                queued += self.notices.to_agents(session, ticket, "new_ticket", message)
            return queued
        if kind == "auto" or not row.notify:
            return queued
        text = new_text(message.text)
        outcome = (
            "forged"
            if forged
            else lifecycle.customer_replied(ticket, text, message.from_addr, message.thread_ids)
        )
        if outcome == "confirmed":
            queued += self.notices.status_notice(session, ticket)
        return queued + self.notices.to_agents(session, ticket, outcome, message, text=text)

    def _open(
        self,
        tickets: Tickets,
        message: ParsedMessage,
        now: datetime,
        previous: Ticket | None = None,
    ) -> Ticket:
        requester = tickets.person(message.from_addr, message.from_name, now)
        language = message.language or self.settings.support.language
        return tickets.open(requester, message.subject, language, now, previous=previous)

    def _kind(self, ticket: Ticket, message: ParsedMessage, verdict: Verdict) -> str:
        if not verdict.may_reply:
            return "auto"
        return "customer" if ticket.requester.email == message.from_addr else "participant"

    def _add_participants(
        self, tickets: Tickets, ticket: Ticket, message: ParsedMessage, now: datetime
    ) -> None:
        """The sender and the people they copied may write into this ticket from now on."""
        ourselves = {self.settings.support.address.lower()}
        ourselves.update(a.email for a in Agents(tickets.session).active())
        people = [(message.from_addr, message.from_name)]
        people += [(addr, "") for addr in message.cc]
        wanted = [
            (addr, name)
            for addr, name in people
            if addr not in ourselves and self.threader.tokens.ticket_number(addr) is None
        ]
        tickets.add_participants(ticket, wanted, now)

    def _may_acknowledge(
        self, session: Session, row: Inbound, message: ParsedMessage, verdict: Verdict
    ) -> bool:
        if not row.notify or not verdict.may_reply:
            return False
        sender = message.from_addr
        if sender == self.settings.support.address.lower():
            return False
        if Agents(session).by_email(sender) is not None:
            return False
        cap = self.settings.limits.auto_replies_per_hour
        if self.notifier.auto_replies_in_last_hour(session, sender) >= cap:
            log.info("no acknowledgement to %s: %d automatic replies this hour", sender, cap)
            return False
        return True
