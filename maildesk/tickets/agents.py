"""The agents: who may answer tickets by mail. Seeded from `[agents] addresses`."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from maildesk.models import Agent


class Agents:
    def __init__(self, session: Session) -> None:
        self.session = session

    def by_email(self, email: str) -> Agent | None:
        """The active agent with this address, if any."""
        return self.session.scalar(
            select(Agent).where(Agent.email == email.lower(), Agent.active.is_(True))
        )

    def active(self) -> list[Agent]:
        return list(
            self.session.scalars(select(Agent).where(Agent.active.is_(True)).order_by(Agent.id))
        )

    def add(self, email: str, name: str, now: datetime) -> Agent:
        """Add (or re-activate and rename) an agent."""
        email = email.lower()
        agent = self.session.scalar(select(Agent).where(Agent.email == email))
        if agent is None:
            agent = Agent(email=email, name=name, active=True, created_at=now)
            self.session.add(agent)
        else:
            agent.active = True
            agent.name = name or agent.name
        self.session.flush()
        return agent

    def remove(self, email: str) -> bool:
        """Deactivate: the agent's past events keep their name."""
        agent = self.by_email(email)
        if agent is None:
            return False
        agent.active = False
        return True

    def seed(self, addresses: Iterable[str], now: datetime) -> None:
        """Make sure every configured address is an agent (never re-adds a removed one)."""
        for address in addresses:
            email = address.lower()
            if self.session.scalar(select(Agent.id).where(Agent.email == email)) is None:
                self.session.add(Agent(email=email, name="", active=True, created_at=now))
