"""Which addresses are ours, never a customer's: no mail of ours goes to them.

Ours are the support address, its `[support] aliases`, any sub-address of either
(`support+anything@…`: our signed reply and console addresses, and every other one,
which our listener refuses), and the agents. Mail that copies one of them does not
make it a participant, mail from one gets no acknowledgement, and an agent cannot
name one in `#cc` or `#requester`: each would send the ticket's mail back to us
(dropped as a duplicate, or refused and filed as a bounce) or out to every agent.

An agent's sub-address (`agent+desk@…`) is the agent's mailbox too: an agent who
copied himself under a tag became a customer participant of the ticket, given every
answer and, from that address, the customer's word in it. Being ours only keeps an
address out; it proves nobody an agent (`Agents.by_email` takes the exact address,
and a proof, pipeline/authenticity.py).
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from maildesk.config import SupportSettings
from maildesk.outbound.headers import as_stored
from maildesk.tickets.agents import Agents


class OwnAddresses:
    def __init__(self, support: SupportSettings) -> None:
        # As mail names them: a Unicode domain in the config as its A-label.
        self._exact = frozenset(as_stored(a) for a in (support.address, *support.aliases))

    def __contains__(self, address: str) -> bool:
        """Whether `address` is the support address, an alias, or a sub-address of one."""
        return any(spelling in self._exact for spelling in _spellings(address))

    def include(self, session: Session, address: str) -> bool:
        """Whether `address` is ours (`in`), an active agent's, or a sub-address of one."""
        if address in self:
            return True
        agents = Agents(session)
        return any(agents.by_email(spelling) is not None for spelling in _spellings(address))


def _spellings(address: str) -> list[str]:
    """`address` in lower case, then without each sub-address it may have: each "+" may
    end the base (`help+desk@` is an address of its own, `help@`'s sub-address or not)."""
    normalized = as_stored(address)
    local, _, domain = normalized.rpartition("@")
    bases = (local[:at] for at, char in enumerate(local) if char == "+")
    return [normalized, *(f"{base}@{domain}" for base in bases)]
