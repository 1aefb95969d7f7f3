"""Bounces: file a delivery failure with the ticket of the mail it bounces.

The bounced mail is found only by a Message-ID maildesk minted that the report
quotes (its message/rfc822 or text/rfc822-headers part) or answers: only a
mail system that really received our mail knows one. A report naming a failed
address and nothing of ours is not filed anywhere (it goes to quarantine), and a
bounce's own Message-ID and References never become threading keys, so a forged
report cannot lead anyone into a customer's ticket. A permanent failure marks
that outbox row `bounced` if it was sent (never one still to send); a delay
warning ("Action: delayed") is filed but changes nothing, since the MTA is still
trying.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from maildesk import logs
from maildesk.message import ParsedMessage
from maildesk.models import Outbox
from maildesk.states import OutboxState
from maildesk.tickets.service import NewMessage, Tickets

# What it did is logged once its transaction committed (logs.transactional).
log = logs.transactional("maildesk.pipeline")


def bounced_mail(session: Session, message: ParsedMessage) -> Outbox | None:
    candidates = (*message.thread_ids, *message.quoted_message_ids)
    if not candidates:
        return None
    return session.scalar(
        select(Outbox).where(Outbox.message_id.in_(candidates)).order_by(Outbox.id.desc())
    )


def record_bounce(
    session: Session, tickets: Tickets, inbound_id: int, message: ParsedMessage, now: datetime
) -> bool:
    """File the bounce; False when it bounces nothing maildesk sent."""
    outbox = bounced_mail(session, message)
    ticket = tickets.get(outbox.ticket_id) if outbox and outbox.ticket_id else None
    if outbox is None or ticket is None:
        return False
    # Only mail that went out can have bounced: a report naming a row still waiting
    # (a forged one, or a real one for an attempt being retried) filed it `bounced`,
    # and it was never sent. Its ids are in every later mail's References.
    if message.bounced_recipients and outbox.state == OutboxState.SENT:
        outbox.state = OutboxState.BOUNCED
        outbox.last_error = "bounced: " + ", ".join(sorted(message.bounced_recipients))
    tickets.add_message(
        ticket,
        NewMessage(
            message_id=message.message_id,
            direction="in",
            kind="bounce",
            from_addr=message.from_addr,
            from_name=message.from_name,
            subject=message.subject,
            body_text=message.text,
            created_at=now,
            to_addrs=message.to,
            thread_rule="references",
            inbound_id=inbound_id,
        ),
    )
    log.info("inbound %d: bounce for outbox %d (ticket %d)", inbound_id, outbox.id, ticket.id)
    return True
