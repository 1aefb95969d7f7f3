"""Which addresses are ours, never a customer's: no mail of ours goes to them.

Ours are the support address, its `[support] aliases`, any sub-address of either
(`support+anything@…`: our signed reply and console addresses, and every other one,
which our listener refuses), and the agents. Mail that copies one of them does not
make it a participant, mail from one gets no acknowledgement, and an agent cannot
name one in `#cc` or `#requester`: each would send the ticket's mail back to us
(dropped as a duplicate, or refused and filed as a bounce) or out to every agent.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from maildesk.config import SupportSettings
from maildesk.tickets.agents import Agents


class OwnAddresses:
    def __init__(self, support: SupportSettings) -> None:
        self._exact = frozenset(a.strip().lower() for a in (support.address, *support.aliases))

    def __contains__(self, address: str) -> bool:
        """Whether `address` is the support address, an alias, or a sub-address of one."""
        normalized = address.strip().lower()
        if normalized in self._exact:
            return True
        local, _, domain = normalized.rpartition("@")
        # Each "+" may end the base: `help+desk@` is an address of its own.
        bases = (local[:at] for at, char in enumerate(local) if char == "+")
        return any(f"{base}@{domain}" in self._exact for base in bases)

    def include(self, session: Session, address: str) -> bool:
        """Whether `address` is ours (`in`) or an active agent's."""
        return address in self or Agents(session).by_email(address) is not None
