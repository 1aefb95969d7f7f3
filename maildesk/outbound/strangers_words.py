"""Whose words a customer's mail may repeat: never those of mail that proved nothing.

Our mail to a ticket's customer goes to the address in its first mail's From,
whoever wrote it. When that mail proved nothing (no DKIM, no MTA verdict),
its subject, its display name and its Message-ID are a stranger's words: "Your
account is locked, call +1 555 0100" as the subject, "Call +1 555 0100" as
the name. The acknowledgement withheld them; the mails after it (an agent's
`#status closed` on what looked like spam, an answer, a paid-work notice)
repeated them to the victim, signed by our domain. They are withheld from
every mail to the customer until the ticket's words are its requester's: the
first mail proved its From, or mail since proved her the writer (`Ticket.sender_proven`,
as an organization's colleagues see it: `tickets/visibility.py`), unless
`[trust] echo_unproven`. A participant's mail proves nothing of hers: whoever holds
the ticket's reply address may write her From above it (`trust.proves_requester`).
Nor does any mail to a ticket's customers name someone by a name that mail without
proof gave them (`unproven_names`), whichever ticket that mail opened.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from maildesk.models import Message, Person, Ticket
from maildesk.states import NameSource


def words_unproven(ticket: Ticket) -> bool:
    """Whether `ticket`'s subject and its requester's name may be a stranger's words."""
    return not ticket.sender_proven


def unproven_name(ticket: Ticket, email: str) -> bool:
    """Whether the name we hold for `email` in `ticket` is one mail without proof gave."""
    requester = ticket.requester
    return email == requester.email and requester.name_source == NameSource.UNPROVEN


def unproven_names(session: Session, ticket: Ticket | None, emails: Sequence[str]) -> set[str]:
    """Those of `emails` (of `ticket`'s people, if the mail is about one) whose name we
    hold is one mail without proof gave. A stranger who writes first From someone new
    names them (`Tickets.person`), and the name stays until their own mail proves them:
    when she was copied into another customer's ticket later, our mail to it went To
    `"Call +1 555 0100" <carol@…>`, to her and to that customer; and the set-password
    link anyone may have the portal mail her greeted her so."""
    found = {email for email in emails if ticket is not None and unproven_name(ticket, email)}
    requester = ticket.requester.email if ticket is not None else None
    others = [email for email in emails if email != requester]
    if others:
        found.update(
            session.scalars(
                select(Person.email).where(
                    Person.email.in_(others),
                    Person.name_source == NameSource.UNPROVEN,
                    Person.name != "",
                )
            )
        )
    return found


def our_own(session: Session, ticket: Ticket, ids: Sequence[str]) -> list[str]:
    """Those of `ids` that are Message-IDs of our own mail in `ticket`, in their order
    (a stranger's Message-ID is a word of theirs too: `<Call.1-555-0100@…>`)."""
    if not ids:
        return []
    ours = set(
        session.scalars(
            select(Message.message_id).where(
                Message.ticket_id == ticket.id,
                Message.direction == "out",
                Message.message_id.in_(ids),
            )
        )
    )
    return [mid for mid in ids if mid in ours]
