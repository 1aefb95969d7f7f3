"""Notifications: a rendered template becomes an outbound message and an outbox row.

Both rows are written in the caller's transaction, so a notification exists
exactly when the ticket change that caused it does. Nothing is sent here.
Mail to customers and mail to agents differ in their Reply-To (an agent's is
bound to that agent) and in visibility (agent mail is internal).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from maildesk.clock import Clock, new_token
from maildesk.config import Settings
from maildesk.i18n import names
from maildesk.models import STATUS_LABELS, Outbox, Ticket
from maildesk.outbound.compose import Address, Attachment, OutgoingMail, compose, thread_index
from maildesk.outbound.headers import is_valid_msg_id
from maildesk.outbound.render import Renderer
from maildesk.tickets.service import NewMessage, Tickets
from maildesk.tickets.tokens import ReplyTokens

_MAX_REFERENCES = 20
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
        signer: Callable[[bytes], bytes] | None = None,
    ) -> None:
        self.settings = settings
        self.renderer = renderer
        self.tokens = tokens
        self.clock = clock
        self.signer = signer  # DKIM (outbound/dkim.py): applied to the composed bytes

    def tag(self, ticket: Ticket) -> str:
        return f"[{self.settings.support.tag_prefix}{ticket.id}]"

    def auto_replies_in_last_hour(self, session: Session, recipient: str) -> int:
        since = self.clock.now() - timedelta(hours=1)
        query = select(func.count(Outbox.id)).where(
            Outbox.auto_to == recipient.lower(), Outbox.created_at > since
        )
        return session.scalar(query) or 0

    def all_auto_replies_in_last_hour(self, session: Session) -> int:
        """Automatic replies to anyone at all, for the global cap."""
        since = self.clock.now() - timedelta(hours=1)
        query = select(func.count(Outbox.id)).where(Outbox.created_at > since, Outbox.auto_to != "")
        return session.scalar(query) or 0

    def notify(
        self,
        session: Session,
        ticket: Ticket,
        template: str,
        to: Recipient | Sequence[Recipient],
        *,
        language: str,
        answering: InReplyTo | None = None,
        automatic: bool = True,
        extra: dict[str, Any] | None = None,
        sender_name: str | None = None,
        attachments: Sequence[Attachment] = (),
    ) -> Outbox:
        """Render `template` for `to` and queue it as part of `ticket`."""
        recipients = (to,) if isinstance(to, Recipient) else tuple(to)
        first = recipients[0]
        now = self.clock.now()
        support = self.settings.support
        context = self._context(ticket, first, language, extra)
        rendered = self.renderer.render(template, language, context)
        tag = self.tag(ticket)
        # The tag is what threads a reply whose headers were lost: keep it even
        # if an edited template forgot it.
        subject = rendered.subject if tag in rendered.subject else f"{tag} {rendered.subject}"
        message_id = f"md.{new_token()}@{support.domain}"
        references: tuple[str, ...] = ()
        if answering:
            # A customer's client may write ids we cannot repeat safely: drop those.
            chain = (*answering.references, answering.message_id)
            references = tuple(r for r in chain if is_valid_msg_id(r))[-_MAX_REFERENCES:]
        mail = OutgoingMail(
            message_id=message_id,
            sender=Address(support.address, sender_name or support.name),
            to=tuple(Address(r.email, r.name) for r in recipients),
            subject=subject,
            text=rendered.text,
            html=rendered.html,
            date=now,
            reply_to=Address(self.tokens.address(ticket.id, first.agent_id), support.name),
            in_reply_to=(
                answering.message_id
                if answering and is_valid_msg_id(answering.message_id)
                else None
            ),
            references=references,
            auto_submitted="auto-replied" if automatic else None,
            thread_topic=ticket.subject,
            thread_index=thread_index(
                ticket.created_at, f"{ticket.id}@{support.domain}".encode(), now
            ),
            attachments=tuple(sendable(a) for a in attachments),
        )
        raw = compose(mail)
        if self.signer is not None:
            raw = self.signer(raw)
        for_agents = first.agent_id is not None
        # Mail to agents lives in the outbox only: the ticket's messages are the
        # conversation with the customer, not every copy sent to staff.
        if not for_agents:
            Tickets(session).add_message(
                ticket,
                NewMessage(
                    message_id=message_id,
                    direction="out",
                    kind=template,
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
        row = Outbox(
            ticket_id=ticket.id,
            message_id=message_id,
            kind=template,
            sender=support.address,
            recipients=[r.email for r in recipients],
            raw=raw,
            auto_to=first.email.lower() if automatic and not for_agents else "",
            state="pending",
            attempts=0,
            next_attempt_at=now,
            last_error="",
            created_at=now,
        )
        session.add(row)
        return row

    def notify_untied(
        self,
        session: Session,
        ticket: Ticket | None,
        template: str,
        to: Recipient,
        *,
        language: str,
        answering: InReplyTo | None,
        extra: dict[str, Any],
        reply_to: str | None = None,
    ) -> Outbox:
        """A notification that may belong to no ticket (an agent's mail that answered none).

        `reply_to` (untied mail only): a signed address of ours that a reply should reach,
        e.g. a console confirmation's; without it replies go to the support address.
        """
        if ticket is not None:
            return self.notify(
                session, ticket, template, to, language=language, answering=answering, extra=extra
            )
        now = self.clock.now()
        support = self.settings.support
        context = {
            "ticket": None,
            "recipient": {"email": to.email, "name": to.name},
            "support": {"name": support.name, "address": support.address, "url": support.base_url},
            **extra,
        }
        rendered = self.renderer.render(template, language, context)
        message_id = f"md.{new_token()}@{support.domain}"
        valid = answering is not None and is_valid_msg_id(answering.message_id)
        raw = compose(
            OutgoingMail(
                message_id=message_id,
                sender=Address(support.address, support.name),
                to=(Address(to.email, to.name),),
                subject=rendered.subject,
                text=rendered.text,
                html=rendered.html,
                date=now,
                reply_to=Address(reply_to, support.name) if reply_to else None,
                in_reply_to=answering.message_id if answering and valid else None,
                references=(answering.message_id,) if answering and valid else (),
                auto_submitted="auto-replied",
            )
        )
        if self.signer is not None:
            raw = self.signer(raw)
        row = Outbox(
            ticket_id=None,
            message_id=message_id,
            kind=template,
            sender=support.address,
            recipients=[to.email],
            raw=raw,
            auto_to="",
            state="pending",
            attempts=0,
            next_attempt_at=now,
            last_error="",
            created_at=now,
        )
        session.add(row)
        return row

    def _context(
        self, ticket: Ticket, to: Recipient, language: str, extra: dict[str, Any] | None
    ) -> dict[str, Any]:
        labels = STATUS_LABELS.get(language, STATUS_LABELS["en"])
        named = names(language)  # what agents read (i18n.py); customers read `labels`
        support = self.settings.support
        return {
            "ticket": {
                "number": ticket.id,
                "tag": self.tag(ticket),
                "subject": ticket.subject,
                "status": ticket.status,
                "status_label": labels[ticket.status],
                "status_labels": {
                    lang: STATUS_LABELS[lang][ticket.status] for lang in STATUS_LABELS
                },
                "type": ticket.type or "",
                "priority": ticket.priority,
                "status_name": named.of("status", ticket.status),
                "type_name": named.of("type", ticket.type),
                "priority_name": named.of("priority", ticket.priority),
                "requester": ticket.requester.email,
                "requester_name": ticket.requester.name,
                "owner": ticket.owner.email if ticket.owner else "",
            },
            "recipient": {"email": to.email, "name": to.name},
            "customer": {"email": ticket.requester.email, "name": ticket.requester.name},
            "support": {"name": support.name, "address": support.address, "url": support.base_url},
            **(extra or {}),
        }
