"""Notifications: a rendered template becomes an outbound message and an outbox row.

Both rows are written in the caller's transaction, so a notification exists
exactly when the ticket change that caused it does. Nothing is sent here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from maildesk.clock import Clock, new_token
from maildesk.config import Settings
from maildesk.models import STATUS_LABELS, Outbox, Ticket
from maildesk.outbound.compose import Address, OutgoingMail, compose, thread_index
from maildesk.outbound.headers import is_valid_msg_id
from maildesk.outbound.render import Renderer
from maildesk.tickets.service import NewMessage, Tickets
from maildesk.tickets.tokens import ReplyTokens

_MAX_REFERENCES = 20


@dataclass(frozen=True)
class Recipient:
    email: str
    name: str = ""


@dataclass(frozen=True)
class InReplyTo:
    """The message a notification answers, for the recipient's threading."""

    message_id: str
    references: tuple[str, ...] = ()


class Notifier:
    def __init__(
        self, settings: Settings, renderer: Renderer, tokens: ReplyTokens, clock: Clock
    ) -> None:
        self.settings = settings
        self.renderer = renderer
        self.tokens = tokens
        self.clock = clock

    def tag(self, ticket: Ticket) -> str:
        return f"[{self.settings.support.tag_prefix}{ticket.id}]"

    def auto_replies_in_last_hour(self, session: Session, recipient: str) -> int:
        since = self.clock.now() - timedelta(hours=1)
        query = select(func.count(Outbox.id)).where(
            Outbox.auto_to == recipient.lower(), Outbox.created_at > since
        )
        return session.scalar(query) or 0

    def notify(
        self,
        session: Session,
        ticket: Ticket,
        template: str,
        to: Recipient,
        *,
        language: str,
        answering: InReplyTo | None = None,
        automatic: bool = True,
        extra: dict[str, Any] | None = None,
    ) -> Outbox:
        """Render `template` for `to` and queue it as part of `ticket`."""
        now = self.clock.now()
        support = self.settings.support
        rendered = self.renderer.render(
            template, language, self._context(ticket, to, language, extra)
        )
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
            sender=Address(support.address, support.name),
            to=(Address(to.email, to.name),),
            subject=subject,
            text=rendered.text,
            html=rendered.html,
            date=now,
            reply_to=Address(self.tokens.address(ticket.id), support.name),
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
        )
        raw = compose(mail)
        Tickets(session).add_message(
            ticket,
            NewMessage(
                message_id=message_id,
                direction="out",
                kind=template,
                from_addr=support.address,
                from_name=support.name,
                subject=subject,
                body_text=rendered.text,
                created_at=now,
                to_addrs=(to.email,),
                references=references,
            ),
        )
        row = Outbox(
            ticket_id=ticket.id,
            message_id=message_id,
            kind=template,
            sender=support.address,
            recipients=[to.email],
            raw=raw,
            auto_to=to.email.lower() if automatic else "",
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
        support = self.settings.support
        return {
            "ticket": {
                "number": ticket.id,
                "tag": self.tag(ticket),
                "subject": ticket.subject,
                "status": ticket.status,
                "status_label": labels[ticket.status],
                "type": ticket.type or "",
                "priority": ticket.priority,
            },
            "customer": {"email": to.email, "name": to.name},
            "support": {"name": support.name, "address": support.address, "url": support.base_url},
            **(extra or {}),
        }
