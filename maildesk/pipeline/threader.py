"""Which ticket a message belongs to, by explicit rules in a fixed order.

1. references  — In-Reply-To/References name a threading key of a ticket (a
                 Message-ID maildesk minted, or one its proven correspondents sent:
                 see `Tickets.thread_key`), or such a stored message names this one
                 (the reply came first), written by this mail's sender into her own
                 ticket or by someone this mail was addressed to;
2. reply_token — a recipient is a valid signed reply address of a ticket;
3. subject_tag — "[#N]" in the subject, only from a participant of N or an agent:
                 a guessed number must not let a stranger into someone's ticket;
4. new         — none of the above.
The rule that matched is recorded on the message so a wrong merge can be explained.
`Match.secret` says whether the match rests on something only our correspondents
hold (a signed reply address or a Message-ID we minted): a From header and a
subject are words anyone can write.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from maildesk.mailauth import Authentication
from maildesk.message import ParsedMessage
from maildesk.models import Ticket
from maildesk.tickets.service import Tickets
from maildesk.tickets.tokens import ReplyTokens


@dataclass(frozen=True)
class Match:
    ticket: Ticket | None
    rule: str  # references | reply_token | subject_tag | new
    secret: bool = False
    # The header fields whose words named the ticket (a signature must cover them for
    # a proven From to act on it: trust.py); a reply token is its own proof.
    named_by: tuple[str, ...] = ()
    # The Subject's tag names the same ticket: another way the mail names it.
    tagged: bool = False
    # A reply to this mail was stored first and led it to the reply's ticket.
    reply_came_first: bool = False

    def named_under(self, proof: Authentication) -> bool:
        """Whether `proof` covers a way the mail names its ticket: the fields that
        matched, or the Subject's tag (Microsoft 365 signs a Subject, no In-Reply-To)."""
        if proof.vouches_for_all(self.named_by):
            return True
        return self.tagged and proof.vouches_for("subject")


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
        *,
        archive: bool = False,
    ) -> Match:
        """`archive`: the mail is from an archive ops import, whose replies may come
        before their originals in any order: any stored reply leads its original."""
        signed = [
            token
            for address in (*rcpt_to, *message.to, *message.cc)
            if (token := self.tokens.parse(address)) is not None
        ]
        # An agent's token (`t42a3`) threads, but proves only that agent (authenticity.py):
        # as a customer's secret it would let a former agent, or whoever an agent
        # forwarded a notification to, write into the ticket and copy people in.
        secrets = {token.ticket for token in signed if token.agent is None}
        key = tickets.thread_key(message.thread_ids, message.from_addr)
        if key is not None:
            secret = key.minted or key.ticket_id in secrets
            tagged = self._tags(message.subject, key.ticket_id)
            keyed = tickets.get(key.ticket_id)
            return Match(keyed, "references", secret, _THREAD_FIELDS, tagged)
        addressed = (*message.to, *message.cc)
        answered = tickets.referencing(
            message.message_id, message.from_addr, addressed, any_writer=archive
        )
        if answered is not None:
            referenced = tickets.get(answered)
            tagged = self._tags(message.subject, answered)
            secret = answered in secrets
            named_by = ("message-id",)
            return Match(referenced, "references", secret, named_by, tagged, True)
        for token in signed:
            if (ticket := tickets.get(token.ticket)) is not None:
                return Match(ticket, "reply_token", secret=token.ticket in secrets)
        for number in self._tagged(message.subject):
            # Whether the sender takes part is asked by the number alone, first: a ticket
            # he may not enter is neither read nor locked (`Tickets.get` locks it on
            # PostgreSQL until the write ends).
            if proven_agent is None and not tickets.is_participant(number, message.from_addr):
                continue
            if (ticket := tickets.get(number)) is not None:
                return Match(ticket, "subject_tag", named_by=("subject",))
        return Match(None, "new")

    def _tagged(self, subject: str) -> list[int]:
        """The ticket numbers the subject's tags name, each once, the first `MAX_TAGS`:
        a stranger's subject of `[#1][#2]…` cost a lookup per tag in the write
        transaction (200 in 1,000 characters: five times a whole mail's work)."""
        found = (int(tag.group(1)) for tag in self.tag.finditer(subject[:1000]))
        return list(dict.fromkeys(found))[:MAX_TAGS]

    def _tags(self, subject: str, ticket_id: int) -> bool:
        return any(int(found.group(1)) == ticket_id for found in self.tag.finditer(subject[:1000]))


_THREAD_FIELDS = ("in-reply-to", "references")
# Tags of one subject looked up: a reply's subject holds one, a forward's chain a few.
MAX_TAGS = 5
