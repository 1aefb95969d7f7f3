"""Tickets as plain data: the JSON shape of `tickets list/show/export --json`."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from maildesk.clock import as_utc
from maildesk.models import Blob, Event, Message, Ticket
from maildesk.redaction import redact_links


def iso(moment: datetime | None) -> str | None:
    return as_utc(moment).isoformat() if moment else None


def summary(ticket: Ticket, message_count: int) -> dict[str, Any]:
    return {
        "number": ticket.id,
        "subject": ticket.subject,
        "status": ticket.status,
        "type": ticket.type,
        "priority": ticket.priority,
        "requester": ticket.requester.email,
        "requester_name": ticket.requester.name,
        "language": ticket.language,
        "previous": ticket.previous_id,
        "owner": ticket.owner.email if ticket.owner else None,
        "channel": ticket.channel,
        "paid": ticket.paid_state,
        "created_at": iso(ticket.created_at),
        "updated_at": iso(ticket.updated_at),
        "message_count": message_count,
    }


def message_view(message: Message) -> dict[str, Any]:
    return {
        "message_id": message.message_id,
        "direction": message.direction,
        "kind": message.kind,
        "from": message.from_addr,
        "from_name": message.from_name,
        "to": list(message.to_addrs),
        "cc": list(message.cc_addrs),
        "subject": message.subject,
        # Our acknowledgement's set-password link is stored as sent: shown, printed or
        # exported, it would let whoever reads it take the customer's account.
        "body_text": redact_links(message.body_text),
        "created_at": iso(message.created_at),
        "attachments": [
            {
                "filename": a.filename,
                "content_type": a.content_type,
                "size": a.size,
                "sha256": a.blob_sha256,
            }
            for a in message.attachments
        ],
        "thread_rule": message.thread_rule,
        "internal": message.internal,
        "flag": message.flag,
        "proof": message.proof,
    }


def event_view(event: Event) -> dict[str, Any]:
    return {
        "at": iso(event.at),
        "actor": event.actor,
        "field": event.field,
        "old": event.old,
        "new": event.new,
        "via": event.via,
    }


def detail(ticket: Ticket) -> dict[str, Any]:
    messages = list(ticket.messages)
    return {
        **summary(ticket, len(messages)),
        "messages": [message_view(m) for m in messages],
        "events": [event_view(e) for e in ticket.events],
    }


def list_tickets(session: Session, status: str | None = None) -> list[dict[str, Any]]:
    counts = (
        select(Message.ticket_id, func.count(Message.id).label("n"))
        .group_by(Message.ticket_id)
        .subquery()
    )
    query = (
        select(Ticket, func.coalesce(counts.c.n, 0))
        .outerjoin(counts, counts.c.ticket_id == Ticket.id)
        .order_by(Ticket.id)
    )
    if status:
        query = query.where(Ticket.status == status)
    return [summary(ticket, n) for ticket, n in session.execute(query)]


def add_attachment_contents(session: Session, record: dict[str, Any]) -> None:
    """Add `content_base64` to every attachment of an exported ticket (one query)."""
    wanted = {a["sha256"] for m in record["messages"] for a in m["attachments"]}
    if not wanted:
        return
    query = select(Blob.sha256, Blob.data).where(Blob.sha256.in_(wanted))
    blobs = {sha: data for sha, data in session.execute(query)}
    for message in record["messages"]:
        for attachment in message["attachments"]:
            data = blobs.get(attachment["sha256"], b"")
            attachment["content_base64"] = base64.b64encode(data).decode("ascii")


def export(session: Session, batch: int = 200) -> Iterator[dict[str, Any]]:
    """Every ticket with its messages, in number order, without loading all at once."""
    last = 0
    while True:
        tickets = session.scalars(
            select(Ticket)
            .where(Ticket.id > last)
            .order_by(Ticket.id)
            .limit(batch)
            .options(
                selectinload(Ticket.messages).selectinload(Message.attachments),
                selectinload(Ticket.events),
            )
        ).all()
        if not tickets:
            return
        for ticket in tickets:
            yield detail(ticket)
        last = tickets[-1].id
        session.expunge_all()
