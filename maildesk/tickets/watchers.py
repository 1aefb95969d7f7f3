"""Who watches a ticket: agents who get its notifications beside the owner (`#watch`)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from maildesk.models import Agent, Ticket, Watcher


class Watchers:
    def __init__(self, session: Session) -> None:
        self.session = session

    def of(self, ticket: Ticket) -> list[Agent]:
        """The ticket's active watchers, in the order they started watching."""
        query = (
            select(Agent)
            .join(Watcher, Watcher.agent_id == Agent.id)
            .where(Watcher.ticket_id == ticket.id, Agent.active.is_(True))
            .order_by(Watcher.created_at, Agent.id)
        )
        return list(self.session.scalars(query))

    def watch(self, ticket: Ticket, agent: Agent, now: datetime) -> bool:
        """Start watching; False when the agent already watches."""
        if self.session.get(Watcher, (ticket.id, agent.id)) is not None:
            return False
        self.session.add(Watcher(ticket_id=ticket.id, agent_id=agent.id, created_at=now))
        self.session.flush()
        return True

    def unwatch(self, ticket: Ticket, agent: Agent) -> bool:
        """Stop watching; False when the agent did not watch."""
        result = self.session.execute(
            delete(Watcher).where(Watcher.ticket_id == ticket.id, Watcher.agent_id == agent.id)
        )
        return bool(getattr(result, "rowcount", 0))
