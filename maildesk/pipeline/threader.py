"""Which ticket a message belongs to, by explicit rules in a fixed order.

1. references  — In-Reply-To/References name a message maildesk stored or sent,
                 or a stored message names this one (the reply came first);
2. reply_token — a recipient is a valid signed reply address of a ticket;
3. subject_tag — "[#N]" in the subject, only from a participant of N or an agent:
                 a guessed number must not let a stranger into someone's ticket;
4. new         — none of the above.
The rule that matched is recorded on the message so a wrong merge can be explained.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from maildesk.message import ParsedMessage
from maildesk.models import Ticket
from maildesk.tickets.service import Tickets
from maildesk.tickets.tokens import ReplyTokens


@dataclass(frozen=True)
class Match:
    ticket: Ticket | None
    rule: str  # references | reply_token | subject_tag | new


class Threader:
    def __init__(self, tokens: ReplyTokens, tag_prefix: str) -> None:
        self.tokens = tokens
        self.tag = re.compile(rf"\[{re.escape(tag_prefix)}(\d{{1,12}})\]")

    def match(
        self,
        tickets: Tickets,
        message: ParsedMessage,
        rcpt_to: Iterable[str],
        proven_agent: object | None = None,
    ) -> Match:
        ticket = tickets.by_message_ids(message.thread_ids) or tickets.referencing(
            message.message_id
        )
        if ticket is not None:
            return Match(ticket, "references")
        for address in (*rcpt_to, *message.to, *message.cc):
            number = self.tokens.ticket_number(address)
            if number is not None and (ticket := tickets.get(number)) is not None:
                return Match(ticket, "reply_token")
        for found in self.tag.finditer(message.subject):
            ticket = tickets.get(int(found.group(1)))
            if ticket is not None and (
                proven_agent is not None or tickets.is_participant(ticket.id, message.from_addr)
            ):
                return Match(ticket, "subject_tag")
        return Match(None, "new")
