"""Reply tokens: `support+t42.k3m9qzt7ab@example.test` threads mail to ticket 42.

The address is set as Reply-To on everything maildesk sends, so a reply still
finds its ticket when a client drops In-Reply-To and References. Mail to an
agent carries `support+t42a3.…`, bound to agent 3 as well: a reply to it is
proof that agent 3 received that notification. The token is an HMAC, so a
stranger cannot forge one. Lower-case base32, because some MTAs lower-case
local parts.

Two more kinds of signed address belong to the agents' console (see
pipeline/console.py): `support+s42a3.…` ("show me ticket 42", one per row of a
`#list` answer, bound to agent 3) and `support+c17.…` (the reply address of
confirmation 17). Each kind signs its own subject, so one never passes for
another.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass

_SIG_LEN = 10


@dataclass(frozen=True)
class Token:
    ticket: int
    agent: int | None


@dataclass(frozen=True)
class ConsoleToken:
    kind: str  # "show": ticket `number` for `agent`; "confirm": confirmation `number`
    number: int
    agent: int | None


class ReplyTokens:
    def __init__(self, support_address: str, secret: str) -> None:
        local, _, domain = support_address.partition("@")
        self._local = local.lower()
        self._domain = domain.lower()
        # Keyed once: each signature copies it instead of hashing the key again.
        self._keyed = hmac.new(secret.encode("utf-8"), digestmod=hashlib.sha256)
        self._pattern = re.compile(
            rf"^{re.escape(self._local)}\+t(\d{{1,12}})(?:a(\d{{1,9}}))?\.([a-z2-7]{{{_SIG_LEN}}})"
            rf"@{re.escape(self._domain)}$"
        )
        self._console = re.compile(
            rf"^{re.escape(self._local)}\+([sc])(\d{{1,12}})(?:a(\d{{1,9}}))?\.([a-z2-7]{{{_SIG_LEN}}})"
            rf"@{re.escape(self._domain)}$"
        )

    def _sign(self, ticket: int, agent: int | None) -> str:
        return self._signature(
            f"reply-token:ticket:{ticket}" + (f":agent:{agent}" if agent else "")
        )

    def address(self, ticket: int, agent: int | None = None) -> str:
        who = f"a{agent}" if agent else ""
        return f"{self._local}+t{ticket}{who}.{self._sign(ticket, agent)}@{self._domain}"

    def parse(self, address: str) -> Token | None:
        """The ticket (and agent) an address is a valid reply token for, else None."""
        match = self._pattern.match(address.strip().lower())
        if not match:
            return None
        ticket = int(match.group(1))
        agent = int(match.group(2)) if match.group(2) else None
        if not hmac.compare_digest(match.group(3), self._sign(ticket, agent)):
            return None
        return Token(ticket, agent)

    def _sign_console(self, kind: str, number: int, agent: int | None) -> str:
        return self._signature(f"console:{kind}:{number}" + (f":agent:{agent}" if agent else ""))

    def _signature(self, subject: str) -> str:
        mac = self._keyed.copy()
        mac.update(subject.encode())
        # The 10 base32 characters kept are the first 50 bits: the first 10 bytes give 16.
        return base64.b32encode(mac.digest()[:10]).decode("ascii").lower()[:_SIG_LEN]

    def show_address(self, ticket: int, agent: int) -> str:
        """Mail to it asks for `#show ticket`; the answer goes to the agent's own address."""
        sig = self._sign_console("s", ticket, agent)
        return f"{self._local}+s{ticket}a{agent}.{sig}@{self._domain}"

    def confirm_address(self, confirmation: int) -> str:
        sig = self._sign_console("c", confirmation, None)
        return f"{self._local}+c{confirmation}.{sig}@{self._domain}"

    def confirm_signature(self, confirmation: int) -> str:
        """The secret part of confirmation links (the same as in its reply address)."""
        return self._sign_console("c", confirmation, None)

    def console(self, address: str) -> ConsoleToken | None:
        """The console request a signed address stands for, else None."""
        match = self._console.match(address.strip().lower())
        if not match:
            return None
        kind, number = match.group(1), int(match.group(2))
        agent = int(match.group(3)) if match.group(3) else None
        if (kind == "s") != (agent is not None):
            return None
        if not hmac.compare_digest(match.group(4), self._sign_console(kind, number, agent)):
            return None
        return ConsoleToken("show" if kind == "s" else "confirm", number, agent)

    def accepts(self, address: str) -> bool:
        """Any signed address of ours: a reply token or a console address."""
        return self.parse(address) is not None or self.console(address) is not None

    def ticket_number(self, address: str) -> int | None:
        token = self.parse(address)
        return token.ticket if token else None
