"""Which POSTs are genuine: a signed double-submit token on every form.

A random nonce lives in an HttpOnly cookie; each form carries
HMAC(site key, nonce + who is logged in). A foreign site can neither read the
cookie nor compute the HMAC, and a token lifted from one login does not work
for another. SameSite=Lax cookies already stop most cross-site POSTs; this is
the check that does not depend on the browser. A POST without a valid token
gets 403 and changes nothing.

/paid is not covered: its form carries a signed single-use link token, which
is itself the proof that the page was opened from the mail.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from aiohttp import web

from maildesk.web.session import Claim, cookie_options

COOKIE = "maildesk_csrf"
FIELD = "csrf_token"


class Csrf:
    def __init__(self, secret: str, base_url: str) -> None:
        self._key = hashlib.sha256(b"maildesk.csrf\0" + secret.encode()).digest()
        self.base_url = base_url

    def _sign(self, nonce: str, claim: Claim | None) -> str:
        who = claim.key if claim else "-"
        return hmac.new(self._key, f"{nonce}|{who}".encode(), hashlib.sha256).hexdigest()

    def token(self, request: web.Request, claim: Claim | None) -> tuple[str, str | None]:
        """The token for this page's forms, and a new nonce to set if the browser has none."""
        nonce = request.cookies.get(COOKIE)
        if nonce:
            return self._sign(nonce, claim), None
        minted = secrets.token_urlsafe(24)
        return self._sign(minted, claim), minted

    def give(self, response: web.StreamResponse, nonce: str) -> None:
        """The browser keeps the nonce the page's forms were signed with."""
        response.set_cookie(COOKIE, nonce, **cookie_options(self.base_url, None))

    def valid(self, request: web.Request, sent: str, claim: Claim | None) -> bool:
        nonce = request.cookies.get(COOKIE)
        # compare_digest raises TypeError on a str outside ASCII; ours never is, so it is wrong.
        if not nonce or not sent or not sent.isascii():
            return False
        return hmac.compare_digest(self._sign(nonce, claim), sent)
