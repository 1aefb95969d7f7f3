"""Signed, expiring links in mail: today the approve/decline answer to paid work.

Built from `[support] base_url`, never from a request's Host header. The
token names the ticket and the answer and is signed with the site key; it
stops working when it expires or once the question has been answered.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode

from itsdangerous import BadSignature

from maildesk.clock import Clock
from maildesk.signing import signed_serializer

PAID_LINK_DAYS = 30


@dataclass(frozen=True)
class PaidAnswer:
    ticket: int
    answer: str  # approve | decline


class PaidLinks:
    def __init__(self, base_url: str, secret: str, clock: Clock) -> None:
        self.base_url = base_url.rstrip("/")
        self._signer = signed_serializer(secret, "maildesk.paid-answer", clock)

    def url(self, ticket: int, answer: str) -> str:
        token = self._signer.dumps({"t": ticket, "a": answer})
        return f"{self.base_url}/paid?{urlencode({'token': token})}"

    def read(self, token: str) -> PaidAnswer | None:
        """The answer a token carries, or None if it is forged, tampered or expired."""
        try:
            data = self._signer.loads(token, max_age=PAID_LINK_DAYS * 86400)
        except BadSignature:
            return None
        if not isinstance(data, dict) or data.get("a") not in ("approve", "decline"):
            return None
        ticket = data.get("t")
        return PaidAnswer(ticket, data["a"]) if isinstance(ticket, int) else None
