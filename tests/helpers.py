"""Helpers for tests that drive the pipeline without sockets."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from maildesk.inbound.store import Envelope
from maildesk.models import Inbound, Outbox, Ticket
from maildesk.services import Services
from maildesk.tickets import views


def receive(
    services: Services,
    raw: bytes,
    mail_from: str = "alice@customer.test",
    rcpt_to: tuple[str, ...] = ("support@example.test",),
    source: str = "smtp",
    notify: bool = True,
) -> int:
    """Store a message as a route would, then run the pipeline; returns the spool id."""
    spool_id = services.store.put(raw, Envelope(source, mail_from, rcpt_to, notify))
    services.drain_inbound()
    return spool_id


def ticket(services: Services, number: int) -> dict[str, Any]:
    with services.db.transaction() as session:
        found = session.get(Ticket, number)
        assert found is not None, f"no ticket {number}"
        return views.detail(found)


def tickets(services: Services) -> list[dict[str, Any]]:
    with services.db.transaction() as session:
        return views.list_tickets(session)


def outbox_rows(services: Services) -> list[Outbox]:
    with services.db.transaction() as session:
        # The bytes too (`Outbox.raw`), which the daemon itself only reads in slices.
        query = select(Outbox).options(selectinload(Outbox.body)).order_by(Outbox.id)
        return list(session.scalars(query))


def inbound_row(services: Services, spool_id: int) -> Inbound:
    with services.db.transaction() as session:
        row = session.get(Inbound, spool_id)
        assert row is not None
        return row
