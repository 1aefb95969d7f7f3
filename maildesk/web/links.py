"""Signed, expiring links in mail: today the approve/decline answer to paid work.

Built from `[support] base_url`, never from a request's Host header. The
token names the ticket, the round of `#paid` it answers (each `#paid` starts
a new one) and the answer, and is signed with the site key. It stops working
when it expires, once its round has been answered, and as soon as a newer
round starts: a link from a declined 100 EUR request never approves a later
40,000 EUR one.
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
    round: int  # Ticket.paid_round when the notice was sent
    answer: str  # approve | decline


class PaidLinks:
    def __init__(self, base_url: str, secret: str, clock: Clock) -> None:
        self.base_url = base_url.rstrip("/")
        self._signer = signed_serializer(secret, "maildesk.paid-answer", clock)

    def url(self, ticket: int, round: int, answer: str) -> str:
        token = self._signer.dumps({"t": ticket, "r": round, "a": answer})
        return f"{self.base_url}/paid?{urlencode({'token': token})}"

    def read(self, token: str) -> PaidAnswer | None:
        """The answer a token carries, or None if it is forged, tampered or expired."""
        try:
            data = self._signer.loads(token, max_age=PAID_LINK_DAYS * 86400)
        except BadSignature:
            return None
        if not isinstance(data, dict) or data.get("a") not in ("approve", "decline"):
            return None
        # Links sent before rounds existed carry none: they belong to round 0.
        ticket, round_ = data.get("t"), data.get("r", 0)
        if not isinstance(ticket, int) or not isinstance(round_, int):
            return None
        return PaidAnswer(ticket, round_, data["a"])
