"""The ticket life from the support policy, and the record of every change.

    new → accepted → waiting_customer → resolved → closed

Every change of status, type, priority, owner or payment goes through
`Lifecycle.change`, which writes an `Event` (who, when, how) in the caller's
transaction. The rules for what a reply does live here too, so that mail,
the web and the scheduler all move tickets the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from maildesk.db import rare
from maildesk.models import Agent, Event, Message, Ticket
from maildesk.replies import has_word, is_only_thanks
from maildesk.states import TicketStatus

# Words a customer may reply with; the templates suggest them. Both languages
# are always understood, whatever the customer's language.
CONFIRM_WORDS = ("POTVRZUJI", "CONFIRM")
APPROVE_WORDS = ("SCHVALUJI", "APPROVE")
DECLINE_WORDS = ("ODMITAM", "DECLINE")

OPEN_STATUSES = (TicketStatus.NEW, TicketStatus.ACCEPTED, TicketStatus.WAITING_CUSTOMER)


def paid_question(ticket: Ticket, round: int) -> str:
    """Where the paid-work question of `round` stands: "open" (it may be answered),
    "answered", or "superseded" (a newer #paid made it a dead one)."""
    if ticket.paid_round != round:
        return "superseded"
    return "open" if ticket.paid_state == "pending" else "answered"


def only_agrees(text: str) -> bool:
    """Whether a customer's new text says nothing but thanks or CONFIRM: it closes a
    resolved ticket, and it reopens no closed one ("Thanks!" to the closed notice)."""
    return has_word(text, CONFIRM_WORDS) or is_only_thanks(text)


def suggested_word(words: tuple[str, str], language: str) -> str:
    """The word a template suggests: Czech first in the tuple, English second."""
    return words[0] if language == "cs" else words[1]


@dataclass(frozen=True)
class Change:
    field: str
    old: str | None
    new: str | None


class Lifecycle:
    def __init__(self, session: Session, now: datetime) -> None:
        self.session = session
        self.now = now

    def change(
        self, ticket: Ticket, field: str, new: str | None, actor: str, via: str
    ) -> Change | None:
        """Set one field and record the event; None when nothing changed.

        Closing many tickets at once (`cleanup._close`) does what this does for a
        status of closed, in set-based statements: a change here belongs there too."""
        old = _field_value(ticket, field)
        if old == new:
            return None
        if field == "status":
            ticket.status = new or TicketStatus.NEW
            if new == TicketStatus.RESOLVED:
                ticket.resolved_at = self.now
            if new == TicketStatus.CLOSED:
                ticket.closed_at = self.now
            if new in OPEN_STATUSES:
                ticket.closed_at = None
                ticket.resolved_at = None
        elif field == "type":
            ticket.type = new
        elif field == "priority":
            ticket.priority = new or "normal"
        elif field == "language":  # #lang: what the customer reads from now on
            ticket.language = new or ticket.language
        elif field == "owner":
            ticket.owner_id = _agent_id(self.session, new)
            self.session.flush()
            self.session.expire(ticket, ["owner"])
        elif field == "paid":
            ticket.paid_state = new
            if new == "pending":  # a new question: older links and answers stop counting
                ticket.paid_round = (ticket.paid_round or 0) + 1
        else:  # pragma: no cover - a programming error, not input
            raise ValueError(f"unknown ticket field {field}")
        return self.record(ticket, field, old, new, actor, via)

    def record(
        self, ticket: Ticket, field: str, old: str | None, new: str | None, actor: str, via: str
    ) -> Change:
        """Record a change made to `ticket` (by `change`, or by `Tickets.hand_over`)."""
        ticket.updated_at = self.now
        self.session.add(
            Event(
                ticket_id=ticket.id,
                at=self.now,
                actor=actor,
                field=field,
                # An address may be longer than the column: the event names it, cut.
                old=None if old is None else old[:200],
                new=None if new is None else new[:200],
                via=via,
            )
        )
        return Change(field, old, new)

    def agent_acted(self, ticket: Ticket, agent: Agent, via: str) -> None:
        """The first agent to act on a new ticket accepts it and, if unassigned, owns it."""
        if ticket.owner_id is None:
            self.change(ticket, "owner", agent.email, agent.email, via)
        if ticket.status == TicketStatus.NEW:
            self.change(ticket, "status", TicketStatus.ACCEPTED, agent.email, via)

    def agent_replied(self, ticket: Ticket, agent: Agent, via: str) -> None:
        """A reply without #status means the ball is in the customer's court."""
        if ticket.status in (TicketStatus.NEW, TicketStatus.ACCEPTED):
            self.change(ticket, "status", TicketStatus.WAITING_CUSTOMER, agent.email, via)

    def customer_replied(
        self,
        ticket: Ticket,
        text: str,
        actor: str,
        answers: Sequence[str] = (),
        verified: bool = True,
        *,
        by_requester: bool = False,
    ) -> str:
        """Move the ticket for a customer's reply; returns what the reply meant.

        "approved"/"declined" answer a paid-work notice; "confirmed" closes a
        resolved ticket; "disputed" reopens it; "reply" is anything else.
        `answers` are the Message-IDs the reply names (In-Reply-To, References).
        Unverified mail (README "Trust") only ever draws the agents back: it may
        dispute a resolution or end a wait, never approve, decline or confirm. Paid
        work is the requester's to approve or decline: the notice went to them alone,
        and a participant's (or an organization colleague's) APPROVE is only a reply.
        `by_requester`: the mail proves the requester wrote it (`trust.proves_requester`):
        her From written above the ticket's reply address, which every participant
        holds, is not proof of that.
        """
        paid_question = ticket.paid_state == "pending"
        if by_requester and paid_question and self.answers_current_round(ticket, answers):
            if has_word(text, APPROVE_WORDS):
                return self.answer_paid(ticket, True, actor, "mail")
            if has_word(text, DECLINE_WORDS):
                return self.answer_paid(ticket, False, actor, "mail")
        if ticket.status == TicketStatus.RESOLVED:
            if only_agrees(text):
                if not verified:
                    return "reply"
                self.change(ticket, "status", TicketStatus.CLOSED, actor, "mail")
                return "confirmed"
            self.change(ticket, "status", TicketStatus.ACCEPTED, actor, "mail")
            return "disputed"
        if ticket.status == TicketStatus.WAITING_CUSTOMER and ticket.paid_state != "pending":
            self.change(ticket, "status", TicketStatus.ACCEPTED, actor, "mail")
        return "reply"

    def answer_paid(self, ticket: Ticket, approve: bool, actor: str, via: str) -> str:
        """The customer answers the open paid-work question (by mail or the web link):
        record it and put the ticket back to work. Returns "approved" or "declined"."""
        state = "approved" if approve else "declined"
        self.change(ticket, "paid", state, actor, via)
        self.change(ticket, "status", TicketStatus.ACCEPTED, actor, via)
        return state

    def answers_current_round(self, ticket: Ticket, answers: Sequence[str]) -> bool:
        """Whether a mail naming `answers` may answer the paid-work question open now.

        A reply to an earlier round's notice (say, a late APPROVE of a declined
        100 EUR request) never answers a newer one; a mail naming no notice at
        all can only mean the question open now.
        """
        notices = list(
            self.session.scalars(
                select(Message.message_id)
                .where(
                    Message.ticket_id == ticket.id,
                    Message.direction == "out",
                    Message.kind == "paid_notice",
                )
                .order_by(Message.id.desc())
            )
        )
        named = set(answers).intersection(notices)
        return not named or notices[0] in named

    def autoclose_candidates(self, days: int, limit: int = 100) -> list[Ticket]:
        """Resolved tickets nobody disputed for `days`, locked for this transaction."""
        cutoff = self.now - timedelta(days=days)
        return list(
            self.session.scalars(
                select(Ticket)
                .where(rare(Ticket.status == TicketStatus.RESOLVED), Ticket.resolved_at <= cutoff)
                .order_by(Ticket.id)
                .limit(limit)
                .with_for_update(of=Ticket, skip_locked=True)
            )
        )


def _field_value(ticket: Ticket, field: str) -> str | None:
    if field == "owner":
        return ticket.owner.email if ticket.owner else None
    if field == "paid":
        return ticket.paid_state
    value = getattr(ticket, field)
    return str(value) if value is not None else None


def _agent_id(session: Session, email: str | None) -> int | None:
    if email is None:
        return None
    agent = session.scalar(select(Agent).where(Agent.email == email.lower()))
    if agent is None:
        raise ValueError(f"{email} is not an agent")
    return agent.id
