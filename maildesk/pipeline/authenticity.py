"""Is this really the agent? A From address alone proves nothing.

Mail from an agent's address is trusted as the agent only with proof:
- it is sent to the signed reply address maildesk gave that agent for a ticket, or
- it answers a Message-ID that only that agent received from maildesk, or
- its From domain is proven (maildesk's own DKIM check, or our MTA's
  Authentication-Results: see maildesk/mailauth.py), for a ticket that fields the
  signature covers name.
The first two prove the agent only for the ticket the token or the Message-ID
belongs to: a token of ticket 6 does not let a mail act on ticket 1.
Without proof the message is handled as a customer's and flagged, and so is one
whose From the agent's domain disowns (our MTA's DMARC fail), whatever address of
ours it holds.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from maildesk.mailauth import Authentication
from maildesk.message import ParsedMessage
from maildesk.models import Agent, Outbox
from maildesk.pipeline.threader import Match
from maildesk.tickets.agents import Agents
from maildesk.tickets.tokens import ReplyTokens


@dataclass(frozen=True)
class Sender:
    agent: Agent | None  # the proven agent, or None
    claimed_agent: bool  # the From is an agent's address (proven or not)
    proof: str = ""  # reply_token | message_id | dkim | mta-dkim | mta-dmarc
    # The ticket a reply_token or message_id proof belongs to; None: any ticket.
    ticket_id: int | None = None
    # A proven From (dkim, mta-*): it holds for the fields its signature covers.
    signature: Authentication | None = None
    # The From's domain says this mail is not theirs (DMARC fail): no address or
    # Message-ID of ours it carries makes it the agent's, nor a confirmation.
    disproven: bool = False

    @property
    def forged(self) -> bool:
        return self.claimed_agent and self.agent is None

    def proves_for(self, match: Match) -> bool:
        """Does the proof hold for mail that `match` threads into its ticket (a signature
        that covers no way the mail names it proves nothing there)?"""
        if self.ticket_id is not None:
            return match.ticket is not None and match.ticket.id == self.ticket_id
        return self.signature is None or match.named_under(self.signature)

    def unproven(self) -> Sender:
        return Sender(None, self.claimed_agent)


def identify(
    session: Session,
    message: ParsedMessage,
    rcpt_to: Iterable[str],
    tokens: ReplyTokens,
    authentication: Authentication,
) -> Sender:
    agent = Agents(session).by_email(message.from_addr)
    if agent is None:
        return Sender(None, claimed_agent=False)
    if authentication.disowned:
        # Our signed addresses are bearer secrets, and a forwarded notification gives
        # one away: a From its own domain disowns is not the agent who received it.
        return Sender(None, claimed_agent=True, disproven=True)
    for address in (*rcpt_to, *message.to, *message.cc):
        token = tokens.parse(address)
        if token is not None and token.agent == agent.id:
            return Sender(agent, True, "reply_token", token.ticket)
    ticket_id = _received_by(session, message.thread_ids, agent.email)
    if ticket_id is not None:
        return Sender(agent, True, "message_id", ticket_id)
    if authentication.proven:
        return Sender(agent, True, authentication.method, signature=authentication)
    return Sender(None, claimed_agent=True)


def _received_by(session: Session, ids: tuple[str, ...], email: str) -> int | None:
    """The ticket of the mail among `ids` that maildesk sent to this agent alone."""
    if not ids:
        return None
    rows = session.execute(
        select(Outbox.recipients, Outbox.ticket_id).where(
            Outbox.message_id.in_(ids), Outbox.ticket_id.is_not(None)
        )
    )
    return next((tid for recipients, tid in rows if list(recipients) == [email]), None)
