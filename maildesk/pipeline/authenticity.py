"""Is this really the agent? A From address alone proves nothing.

Mail from an agent's address is trusted as the agent only with proof:
- it is sent to the signed reply address maildesk gave that agent, or
- it answers a Message-ID that only that agent received from maildesk, or
- the topmost Authentication-Results header, written by one of our own MTAs
  (`[agents] trusted_authserv_ids`), says DKIM or DMARC passed for the agent's
  domain. Only the topmost header counts: anything below it came from outside.
Without proof the message is handled as a customer's and flagged.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from maildesk.message import ParsedMessage
from maildesk.models import Agent, Outbox
from maildesk.tickets.agents import Agents
from maildesk.tickets.tokens import ReplyTokens


@dataclass(frozen=True)
class Sender:
    agent: Agent | None  # the proven agent, or None
    claimed_agent: bool  # the From is an agent's address (proven or not)
    proof: str = ""  # reply_token | message_id | dkim | dmarc

    @property
    def forged(self) -> bool:
        return self.claimed_agent and self.agent is None


def identify(
    session: Session,
    message: ParsedMessage,
    rcpt_to: Iterable[str],
    tokens: ReplyTokens,
    trusted_authserv_ids: Iterable[str],
) -> Sender:
    agent = Agents(session).by_email(message.from_addr)
    if agent is None:
        return Sender(None, claimed_agent=False)
    for address in (*rcpt_to, *message.to, *message.cc):
        token = tokens.parse(address)
        if token is not None and token.agent == agent.id:
            return Sender(agent, True, "reply_token")
    if message.thread_ids and _received_by(session, message.thread_ids, agent.email):
        return Sender(agent, True, "message_id")
    proof = _authenticated(message.authentication_results, agent.email, trusted_authserv_ids)
    if proof:
        return Sender(agent, True, proof)
    return Sender(None, claimed_agent=True)


def _received_by(session: Session, ids: tuple[str, ...], email: str) -> bool:
    rows = session.scalars(select(Outbox.recipients).where(Outbox.message_id.in_(ids)))
    # Only mail addressed to this agent alone proves anything.
    return any(list(recipients) == [email] for recipients in rows)


_RESULT = re.compile(r"\b(dkim|dmarc)\s*=\s*(\w+)([^;]*)", re.IGNORECASE)
_PROPERTY = re.compile(r"\bheader\.(d|from)\s*=\s*([^\s;]+)", re.IGNORECASE)


def _authenticated(headers: tuple[str, ...], email: str, trusted: Iterable[str]) -> str:
    if not headers:
        return ""
    authserv_id, _, results = headers[0].partition(";")
    words = authserv_id.split()
    if not words or words[0].lower() not in {t.lower() for t in trusted}:
        return ""
    domain = email.rpartition("@")[2].lower()
    for method, verdict, props in _RESULT.findall(results):
        if verdict.lower() != "pass":
            continue
        for _name, value in _PROPERTY.findall(props):
            value = value.strip('"').lower().rpartition("@")[2]
            if value == domain:
                return method.lower()
    return ""
