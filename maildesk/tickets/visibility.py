"""Which tickets and messages a customer may see: one rule for every page and search.

A person sees the tickets they take part in (as requester or in Cc) and, once
an admin created the organization of their e-mail domain, every ticket a
colleague of that domain requested and proved: its first mail proved its From
(DKIM, our MTA), or the requester's own mail proved her since (signed, written from
the portal, or answering our mail in a ticket nobody else takes part in: a
participant holds its reply address too, and may write her From above it). A
stranger writes any colleague's From: their unproven ticket is no text for the
whole organization to trust. Free-mail domains never group people
(`accounts.organization_of` decides the domain). Of a ticket, a customer sees
only public messages: never internal notes, agent mail, bounces or messages
held for a second look.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, exists, or_, select, union
from sqlalchemy.orm import aliased

from maildesk.models import Message, Participant, Person, Ticket

PUBLIC = and_(Message.internal.is_(False), Message.kind != "bounce", Message.flag == "")


@dataclass(frozen=True)
class Scope:
    """Whose tickets one person may see."""

    person_id: int
    org_domain: str | None

    def condition(self) -> ColumnElement[bool]:
        mine = exists().where(
            Participant.ticket_id == Ticket.id, Participant.person_id == self.person_id
        )
        if self.org_domain is None:
            return mine
        return or_(mine, and_(Ticket.requester_id.in_(self.colleagues()), _proven()))

    def ticket_ids(self) -> Select[Any]:
        """The same rule as `condition`, as a set of ticket ids (starts from the person)."""
        mine = select(Participant.ticket_id).where(Participant.person_id == self.person_id)
        if self.org_domain is None:
            return mine
        theirs = select(Ticket.id).where(Ticket.requester_id.in_(self.colleagues()), _proven())
        return select(union(mine, theirs).subquery().c[0])

    def colleagues(self) -> Select[Any]:
        # An alias, so the subquery never correlates with a Person of the outer query.
        person = aliased(Person)
        return select(person.id).where(person.domain == (self.org_domain or ""))


def _proven() -> ColumnElement[bool]:
    """The ticket's requester proved it theirs: its first mail, or one of theirs since
    (`trust.proves_requester`, kept as `Ticket.sender_proven`)."""
    return Ticket.sender_proven.is_(True)
