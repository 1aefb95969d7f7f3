"""Mail from a proven agent: commands, the relay to the customer, notes, phone intake.

The agent's own message is kept as an internal record; what the customer gets
is a separate outbound message from the support address, carrying only the
agent's new text (quotes, signature and command lines removed). A mail with
any invalid command changes nothing and sends nothing to the customer: the
agent gets the errors back instead. Automatic mail from the agent's mailbox
(an out-of-office answer to a notification) changes and sends nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from maildesk import logs
from maildesk.message import ParsedMessage
from maildesk.models import Agent, Inbound, Message, Participant, Person, Ticket
from maildesk.outbound import canned, strangers_words
from maildesk.outbound.canned import CannedReplies, CannedReplyError
from maildesk.outbound.catalogue import AgentReply
from maildesk.outbound.compose import Attachment
from maildesk.outbound.notify import Notifier, Recipient
from maildesk.pipeline.loops import classify
from maildesk.pipeline.notices import Notices, customer_thread
from maildesk.pipeline.own_addresses import OwnAddresses
from maildesk.states import TicketStatus
from maildesk.tickets import cleanup, commands
from maildesk.tickets.agents import Agents
from maildesk.tickets.command_errors import Code, CommandError, error
from maildesk.tickets.lifecycle import Change, Lifecycle
from maildesk.tickets.service import NewMessage, Tickets
from maildesk.tickets.watchers import Watchers

# What it did is logged once its transaction committed (logs.transactional).
log = logs.transactional("maildesk.agents")

_CONTENT_LINE = 12  # note lines shorter than this are too common to count as leaks


@dataclass(frozen=True)
class AgentMail:
    row: Inbound
    message: ParsedMessage
    agent: Agent
    ticket: Ticket | None
    rule: str
    text: str  # the new text (replies.new_text), computed before the write transaction


@dataclass(frozen=True)
class Applied:
    changes: tuple[Change, ...]
    queued: int


# Commands that do not count as working on the ticket: watching it does not take it.
_NOT_ACTING = frozenset({"watch", "unwatch", "lang"})


class AgentFlow:
    def __init__(self, notifier: Notifier, notices: Notices, default_language: str) -> None:
        self.notifier = notifier
        self.notices = notices
        self.default_language = default_language
        self.own = OwnAddresses(notifier.settings.support)
        self.canned = CannedReplies(lambda: notifier.renderer.path, notifier.clock)

    def file(self, session: Session, mail: AgentMail, now: datetime) -> int:
        """Record an agent's mail in its ticket and do nothing it asks: a quiet import's
        history (its commands ran, or did not, when it was written). Queues nothing."""
        assert mail.ticket is not None
        self._record(Tickets(session), mail.ticket, mail, commands.parse(mail.text), now)
        return 0

    def handle(self, session: Session, mail: AgentMail, now: datetime) -> int:
        """Apply one agent mail; returns the number of outbound messages queued."""
        if not classify(mail.message, mail.row.mail_from).may_reply:
            # The agent's mailbox answering by itself (out of office, RFC 3834): it proves
            # the mailbox, but nobody wrote it. Nothing runs, nothing reaches the customer,
            # and it gets no answer (answering automatic mail is how loops start).
            log.info("inbound %d: automatic mail from agent %s ignored", mail.row.id,
                     mail.agent.email)  # fmt: skip
            return 0
        parsed = commands.parse(mail.text)
        errors = [*parsed.errors, *self._problems(session, mail, parsed)]
        if errors:
            return self.notices.command_errors(
                session, mail.ticket, mail.message, mail.agent, errors
            )
        tickets = Tickets(session)
        lifecycle = Lifecycle(session, now)
        queued = 0
        ticket = mail.ticket
        intake = parsed.get("customer")
        if ticket is None:
            assert intake is not None  # _problems refused the other case
            ticket = self._open_for_customer(tickets, mail, intake.arg, now)
        self._record(tickets, ticket, mail, parsed, now)
        via = "command" if parsed.commands else "mail"
        if acting(parsed):
            lifecycle.agent_acted(ticket, mail.agent, via)
        applied = self.apply(session, ticket, mail.agent, parsed, now)
        changes, queued = applied.changes, applied.queued
        if intake is not None:
            queued += self.notices.acknowledge(session, ticket, answering=None)
        if internal(parsed) or intake is not None:
            return queued
        body = _without_internal_lines(session, ticket, parsed.body)
        body = _without_own_signature(body, (mail.agent.name, mail.message.from_name))
        name = agent_name(mail.agent, mail.message)
        canned_reply = parsed.get("reply")
        if canned_reply is not None:
            # Checked in _problems, so it renders; the agent's own text follows it.
            reply = self.canned_text(ticket, mail.agent, canned_reply.arg, name)
            body = f"{reply}\n\n{body}" if body.strip() else reply
        paid = parsed.get("paid")
        if paid is not None:
            lifecycle.change(ticket, "paid", "pending", mail.agent.email, "command")
            ticket.paid_note = paid.arg
            lifecycle.change(
                ticket, "status", TicketStatus.WAITING_CUSTOMER, mail.agent.email, "command"
            )
            return queued + self.notices.paid_notice(
                session,
                ticket,
                agent_name(mail.agent, mail.message),
                body,
                attachments_of(mail.message),
            )
        if body.strip():
            if parsed.get("status") is None:
                lifecycle.agent_replied(ticket, mail.agent, "mail")
            return queued + self.relay(session, ticket, name, body, attachments_of(mail.message))
        # Commands alone: a status change is still news to the customer.
        if any(change.field == "status" for change in changes):
            queued += self.notices.status_notice(session, ticket)
        return queued

    def _problems(
        self, session: Session, mail: AgentMail, parsed: commands.Commands
    ) -> list[CommandError]:
        problems = []
        intake = parsed.get("customer")
        if mail.ticket is None and intake is None:
            problems.append(error(Code.NO_TICKET))
        if mail.ticket is not None and intake is not None:
            problems.append(error(Code.CUSTOMER_IN_REPLY, "#customer", ticket=str(mail.ticket.id)))
        assign = parsed.get("assign")
        if assign and assign.arg != "me" and Agents(session).by_email(assign.arg) is None:
            problems.append(error(Code.NOT_AN_AGENT, f"#assign {assign.arg}"))
        if parsed.get("paid") is not None and parsed.get("note") is not None:
            problems.append(error(Code.PAID_IN_NOTE, "#paid"))
        if parsed.get("paid") is not None:
            type_command = parsed.get("type")
            ticket_type = type_command.arg if type_command else (mail.ticket and mail.ticket.type)
            if ticket_type != "modification":
                problems.append(error(Code.PAID_NOT_MODIFICATION, "#paid"))
        for command in parsed.read_only:
            problems.append(error(Code.READ_ONLY_IN_REPLY, f"#{command.name}"))
        if parsed.get("reply") is not None and parsed.get("note") is not None:
            problems.append(error(Code.REPLY_IN_NOTE, "#reply"))
        if mail.ticket is not None:
            problems += self.ticket_problems(session, mail.ticket, mail.agent, parsed)
        return problems

    def ticket_problems(
        self, session: Session, ticket: Ticket, agent: Agent, parsed: commands.Commands
    ) -> list[CommandError]:
        """What is wrong with `parsed` on this ticket (canned reply, #cc address, a
        #closeall among other commands)."""
        problems = []
        if parsed.get("closeall") is not None and len(parsed.commands) > 1:
            problems.append(error(Code.CLOSEALL_ALONE, "#closeall"))
        canned = parsed.get("reply")
        if canned is not None:
            try:
                self.canned_text(ticket, agent, canned.arg, agent.name or agent.email)
            except CannedReplyError as exc:
                problems.append(exc.error)
        for named in (*parsed.all("cc"), *parsed.all("requester")):
            if self.own.include(session, named.arg):
                problems.append(error(Code.CC_OURS, f"#{named.name} {named.arg}"))
        return problems

    def canned_text(self, ticket: Ticket, agent: Agent, name: str, shown_name: str) -> str:
        """The canned reply `name` in the ticket's language (raises CannedReplyError)."""
        settings = self.notifier.settings
        support, echo = settings.support, settings.trust.echo_unproven
        # As the rest of the mail to the customer: none of a stranger's words (notify.py).
        values = canned.context(
            ticket,
            canned.AgentInfo(shown_name, agent.email),
            {"name": support.name, "address": support.address, "url": support.base_url},
            withheld=not echo and strangers_words.words_unproven(ticket),
            name_withheld=not echo
            and strangers_words.unproven_name(ticket, ticket.requester.email),
        )
        return self.canned.render(name, ticket.language, values)

    def apply(
        self,
        session: Session,
        ticket: Ticket,
        agent: Agent,
        parsed: commands.Commands,
        now: datetime,
    ) -> Applied:
        """Run the commands that change a ticket (status, type, priority, owner, watchers,
        participants) as `agent`; returns the changes and the mails queued (critical alert).
        Used by a proven reply and by a confirmed console request alike."""
        if parsed.get("closeall") is not None:  # alone (ticket_problems)
            flood = cleanup.close_flood(session, ticket, now, agent.email)
            log.info("#closeall by %s on #%d: %d tickets from %s closed", agent.email,
                     ticket.id, len(flood.closed), flood.sender)  # fmt: skip
            return Applied((), self.notices.closed_all(session, ticket, agent, flood))
        lifecycle = Lifecycle(session, now)
        old_priority = ticket.priority
        changes = []
        for name in ("type", "priority", "lang", "assign", "status"):
            command = parsed.get(name)
            if command is not None:
                field = {"assign": "owner", "lang": "language"}.get(name, name)
                value = agent.email if command.arg == "me" else command.arg
                change = lifecycle.change(ticket, field, value, agent.email, "command")
                if change is not None:
                    changes.append(change)
        watchers = Watchers(session)
        if parsed.get("watch") is not None:
            watchers.watch(ticket, agent, now)
        if parsed.get("unwatch") is not None:
            watchers.unwatch(ticket, agent)
        added: list[tuple[str, str | None]] = [(cc.arg, None) for cc in parsed.all("cc")]
        if added:
            Tickets(session).add_participants(ticket, added, now)
        wanted = parsed.get("requester")
        if wanted is not None and wanted.arg != ticket.requester.email:
            # The customer the ticket is for (an original that proved nothing, a
            # colleague taking the case over); the one before stays in it, in Cc.
            tickets, before = Tickets(session), ticket.requester.email
            tickets.hand_over(ticket, tickets.person(wanted.arg, "", now))
            record = lifecycle.record
            changes.append(record(ticket, "requester", before, wanted.arg, agent.email, "command"))
        queued = 0
        if ticket.priority == "critical" and old_priority != "critical":
            queued += self.notices.critical(session, ticket)
        handed = next((change for change in changes if change.field == "owner"), None)
        if handed is not None:
            if ticket.owner is not None and ticket.owner.id != agent.id:
                queued += self.notices.assigned(session, ticket)  # a colleague gave it to them
            former = Agents(session).by_email(handed.old) if handed.old else None
            if former is not None and former.id != agent.id:
                queued += self.notices.taken(session, ticket, former)  # no parallel answers
        return Applied(tuple(changes), queued)

    def _open_for_customer(
        self, tickets: Tickets, mail: AgentMail, email: str, now: datetime
    ) -> Ticket:
        customer = tickets.person(email, "", now)
        subject = re.sub(r"^\s*(fwd?|fw|tr|re)\s*:\s*", "", mail.message.subject, flags=re.I)
        ticket = tickets.open(customer, subject, customer.language or self.default_language, now)
        ticket.channel = "phone"
        return ticket

    def _record(
        self,
        tickets: Tickets,
        ticket: Ticket,
        mail: AgentMail,
        parsed: commands.Commands,
        now: datetime,
    ) -> None:
        message = mail.message
        tickets.add_message(
            ticket,
            NewMessage(
                message_id=message.message_id,
                claimed_id=message.claimed_id,
                direction="in",
                kind="note" if internal(parsed) else "agent",
                from_addr=message.from_addr,
                from_name=message.from_name,
                subject=message.subject,
                body_text=parsed.body,
                created_at=now,
                to_addrs=message.to,
                cc_addrs=message.cc,
                references=message.thread_ids,
                thread_rule=mail.rule,
                inbound_id=mail.row.id,
                attachments=tuple(
                    (a.filename, a.content_type, a.data) for a in message.attachments
                ),
                internal=True,
            ),
        )

    def relay(
        self,
        session: Session,
        ticket: Ticket,
        name: str,
        body: str,
        attachments: tuple[Attachment, ...] = (),
    ) -> int:
        """The agent's answer to every participant, from the support address."""
        people = session.execute(
            select(Person.email, Person.name, Participant.role)
            .join(Participant, Participant.person_id == Person.id)
            .where(Participant.ticket_id == ticket.id)
            .order_by(Participant.role.desc(), Person.id)  # the requester first
        ).all()
        recipients = [Recipient(email, name) for email, name, _role in people]
        support = self.notifier.settings.support
        self.notifier.notify(
            session,
            AgentReply({"text": body, "agent_name": name}),
            recipients,
            ticket=ticket,
            answering=customer_thread(session, ticket),
            sender_name=f"{name} ({support.name})",
            attachments=attachments,
        )
        return 1


def acting(parsed: commands.Commands) -> bool:
    """Does this mail work on the ticket (so the first one accepts and owns it)?
    A #closeall closes it, among others, and takes none of them."""
    if parsed.get("closeall") is not None:
        return False
    only_watching = parsed.commands and all(c.name in _NOT_ACTING for c in parsed.commands)
    return not only_watching or bool(parsed.body.strip())


def internal(parsed: commands.Commands) -> bool:
    """Does this mail stay an internal note, its text relayed to no one? A #closeall's
    does too: its text is about the flood, not an answer to one of its senders."""
    return parsed.get("note") is not None or parsed.get("closeall") is not None


def agent_name(agent: Agent, message: ParsedMessage | None = None) -> str:
    """How customers see the agent: the configured name, else the mail's display name,
    else the address's local part. Never an address: that is what we keep from customers."""
    for candidate in (agent.name, message.from_name if message else ""):
        if candidate and "@" not in candidate:
            return candidate
    return agent.email.partition("@")[0]


def attachments_of(message: ParsedMessage) -> tuple[Attachment, ...]:
    return tuple(Attachment(a.filename, a.content_type, a.data) for a in message.attachments)


def _normalize(line: str) -> str:
    return " ".join(line.lstrip("> ").split()).lower()


# How far from the end an agent's own signature block may start (name, firm, phone...).
_SIGNATURE_LINES = 6


def _without_own_signature(text: str, names: tuple[str, ...]) -> str:
    """Drop the agent's signature block: from a line that is just the agent's name, near
    the end. Outlook and phones add it with no "-- " line; the relay signs for the agent,
    and "#take" above a signature must not mail the customer a signature alone."""
    wanted = {_normalize(n) for n in names if n and "@" not in n}
    lines = text.rstrip().splitlines()
    for i in range(max(len(lines) - _SIGNATURE_LINES, 0), len(lines)):
        if _normalize(lines[i]) in wanted:
            return "\n".join(lines[:i]).rstrip()
    return text


def _without_internal_lines(session: Session, ticket: Ticket, text: str) -> str:
    """Drop any line that repeats an internal note: a note must not leak, not even quoted."""
    notes = session.scalars(
        select(Message.body_text).where(Message.ticket_id == ticket.id, Message.kind == "note")
    )
    secret = {
        _normalize(line)
        for body in notes
        for line in body.splitlines()
        if len(_normalize(line)) >= _CONTENT_LINE
    }
    if not secret:
        return text
    return "\n".join(line for line in text.splitlines() if _normalize(line) not in secret)
