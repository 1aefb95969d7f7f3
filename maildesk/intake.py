"""Opening a ticket on a customer's behalf: the hotline, or an agent at the CLI.

The customer gets the acknowledgement as if they had written; a critical
ticket alerts every agent at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from maildesk.tickets.lifecycle import Lifecycle
from maildesk.tickets.service import NewMessage, Tickets

if TYPE_CHECKING:
    from maildesk.services import Services


def create_ticket(
    services: Services,
    customer: str,
    subject: str,
    *,
    priority: str = "normal",
    channel: str = "phone",
    description: str = "",
    actor: str = "cli",
) -> int:
    """Open a ticket for `customer`, acknowledge it, return its number."""
    settings = services.settings
    with services.db.transaction() as session:
        now = services.clock.now()
        tickets = Tickets(session)
        person = tickets.person(customer, "", now)
        ticket = tickets.open(person, subject, person.language or settings.support.language, now)
        ticket.channel = channel
        if description:
            tickets.add_message(
                ticket,
                NewMessage(
                    message_id=f"intake.{ticket.id}@{settings.support.domain}",
                    direction="in",
                    kind="note",
                    from_addr=actor if "@" in actor else settings.support.address,
                    from_name="",
                    subject=subject,
                    body_text=description,
                    created_at=now,
                    internal=True,
                ),
            )
        Lifecycle(session, now).change(ticket, "priority", priority, actor, "cli")
        services.notices.acknowledge(session, ticket, answering=None)
        if priority == "critical":
            services.notices.to_agents(
                session, ticket, "critical", None, everyone=True, text=description
            )
        return ticket.id
