"""Notifications: a kind from the catalogue becomes an outbound message and an outbox row.

`Notifier.notify` is the one way in: it picks the language by the kind's rule,
renders its template and queues the mail. The rows are written in the caller's
transaction, so a notification exists exactly when the ticket change that
caused it does. Nothing is sent here. Mail to customers and mail to agents
differ in their Reply-To (an agent's is bound to that agent) and in visibility
(agent mail lives in the outbox only); mail that belongs to no ticket has no
tag, no ticket Reply-To and no ticket message.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, insert
from sqlalchemy.orm import Session

from maildesk.clock import Clock, new_token
from maildesk.config import Settings
from maildesk.hotsql import Hot, connection_of
from maildesk.i18n import names
from maildesk.inbound import rawbytes
from maildesk.models import STATUS_LABELS, Agent, Outbox, Person, Ticket
from maildesk.outbound import caps, strangers_words
from maildesk.outbound.catalogue import Audience, LanguageRule, Notification, Tie
from maildesk.outbound.compose import (
    Address,
    Attachment,
    Body,
    OutgoingMail,
    compose_body,
    compose_pieces,
    thread_index,
)
from maildesk.outbound.headers import is_valid_msg_id
from maildesk.outbound.render import Rendered, Renderer
from maildesk.states import OutboxState
from maildesk.tickets.service import NewMessage, Tickets
from maildesk.tickets.tokens import ReplyTokens

_MAX_REFERENCES = 20
_OUTBOX = cast(Table, Outbox.__table__)
_INSERT_OUTBOX = Hot(insert(_OUTBOX).returning(_OUTBOX.c.id))
# Several rows whose ids nobody needs: one executemany, no RETURNING (their bytes
# find their row by its Message-ID).
_INSERT_OUTBOX_ROWS = Hot(insert(_OUTBOX))
# Rows are written once this many bytes of mail wait (each agent's copy of a 25 MB
# attachment is 25 MB more to hold).
_ROWS_BYTES = 1 << 20
_MIME_TYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}$")


def sendable(attachment: Attachment) -> Attachment:
    """An attachment as we can send it: a forwarded message or an odd type goes as a file.

    RFC 2046 forbids base64 for message/* and multipart/*, and we send everything base64.
    """
    ctype = attachment.content_type.lower()
    if _MIME_TYPE.match(ctype) and not ctype.startswith(("multipart/", "message/")):
        return attachment
    filename = attachment.filename
    if ctype.startswith("message/") and not filename.lower().endswith(".eml"):
        filename = f"{filename or 'message'}.eml"
    return Attachment(filename, "application/octet-stream", attachment.data)


@dataclass(frozen=True)
class Recipient:
    email: str
    name: str = ""
    agent_id: int | None = None  # set for agents: their Reply-To proves it was theirs
    language: str | None = None  # their own setting; the kind's LanguageRule decides

    @classmethod
    def of_agent(cls, agent: Agent) -> Recipient:
        return cls(agent.email, agent.name, agent_id=agent.id, language=agent.language)

    @classmethod
    def of_person(cls, person: Person, language: str | None = None) -> Recipient:
        """A customer; `language` overrides their own setting (e.g. their tickets')."""
        return cls(person.email, person.name, language=language or person.language)


@dataclass(frozen=True)
class Queued:
    """One mail written to the outbox: its row's id, its Message-ID and its bytes."""

    id: int
    message_id: str
    raw: bytes


@dataclass(frozen=True)
class InReplyTo:
    """The message a notification answers, for the recipient's threading."""

    message_id: str
    references: tuple[str, ...] = ()


class Notifier:
    def __init__(
        self,
        settings: Settings,
        renderer: Renderer,
        tokens: ReplyTokens,
        clock: Clock,
    ) -> None:
        self.settings = settings
        self.renderer = renderer
        self.tokens = tokens
        self.clock = clock

    def tag(self, ticket: Ticket) -> str:
        return self.tag_of(ticket.id)

    def tag_of(self, number: int) -> str:
        """How mail names ticket `number` in a subject: `[#42]`."""
        return f"[{self.settings.support.tag_prefix}{number}]"

    def language(self, note: Notification, to: Recipient, ticket: Ticket | None) -> str:
        """The language `note` is written in for `to`, by the kind's rule."""
        default = self.settings.support.language
        if note.language_rule is LanguageRule.AGENT:
            return to.language or default
        if note.language_rule is LanguageRule.CUSTOMER and to.language:
            return to.language
        return ticket.language if ticket is not None else default

    def notify(
        self,
        session: Session,
        note: Notification,
        to: Recipient | Sequence[Recipient],
        *,
        ticket: Ticket | None = None,
        answering: InReplyTo | None = None,
        sender_name: str | None = None,
        attachments: Sequence[Attachment] = (),
        reply_to: str | None = None,
    ) -> Queued:
        """Render `note` for `to` and queue it, as part of `ticket` when there is one.

        `reply_to` (mail that belongs to no ticket only): a signed address of ours
        that a reply should reach, e.g. a console confirmation's; without it replies
        go to the support address.
        """
        recipients = (to,) if isinstance(to, Recipient) else tuple(to)
        withheld = self._withholds(session, note, ticket)
        if (withheld and ticket is not None) or self._names_withheld(note):
            # Named as far as proof allows: a name unproven mail gave is a stranger's words.
            unproven = strangers_words.unproven_names(
                session, ticket, [r.email for r in recipients]
            )
            recipients = tuple(
                dataclasses.replace(r, name="") if r.email in unproven else r for r in recipients
            )
        if withheld and ticket is not None:
            answering = self._our_own(session, ticket, answering)
        rendered = self._render(note, recipients[0], ticket, withheld=withheld)
        return self.queue(
            session,
            note.template,
            rendered,
            recipients,
            ticket=ticket,
            automatic=note.automatic,
            for_agents=note.audience is Audience.AGENT,
            answering=answering,
            sender_name=sender_name,
            attachments=attachments,
            reply_to=reply_to,
            topic="" if withheld else None,
        )

    def _withholds(self, session: Session, note: Notification, ticket: Ticket | None) -> bool:
        """Whether `note` repeats none of the words of the mail that opened `ticket`
        (`strangers_words.py`)."""
        if note.withholds():
            return True
        if ticket is None or note.audience is not Audience.CUSTOMER:
            return False
        return not self.settings.trust.echo_unproven and strangers_words.words_unproven(ticket)

    def _names_withheld(self, note: Notification) -> bool:
        """Whether `note` names its customers only by names that proof gave them."""
        return note.audience is Audience.CUSTOMER and not self.settings.trust.echo_unproven

    @staticmethod
    def _our_own(session: Session, ticket: Ticket, answering: InReplyTo | None) -> InReplyTo | None:
        """`answering` with only the Message-IDs of our own mail: the others are words."""
        if answering is None:
            return None
        ids = strangers_words.our_own(
            session, ticket, [answering.message_id, *answering.references]
        )
        return InReplyTo(ids[-1], tuple(ids[:-1])) if ids else None

    def _render(
        self,
        note: Notification,
        to: Recipient,
        ticket: Ticket | None,
        language: str | None = None,
        *,
        withheld: bool = False,
    ) -> Rendered:
        """`note` for `to` in `language`, else the language its rule picks."""
        if (ticket is None) != (note.tie is Tie.UNTIED) and note.tie is not Tie.EITHER:
            raise ValueError(f"{note.template} is sent {note.tie}, ticket={ticket}")
        language = language or self.language(note, to, ticket)
        context = self.context(note, ticket, to, language, withheld=withheld or note.withholds())
        return self.renderer.render(note.template, language, context)

    def notify_each(
        self,
        session: Session,
        note: Notification,
        recipients: Sequence[Recipient],
        *,
        ticket: Ticket | None = None,
        answering: InReplyTo | None = None,
        attachments: Sequence[Attachment] = (),
    ) -> int:
        """`notify` each of `recipients` with a mail of their own (an agent's Reply-To
        is theirs alone), the outbox rows written in one statement; returns how many.

        A render that looked up no `recipient` is the same for everyone who reads its
        language: it is rendered, and its content composed, once for all of them.
        """
        rows: list[tuple[dict[str, Any], rawbytes.Raw]] = []
        written = 0
        attachments = tuple(sendable(a) for a in attachments)
        shared: dict[str, Rendered] = {}  # by language
        bodies: dict[Rendered, Body] = {}
        for to in recipients:
            language = self.language(note, to, ticket)
            rendered = shared.get(language) or self._render(note, to, ticket, language)
            if "recipient" not in rendered.reads:
                shared[language] = rendered
            rows.append(
                self._outbox_row(
                    session,
                    note.template,
                    rendered,
                    (to,),
                    ticket=ticket,
                    automatic=note.automatic,
                    for_agents=note.audience is Audience.AGENT,
                    answering=answering,
                    attachments=attachments,
                    bodies=bodies,
                )
            )
            if sum(rawbytes.size(raw) for _, raw in rows) >= _ROWS_BYTES:
                written += _insert_rows(session, rows)
        return written + _insert_rows(session, rows)

    def queue(
        self,
        session: Session,
        kind: str,
        rendered: Rendered,
        recipients: Sequence[Recipient],
        *,
        ticket: Ticket | None,
        automatic: bool,
        for_agents: bool,
        answering: InReplyTo | None = None,
        sender_name: str | None = None,
        attachments: Sequence[Attachment] = (),
        reply_to: str | None = None,
        topic: str | None = None,
    ) -> Queued:
        """Compose `rendered` as mail from the support address and write its outbox row
        (and, for a customer's ticket, its message), all in the caller's transaction.

        `topic`: its Thread-Topic when not the ticket's subject ("": none).
        Returns what identifies the queued mail.
        """
        values, pieces = self._outbox_row(
            session,
            kind,
            rendered,
            recipients,
            ticket=ticket,
            automatic=automatic,
            for_agents=for_agents,
            answering=answering,
            sender_name=sender_name,
            attachments=attachments,
            reply_to=reply_to,
            topic=topic,
        )
        # A Core insert: an ORM object per queued mail cost more than composing it.
        pk = _INSERT_OUTBOX.scalar(connection_of(session), values)
        raw = b"".join(pieces)  # what the caller gets (joined, as compose() does)
        rawbytes.write(session, [(pk, raw)], rawbytes.OUTBOX)
        return Queued(pk, values["message_id"], raw)

    def _outbox_row(
        self,
        session: Session,
        kind: str,
        rendered: Rendered,
        recipients: Sequence[Recipient],
        *,
        ticket: Ticket | None,
        automatic: bool,
        for_agents: bool,
        answering: InReplyTo | None = None,
        sender_name: str | None = None,
        attachments: Sequence[Attachment] = (),
        reply_to: str | None = None,
        bodies: dict[Rendered, Body] | None = None,
        topic: str | None = None,
    ) -> tuple[dict[str, Any], tuple[bytes, ...]]:
        """The composed mail: its outbox row's values and its bytes, in pieces (its ticket
        message, if any, is written now). `bodies`: content composed for earlier mails,
        by their render, whose bytes the pieces share."""
        first = recipients[0]
        now = self.clock.now()
        support = self.settings.support
        subject = rendered.subject
        if ticket is not None and (tag := self.tag(ticket)) not in subject:
            # The tag is what threads a reply whose headers were lost: keep it even
            # if an edited template forgot it.
            subject = f"{tag} {subject}"
        message_id = f"md.{new_token()}@{support.domain}"
        references: tuple[str, ...] = ()
        if answering:
            # A customer's client may write ids we cannot repeat safely: drop those.
            chain = (*answering.references, answering.message_id)
            references = tuple(r for r in chain if is_valid_msg_id(r))[-_MAX_REFERENCES:]
        if ticket is not None:
            reply_address: str | None = self.tokens.address(ticket.id, first.agent_id)
        else:
            reply_address = reply_to
        mail = OutgoingMail(
            message_id=message_id,
            sender=Address(support.address, sender_name or support.name),
            to=tuple(Address(r.email, r.name) for r in recipients),
            subject=subject,
            text=rendered.text,
            html=rendered.html,
            date=now,
            reply_to=Address(reply_address, support.name) if reply_address else None,
            in_reply_to=(
                answering.message_id
                if answering and is_valid_msg_id(answering.message_id)
                else None
            ),
            references=references,
            auto_submitted="auto-replied" if automatic else None,
            suppress_auto_replies=automatic or for_agents,
            loop_address=support.address if automatic or for_agents else "",
            thread_topic=(
                topic if topic is not None else ticket.subject if ticket is not None else ""
            ),
            thread_index=(
                thread_index(ticket.created_at, f"{ticket.id}@{support.domain}".encode(), now)
                if ticket is not None
                else ""
            ),
            attachments=tuple(sendable(a) for a in attachments),
        )
        body = bodies.get(rendered) if bodies is not None else None
        if body is None:
            body = compose_body(mail)
            if bodies is not None:
                bodies[rendered] = body
        # Unsigned: DKIM signs at sending (outbound/outbox.py), outside the write lock.
        pieces: tuple[bytes, ...] = compose_pieces(mail, body)
        # Mail to agents lives in the outbox only: the ticket's messages are the
        # conversation with the customer, not every copy sent to staff.
        if ticket is not None and not for_agents:
            Tickets(session).add_message(
                ticket,
                NewMessage(
                    message_id=message_id,
                    direction="out",
                    kind=kind,
                    from_addr=support.address,
                    from_name=sender_name or support.name,
                    subject=subject,
                    body_text=rendered.text,
                    created_at=now,
                    to_addrs=tuple(r.email for r in recipients),
                    references=references,
                    attachments=tuple((a.filename, a.content_type, a.data) for a in attachments),
                ),
            )
        # Only a customer's automatic mail about a ticket counts against the caps.
        counted = automatic and not for_agents and ticket is not None
        values: dict[str, Any] = {
            "ticket_id": ticket.id if ticket is not None else None,
            "message_id": message_id,
            "kind": kind,
            "sender": support.address,
            "recipients": [r.email for r in recipients],
            "auto_to": caps.mailbox(first.email) if counted else "",
            "state": OutboxState.PENDING,
            "attempts": 0,
            "next_attempt_at": now,
            "last_error": "",
            "created_at": now,
        }
        if counted and ticket is not None:
            # Towards the hourly total cap, in its lane, in the transaction that writes
            # the row (the row itself may be written a few mails later: `notify_each`).
            lane = caps.lane_of(first.email, proven=bool(ticket.sender_proven))
            caps.count_automatic(connection_of(session), now, lane)
        return values, pieces

    def context(
        self,
        note: Notification | None,
        ticket: Ticket | None,
        to: Recipient,
        language: str,
        *,
        withheld: bool | None = None,
    ) -> dict[str, Any]:
        """What a template renders with: the base context, then `note`'s own variables.

        Without a ticket, `ticket` is None and there is no `customer`. `withheld`: the
        mail repeats no word of the ticket's unproven first mail (None: as `note` says)."""
        if withheld is None:
            withheld = note is not None and note.withholds()
        support = self.settings.support
        base: dict[str, Any] = {
            "ticket": None,
            "recipient": {"email": to.email, "name": to.name},
            "support": {"name": support.name, "address": support.address, "url": support.base_url},
        }
        if ticket is not None:
            base["ticket"] = self._ticket(ticket, language)
            base["customer"] = {"email": ticket.requester.email, "name": ticket.requester.name}
            if withheld:
                # `to` is named as far as proof allows (`notify`).
                base["ticket"]["subject"] = ""
                base["ticket"]["requester_name"] = base["customer"]["name"] = to.name
            elif (
                note is not None
                and self._names_withheld(note)
                and strangers_words.unproven_name(ticket, ticket.requester.email)
            ):
                # A proven ticket handed to someone (`#requester`) whom a stranger named.
                base["ticket"]["requester_name"] = base["customer"]["name"] = ""
        return {**base, **(note.variables(language) if note is not None else {})}

    def _ticket(self, ticket: Ticket, language: str) -> dict[str, Any]:
        labels = STATUS_LABELS.get(language, STATUS_LABELS["en"])
        named = names(language)  # what agents read (i18n.py); customers read `labels`
        return {
            "number": ticket.id,
            "tag": self.tag(ticket),
            "subject": ticket.subject,
            "status": ticket.status,
            "status_label": labels[ticket.status],
            "status_labels": {lang: STATUS_LABELS[lang][ticket.status] for lang in STATUS_LABELS},
            "type": ticket.type or "",
            "priority": ticket.priority,
            "status_name": named.of("status", ticket.status),
            "type_name": named.of("type", ticket.type),
            "priority_name": named.of("priority", ticket.priority),
            "requester": ticket.requester.email,
            "requester_name": ticket.requester.name,
            "owner": ticket.owner.email if ticket.owner else "",
        }


def _insert_rows(session: Session, rows: list[tuple[dict[str, Any], rawbytes.Raw]]) -> int:
    """Write and forget `rows`, (values, bytes) each (as `Notifier.queue` does); how many."""
    count = len(rows)
    if rows:
        _INSERT_OUTBOX_ROWS.run_many(connection_of(session), [values for values, _ in rows])
        named = [(values["message_id"], raw) for values, raw in rows]
        rawbytes.write_named(session, named, rawbytes.OUTBOX)
        rows.clear()
    return count
