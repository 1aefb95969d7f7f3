"""Reply tokens: `support+t42.k3m9qzt7ab@example.test` threads mail to ticket 42.

The address is set as Reply-To on everything maildesk sends, so a reply still
finds its ticket when a client drops In-Reply-To and References. The token is
an HMAC of the ticket number: a stranger cannot forge one for someone else's
ticket. Lower-case base32, because some MTAs lower-case local parts.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

_SIG_LEN = 10


class ReplyTokens:
    def __init__(self, support_address: str, secret: str) -> None:
        local, _, domain = support_address.partition("@")
        self._local = local.lower()
        self._domain = domain.lower()
        self._secret = secret.encode("utf-8")
        self._pattern = re.compile(
            rf"^{re.escape(self._local)}\+t(\d{{1,12}})\.([a-z2-7]{{{_SIG_LEN}}})@{re.escape(self._domain)}$"
        )

    def _sign(self, number: int) -> str:
        mac = hmac.new(self._secret, f"reply-token:ticket:{number}".encode(), hashlib.sha256)
        return base64.b32encode(mac.digest()).decode("ascii").lower()[:_SIG_LEN]

    def address(self, number: int) -> str:
        return f"{self._local}+t{number}.{self._sign(number)}@{self._domain}"

    def ticket_number(self, address: str) -> int | None:
        """The ticket an address is a valid reply token for, else None."""
        match = self._pattern.match(address.strip().lower())
        if not match:
            return None
        number = int(match.group(1))
        return number if hmac.compare_digest(match.group(2), self._sign(number)) else None
