"""The agents' console by mail: look up, search and take over tickets from a mail client.

Which mail is a console request (`Console.route`):
- mail to a signed console address: `support+s42a3.…` (a row of a `#list`
  answer: "show me ticket 42") or `support+c17.…` (the reply address of
  confirmation 17);
- mail From an agent's registered address whose new text is command lines
  only (no `#customer`), unless it is a proven reply on its own ticket with
  only state-changing commands: that stays the agent flow's, recorded in the
  thread as before. An empty text takes its command from the subject
  (`Subject: #list mine`); in a new mail that only reads (`#list`, `#show`,
  ...), the text below the commands is the client's signature ("Sent from my
  iPhone") and is ignored, and a mistyped command (`#lsit`) is an error back
  to the agent rather than a new ticket.

What a request may do:
- Read-only commands (`#list`, `#show`, `#search`, `#help`, `#replies`) are
  answered to the agent's *registered* address, never to one the mail names,
  so a forged request reads nothing. At most `PER_HOUR` requests per agent
  per hour are answered; the rest are logged and dropped. Unproven requests
  and proven ones (DKIM/DMARC, a signed address) are counted apart, so a
  stranger forging the agent's From uses up only the unproven allowance.
- State-changing commands (`#assign`, `#take`, `#watch`, `#unwatch`, `#cc`,
  `#status`, `#type`, `#priority`, `#lang`, `#reply`) act on the ticket the mail names
  (its thread, or `[#N]` in the subject). They run at once when the mail
  proves the agent for that ticket. Otherwise the agent gets a confirmation
  mail: it runs them when the agent replies to it or presses its button,
  once, within `CONFIRM_HOURS`. A reply counts only From the agent's own
  address and only when it is not automatic: an out-of-office answer to the
  confirmation mail confirms nothing.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from urllib.parse import urlencode

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from maildesk import logs
from maildesk.clock import as_utc, desk_time
from maildesk.message import ParsedMessage
from maildesk.models import Agent, Blob, Confirmation, ConsoleRequest, Inbound, Message, Ticket
from maildesk.outbound.canned import CannedReplyError
from maildesk.outbound.catalogue import (
    AgentConfirm,
    AgentConfirmed,
    AgentError,
    AgentHelp,
    AgentList,
    AgentShow,
    ListRow,
    ShownEvent,
    ShownMessage,
    SlaClock,
    Target,
    fitting,
)
from maildesk.outbound.compose import Attachment
from maildesk.outbound.notify import InReplyTo, Recipient
from maildesk.pipeline.agent_mail import AgentFlow, acting, agent_name
from maildesk.pipeline.authenticity import Sender
from maildesk.pipeline.loops import classify
from maildesk.pipeline.notices import MAX_QUOTED
from maildesk.pipeline.threader import Match
from maildesk.redaction import redact_head, redact_links
from maildesk.replies import agrees
from maildesk.tickets import commands, listing, sla
from maildesk.tickets.agents import Agents
from maildesk.tickets.command_errors import Code, CommandError, error
from maildesk.tickets.lifecycle import Lifecycle
from maildesk.tickets.search import search
from maildesk.tickets.watchers import Watchers

# What it did is logged once its transaction committed (logs.transactional).
log = logs.transactional("maildesk.console")

PER_HOUR = 30  # console requests answered per agent per hour
CONFIRM_HOURS = 24  # how long a confirmation mail's reply address and button work
MAX_READS = 5  # read-only commands answered from one mail
MAX_SHOWN = 100  # messages of a #show, the newest ones
MAX_BODY = MAX_QUOTED  # characters of one message body in a #show, as a notice quotes
PREVIEW = 90  # characters of each canned reply `#replies` shows
# What an unproven mail may ask for, pending confirmation (and a proven one may run here).
CHANGING = frozenset(
    {"assign", "watch", "unwatch", "cc", "requester", "status", "type", "priority", "lang"}
    | {"reply", "closeall"}
)


@dataclass(frozen=True)
class ConsoleMail:
    message_id: str
    subject: str
    agent: Agent | None  # None only for a confirmation reply: its agent is on the row
    proof: str  # how the sender was proven for `ticket`; "" = not proven
    ticket: Ticket | None  # what state-changing commands act on
    parsed: commands.Commands
    confirmation: int | None = None  # a reply to confirmation N
    from_addr: str = ""  # a confirmation reply's From: it must be the agent's
    automatic: bool = False  # an auto-reply, a bounce, list mail: it confirms nothing
    agrees: bool = False  # a confirmation reply that says yes (`replies.agrees`)


class Console:
    def __init__(self, flow: AgentFlow, tag: re.Pattern[str], staff_language: str) -> None:
        self.flow = flow
        self.notifier = flow.notifier
        self.notices = flow.notices
        self.tokens = flow.notifier.tokens
        self.tag = tag
        self.staff_language = staff_language

    # -- which mail is a console request ---------------------------------------------

    def route(
        self,
        session: Session,
        row: Inbound,
        message: ParsedMessage,
        sender: Sender,
        match: Match,
        text: str,
    ) -> ConsoleMail | None:
        addresses = (*row.rcpt_to, *message.to, *message.cc)
        found = [t for a in addresses if (t := self.tokens.console(a)) is not None]
        mid, subject = message.message_id, message.subject
        confirm = next((t for t in found if t.kind == "confirm"), None)
        automatic = not classify(message, row.mail_from).may_reply
        if confirm is not None and (
            automatic
            or (not sender.disproven and self._from_its_agent(session, confirm.number, message))
        ):
            # Only the agent received this address: holding it is the proof.
            empty = commands.Commands((), (), "")
            return ConsoleMail(mid, subject, None, "", None, empty, confirm.number,
                               message.from_addr, automatic, agrees(text))  # fmt: skip
        agent = Agents(session).by_email(message.from_addr)
        if agent is None or automatic:
            return None  # automatic mail asks nothing, and is never answered
        show = next((t for t in found if t.kind == "show" and t.agent == agent.id), None)
        if show is not None:
            parsed = commands.Commands((commands.Command("show", str(show.number)),), (), "")
        else:
            parsed = commands.parse(text if text.strip() else _subject_commands(subject))
            if not (parsed.commands or parsed.errors) or parsed.get("customer") is not None:
                return None
            # Reading commands (or mistyped ones) in a new mail: the text below is a
            # signature; a typo is answered with an error, not opened as a ticket.
            only_reads = not parsed.changing
            if parsed.body.strip() and (match.ticket is not None or not only_reads):
                return None  # text for a ticket: a reply, or a new ticket's first mail
        target = match.ticket or self._tagged(session, message.subject)
        if match.ticket is None:
            match = Match(target, "subject_tag", named_by=("subject",))
        proven = sender.agent is not None and sender.proves_for(match)
        if show is None and proven and match.ticket is not None and not parsed.read_only:
            return None  # a proven reply on its ticket: the agent flow records it there
        return ConsoleMail(mid, subject, agent, sender.proof if proven else "", target, parsed)

    @staticmethod
    def _from_its_agent(session: Session, confirmation: int, message: ParsedMessage) -> bool:
        """Is `message` From the agent confirmation `confirmation` was asked of? Anyone
        else's mail to its address (a colleague it was forwarded to, a customer answering
        all) is not a confirmation: it takes the way any mail takes, and nothing is lost."""
        asked = session.scalar(
            select(Agent.email)
            .join(Confirmation, Confirmation.agent_id == Agent.id)
            .where(Confirmation.id == confirmation)
        )
        if asked is not None and asked.lower() == message.from_addr:
            return True
        log.warning("console: mail From %s to confirmation %d is no confirmation",
                    message.from_addr, confirmation)  # fmt: skip
        return False

    def _tagged(self, session: Session, subject: str) -> Ticket | None:
        found = self.tag.search(subject[:1000])
        if found is None:
            return None
        # Locked as the threader's tickets are (`Tickets.get`): the request may change it.
        return session.get(Ticket, int(found.group(1)), with_for_update={"of": Ticket})

    # -- answering ---------------------------------------------------------------

    def handle(self, session: Session, mail: ConsoleMail, now: datetime) -> int:
        """Answer one console request; returns the number of mails queued."""
        taken = select(ConsoleRequest.id).where(ConsoleRequest.message_id == mail.message_id)
        if session.scalar(taken) is not None:
            return 0  # the same mail delivered twice is answered once
        if mail.confirmation is not None:
            return self._confirm_by_mail(session, mail, now)
        agent = mail.agent
        assert agent is not None
        since = now - timedelta(hours=1)
        # Proven and unproven requests have an allowance each: forgeries cannot use up
        # the agent's proven one.
        alike = ConsoleRequest.proof != "" if mail.proof else ConsoleRequest.proof == ""
        recent = session.scalar(
            select(func.count(ConsoleRequest.id)).where(
                ConsoleRequest.agent_id == agent.id, ConsoleRequest.at > since, alike
            )
        )
        session.add(
            ConsoleRequest(agent_id=agent.id, message_id=mail.message_id, at=now, proof=mail.proof)
        )
        if (recent or 0) >= PER_HOUR:
            kind = "proven" if mail.proof else "unproven"
            log.warning(
                "console: %s sent more than %d %s requests this hour; dropped",
                agent.email, PER_HOUR, kind,
            )  # fmt: skip
            return 0
        log.info("console request from %s (%s)", agent.email, mail.proof or "unproven")
        errors = [*mail.parsed.errors, *self._problems(session, mail, agent)]
        if errors:
            return self._errors(session, agent, mail, errors)
        queued = 0
        for command in mail.parsed.read_only[:MAX_READS]:
            queued += self._answer(session, agent, mail, command, now)
        changing = commands.Commands(mail.parsed.changing, (), "")
        if changing.commands:
            assert mail.ticket is not None  # _problems refused the other case
            if mail.proof:
                queued += self.run(session, mail.ticket, agent, changing, now)
            else:
                queued += self._ask(session, agent, mail, mail.ticket, changing, now)
        return queued

    def language(self, agent: Agent) -> str:
        """Everything an agent reads is in their language, else the support language."""
        return getattr(agent, "language", None) or self.staff_language

    def _problems(self, session: Session, mail: ConsoleMail, agent: Agent) -> list[CommandError]:
        problems = []
        changing = mail.parsed.changing
        for command in changing:
            if command.name not in CHANGING:
                problems.append(error(Code.ONLY_IN_REPLY, f"#{command.name}"))
        if changing and mail.ticket is None:
            problems.append(error(Code.WHICH_TICKET, f"#{changing[0].name}"))
        assign = mail.parsed.get("assign")
        if assign and assign.arg != "me" and Agents(session).by_email(assign.arg) is None:
            problems.append(error(Code.NOT_AN_AGENT, f"#assign {assign.arg}"))
        if mail.ticket is not None and changing:
            problems += self.flow.ticket_problems(session, mail.ticket, agent, mail.parsed)
        return problems

    def _errors(
        self, session: Session, agent: Agent, mail: ConsoleMail, errors: list[CommandError]
    ) -> int:
        note = AgentError(tuple(errors), mail.subject)
        to, answering = Recipient.of_agent(agent), InReplyTo(mail.message_id)
        self.notifier.notify(session, note, to, answering=answering)
        return 1

    def _answer(
        self,
        session: Session,
        agent: Agent,
        mail: ConsoleMail,
        command: commands.Command,
        now: datetime,
    ) -> int:
        language = self.language(agent)
        to = Recipient.of_agent(agent)
        answering = InReplyTo(mail.message_id)
        if command.name == "show":
            ticket = session.get(Ticket, int(command.arg.lstrip("#")))
            if ticket is None:
                return self._errors(
                    session, agent, mail, [error(Code.NO_SUCH_TICKET, f"#show {command.arg}")]
                )
            return self.show(session, agent, ticket, now, answering)
        if command.name in ("help", "replies"):
            replies = tuple(self.flow.canned.names(language))
            previews = tuple(self._preview(name, language, agent) for name in replies)
            note = AgentHelp(command.name, replies, previews)
            self.notifier.notify(session, note, to, answering=answering)
            return 1
        if command.name == "list":
            try:
                rows = listing.tickets_for(
                    session,
                    agent,
                    command.arg,
                    listing.MAX_ROWS + 1,
                    sla_enabled=self.notifier.settings.sla.enabled,
                )
            except listing.ListError as exc:
                return self._errors(session, agent, mail, [exc.error])
            snippets = [""] * len(rows)
            query = f"#list {command.arg}".strip()
        else:  # search
            hits = search(session, command.arg, listing.MAX_ROWS + 1)
            rows = [listing.row(hit.ticket) for hit in hits]
            snippets = [redact_links(hit.snippet) for hit in hits]
            query = f"#search {command.arg}"
        shown = tuple(
            self._row(r, snippet, agent, now)
            for r, snippet in zip(rows[: listing.MAX_ROWS], snippets, strict=False)
        )
        listed = AgentList(query, shown, more=len(rows) > listing.MAX_ROWS)
        self.notifier.notify(session, listed, to, answering=answering)
        return 1

    def _preview(self, name: str, language: str, agent: Agent) -> str:
        """A canned reply's first words, rendered for no customer in particular."""
        support = self.notifier.settings.support
        values = {
            "ticket": {"number": 0, "subject": "…", "status": "accepted", "status_label": "",
                       "type": "", "priority": "normal"},
            "customer": {"email": "", "name": ""},
            "agent": {"name": agent_name(agent), "email": agent.email},
            "support": {"name": support.name, "address": support.address,
                        "url": support.base_url},
        }  # fmt: skip
        try:
            words = " ".join(self.flow.canned.render(name, language, values).split())
        except CannedReplyError:
            return ""  # a broken reply: `templates check` names it; #reply NAME says why
        return words if len(words) <= PREVIEW else words[: PREVIEW - 1].rstrip() + "…"

    def _row(self, row: listing.Row, snippet: str, agent: Agent, now: datetime) -> ListRow:
        return {
            "number": row.number,
            "tag": f"[{self.notifier.settings.support.tag_prefix}{row.number}]",
            "status": row.status,
            "priority": row.priority,
            "owner": row.owner,
            "age": listing.age(row.created_at, now),
            "last_activity": listing.age(row.last_activity, now),
            "subject": row.subject,
            "snippet": snippet,
            "show_address": self.tokens.show_address(row.number, agent.id),
        }

    def show(
        self,
        session: Session,
        agent: Agent,
        ticket: Ticket,
        now: datetime,
        answering: InReplyTo | None,
    ) -> int:
        """The whole ticket to `agent`, with a Reply-To signed for that agent and ticket:
        replying to it is a proven agent reply on the ticket."""
        total = session.scalar(select(func.count(Message.id)).where(Message.ticket_id == ticket.id))
        messages = list(
            session.scalars(
                select(Message)
                .where(Message.ticket_id == ticket.id)
                .order_by(Message.id.desc())
                .limit(MAX_SHOWN)
                .options(selectinload(Message.attachments))
            )
        )[::-1]
        files, attached = self._files(session, messages)
        thread: list[ShownMessage] = [
            {
                "at": self._local(m.created_at),
                "direction": m.direction,
                "kind": m.kind,
                "from": m.from_addr,
                "from_name": m.from_name,
                "internal": m.internal,
                "flag": m.flag,
                "text": redact_head(m.body_text, MAX_BODY),
                "cut": len(m.body_text) > MAX_BODY,
                "attachments": [
                    {"filename": a.filename, "size": a.size, "attached": a.id in attached}
                    for a in m.attachments
                ],
            }
            for m in messages
        ]
        events: list[ShownEvent] = [
            {
                "at": self._local(e.at),
                "actor": e.actor,
                "field": e.field,
                "old": e.old or "",
                "new": e.new or "",
                "via": e.via,
            }
            for e in ticket.events
        ]
        note = AgentShow(
            thread=tuple(thread),
            left_out=(total or 0) - len(thread),
            events=tuple(events),
            age=listing.age(ticket.created_at, now),
            last_activity=listing.age(ticket.updated_at, now),
            watchers=tuple(a.email for a in Watchers(session).of(ticket)),
            sla=tuple(self._sla(session, ticket, now)),
        )
        to = Recipient.of_agent(agent)
        self.notifier.notify(
            session, note, to, ticket=ticket, answering=answering, attachments=files
        )
        return 1

    @staticmethod
    def _files(session: Session, messages: list[Message]) -> tuple[list[Attachment], set[int]]:
        """The files a #show carries, the newest messages' first, as many as one mail of
        ours carries (`fitting`); and the ids of the attachments they are."""
        newest_first = (a for message in reversed(messages) for a in message.attachments)
        chosen, _named = fitting(newest_first, lambda attachment: attachment.size)
        chosen.reverse()  # in the order of the thread
        wanted = {a.blob_sha256 for a in chosen}
        rows = session.execute(select(Blob.sha256, Blob.data).where(Blob.sha256.in_(wanted)))
        data = {sha256: content for sha256, content in rows}
        files = [Attachment(a.filename, a.content_type, data[a.blob_sha256]) for a in chosen]
        return files, {a.id for a in chosen}

    def _local(self, moment: datetime) -> str:
        """A moment as the desk reads it: in its working-hours zone (`[sla] timezone`)."""
        return desk_time(moment, self.notifier.settings.sla.timezone)

    def _sla(self, session: Session, ticket: Ticket, now: datetime) -> list[SlaClock]:
        """Both service-level clocks of the ticket, or none when `[sla]` is off."""
        settings = self.notifier.settings.sla
        if not settings.enabled:
            return []
        state = sla.states(session, sla.policy_from(settings), now, [ticket])[ticket.id]
        clocks: list[SlaClock] = []
        for clock in state.clocks:
            if clock.met_at is not None:
                where = "met"
            elif clock.breached:
                where = "breached"
            else:
                where = "running" if clock.running else "paused"
            due = self._local(clock.due) if clock.due else ""
            used = round(clock.share * 100)
            clocks.append({"name": clock.name, "state": where, "due": due, "used": used})
        return clocks

    # -- state-changing commands -------------------------------------------------

    def run(
        self,
        session: Session,
        ticket: Ticket,
        agent: Agent,
        parsed: commands.Commands,
        now: datetime,
    ) -> int:
        """Apply state-changing commands as `agent` (proven, or confirmed)."""
        lifecycle = Lifecycle(session, now)
        if acting(parsed):
            lifecycle.agent_acted(ticket, agent, "command")
        applied = self.flow.apply(session, ticket, agent, parsed, now)
        queued = applied.queued
        canned = parsed.get("reply")
        if canned is not None:
            name = agent_name(agent)
            text = self.flow.canned_text(ticket, agent, canned.arg, name)
            if parsed.get("status") is None:
                lifecycle.agent_replied(ticket, agent, "command")
            queued += self.flow.relay(session, ticket, name, text)
        elif any(change.field == "status" for change in applied.changes):
            queued += self.notices.status_notice(session, ticket)
        return queued

    def _ask(
        self,
        session: Session,
        agent: Agent,
        mail: ConsoleMail,
        ticket: Ticket,
        parsed: commands.Commands,
        now: datetime,
    ) -> int:
        """Unproven: keep the commands and ask the agent's own mailbox to confirm them."""
        lines = [f"#{c.name} {c.arg}".strip() for c in parsed.commands]
        pending = Confirmation(
            agent_id=agent.id,
            ticket_id=ticket.id,
            commands="\n".join(lines),
            created_at=now,
            expires_at=now + timedelta(hours=CONFIRM_HOURS),
            used_via="",
        )
        session.add(pending)
        session.flush()
        log.info("console: confirmation %d asked of %s for #%d", pending.id, agent.email, ticket.id)
        target: Target = {
            "tag": f"[{self.notifier.settings.support.tag_prefix}{ticket.id}]",
            "subject": ticket.subject,
            "status": ticket.status,
            "owner": ticket.owner.email if ticket.owner else "",
        }
        note = AgentConfirm(
            tuple(lines), target, self.confirm_url(pending.id), CONFIRM_HOURS, mail.subject
        )
        self.notifier.notify(
            session,
            note,
            Recipient.of_agent(agent),
            answering=InReplyTo(mail.message_id),
            reply_to=self.tokens.confirm_address(pending.id),
        )
        return 1

    def confirm_url(self, confirmation: int) -> str:
        base = self.notifier.settings.support.base_url.rstrip("/")
        query = urlencode({"c": confirmation, "s": self.tokens.confirm_signature(confirmation)})
        return f"{base}/confirm?{query}"

    def check(self, confirmation: int, signature: str) -> bool:
        """Is `signature` the one of confirmation `confirmation` (a link's)?"""
        # compare_digest raises TypeError on a str outside ASCII; ours never is, so it is wrong.
        expected = self.tokens.confirm_signature(confirmation)
        return signature.isascii() and hmac.compare_digest(signature, expected)

    def pending(self, session: Session, confirmation: int, now: datetime) -> Confirmation | None:
        """The confirmation if it may still run (not used, not expired)."""
        row = session.get(Confirmation, confirmation)
        if row is None or row.used_at is not None or as_utc(row.expires_at) <= now:
            return None
        return row

    def confirm(self, session: Session, confirmation: int, now: datetime, via: str) -> Outcome:
        """Run confirmation `confirmation` once, if it is still valid."""
        row, standing = self._usable(session, confirmation, now)
        if row is None:
            return standing
        agent, lines = standing.agent, standing.lines
        assert agent is not None  # a usable confirmation's agent is an active one
        row.used_at, row.used_via = now, via
        ticket = session.get(Ticket, row.ticket_id, with_for_update={"of": Ticket})
        assert ticket is not None
        parsed = commands.parse(row.commands)
        mail = ConsoleMail("", "", agent, "confirmed", ticket, parsed)
        # Checked again: an agent may have left, a canned reply may be gone since.
        errors = [*parsed.errors, *self._problems(session, mail, agent)]
        if errors:
            return Outcome("failed", agent, lines, 0, errors)
        log.info("console: confirmation %d used by %s (%s)", row.id, agent.email, via)
        return Outcome("done", agent, lines, self.run(session, ticket, agent, parsed, now))

    def cancel(self, session: Session, confirmation: int, now: datetime) -> Outcome:
        """The agent answered confirmation `confirmation` with anything but a yes: it
        runs nothing, now or later (its button stops working too)."""
        row, standing = self._usable(session, confirmation, now)
        if row is None:
            return standing
        row.used_at, row.used_via = now, "cancelled"
        log.info("console: confirmation %d cancelled by its agent's answer", row.id)
        return Outcome("cancelled", standing.agent, standing.lines, 0)

    def _usable(
        self, session: Session, confirmation: int, now: datetime
    ) -> tuple[Confirmation | None, Outcome]:
        """The confirmation, locked, while it may still be used; else None and why not
        (`Outcome.agent` and `lines` are filled in either way, when known)."""
        row = session.get(Confirmation, confirmation, with_for_update=True)
        if row is None:
            return None, Outcome("unknown", None, [], 0)
        agent = session.get(Agent, row.agent_id)
        lines = row.commands.splitlines()
        if agent is None or not agent.active:
            return None, Outcome("unknown", None, lines, 0)
        if row.used_at is not None:
            state = "cancelled" if row.used_via == "cancelled" else "used"
            return None, Outcome(state, agent, lines, 0)
        if as_utc(row.expires_at) <= now:
            return None, Outcome("expired", agent, lines, 0)
        return row, Outcome("usable", agent, lines, 0)

    def _confirm_by_mail(self, session: Session, mail: ConsoleMail, now: datetime) -> int:
        assert mail.confirmation is not None
        row = session.get(Confirmation, mail.confirmation)
        agent = session.get(Agent, row.agent_id) if row is not None else None
        if mail.automatic or agent is None or mail.from_addr != agent.email.lower():
            # Holding the address is the proof only in the agent's own, typed reply: not
            # in their vacation responder's, not in a colleague's they forwarded it to.
            why = "an automatic reply" if mail.automatic else f"From {mail.from_addr}"
            log.warning("console: confirmation %d not used: %s", mail.confirmation, why)
            return 0
        if mail.agrees:
            outcome = self.confirm(session, mail.confirmation, now, "mail")
        else:  # "No, I did not send this": any answer but a yes cancels
            outcome = self.cancel(session, mail.confirmation, now)
        if outcome.agent is None:
            return 0
        session.add(
            ConsoleRequest(
                agent_id=outcome.agent.id, message_id=mail.message_id, at=now, proof="confirm"
            )
        )
        return outcome.queued + self.tell(session, outcome, InReplyTo(mail.message_id))

    def tell(self, session: Session, outcome: Outcome, answering: InReplyTo | None) -> int:
        """The agent hears what became of a confirmation (at their registered address)."""
        agent = outcome.agent
        assert agent is not None
        note = AgentConfirmed(
            outcome.state, tuple(outcome.lines), tuple(outcome.errors), CONFIRM_HOURS
        )
        self.notifier.notify(session, note, Recipient.of_agent(agent), answering=answering)
        return 1


def _subject_commands(subject: str) -> str:
    """A subject that is a command line (`#list mine`, `#show 12`), else ""."""
    stripped = subject.strip()
    return stripped if stripped.startswith("#") else ""


@dataclass(frozen=True)
class Outcome:
    """What became of a confirmation."""

    state: str  # done | cancelled | used | expired | failed | unknown
    agent: Agent | None
    lines: list[str]
    queued: int
    errors: list[CommandError] = field(default_factory=list)
