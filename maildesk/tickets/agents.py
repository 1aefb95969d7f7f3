"""The agents: who may answer tickets by mail. Seeded from `[agents] addresses`.

An agent's address is kept, and looked up, as addresses from mail are
(`headers.as_stored`: a Unicode domain as its A-label). One configured as
`jana@příklad.cz` was kept so, and her own mail, From `jana@xn--pklad-zsa96e.cz`,
was never hers: a customer who copied her made her a customer participant.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from maildesk.models import Agent
from maildesk.outbound.headers import as_stored

_CACHE = "maildesk.active_agents"


class Agents:
    """Agent lookups, read once per transaction: every message of a batch asks several times."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def _by_email(self) -> dict[str, Agent]:
        cached: dict[str, Agent] | None = self.session.info.get(_CACHE)
        if cached is None:
            query = select(Agent).where(Agent.active.is_(True)).order_by(Agent.id)
            cached = {agent.email: agent for agent in self.session.scalars(query)}
            self.session.info[_CACHE] = cached
        return cached

    def by_email(self, email: str) -> Agent | None:
        """The active agent with this address, if any."""
        return self._by_email().get(as_stored(email))

    def active(self) -> list[Agent]:
        return list(self._by_email().values())

    def add(self, email: str, name: str, now: datetime, language: str | None = None) -> Agent:
        """Add (or re-activate and rename) an agent; `language` None keeps theirs."""
        email = as_stored(email)
        agent = self.session.scalar(select(Agent).where(Agent.email == email))
        if agent is None:
            agent = Agent(email=email, name=name, active=True, created_at=now, language=language)
            self.session.add(agent)
        else:
            agent.active = True
            agent.name = name or agent.name
            agent.language = language or agent.language
        self.session.flush()
        self.session.info.pop(_CACHE, None)
        return agent

    def set_language(self, email: str, language: str | None) -> bool:
        """What the agent reads (labels, status names, errors); None: `[support] language`."""
        agent = self.by_email(email)
        if agent is None:
            return False
        agent.language = language
        return True

    def remove(self, email: str) -> bool:
        """Deactivate: the agent's past events keep their name."""
        agent = self.by_email(email)
        if agent is None:
            return False
        agent.active = False
        self.session.info.pop(_CACHE, None)
        return True

    def seed(self, addresses: Iterable[str], now: datetime) -> None:
        """Make sure every configured address is an agent (never re-adds a removed one)."""
        for address in addresses:
            email = as_stored(address)
            if self.session.scalar(select(Agent.id).where(Agent.email == email)) is None:
                self.session.add(Agent(email=email, name="", active=True, created_at=now))
        self.session.info.pop(_CACHE, None)
