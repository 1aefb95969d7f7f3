"""Who is logged in: a signed session cookie, and when it stops counting.

The cookie holds only the person's id and `session_version`, signed with the
site key (itsdangerous, timed by our clock). It is HttpOnly, SameSite=Lax,
and Secure whenever `[support] base_url` is https. It lasts `[web]
session_days` from the last visit (every page view renews it). Changing the
password bumps `session_version`, which ends every other session at once;
logging out removes this browser's cookie.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from aiohttp import web
from itsdangerous import BadSignature

from maildesk.clock import Clock
from maildesk.models import Person
from maildesk.signing import signed_serializer

COOKIE = "maildesk_session"


@dataclass(frozen=True)
class Claim:
    """What a genuine, unexpired cookie says; still to be checked against the database."""

    person_id: int
    version: int


def cookie_options(base_url: str, max_age: int | None) -> dict[str, Any]:
    """Flags for every cookie we set: never readable by scripts, never sent cross-site POST."""
    return {
        "path": "/",
        "httponly": True,
        "samesite": "Lax",
        "secure": base_url.lower().startswith("https://"),
        "max_age": max_age,
    }


class Sessions:
    def __init__(self, secret: str, clock: Clock, base_url: str, days: int) -> None:
        self.base_url = base_url
        self.lifetime = timedelta(days=days)
        self._signer = signed_serializer(secret, "maildesk.session", clock)

    def value(self, person_id: int, version: int) -> str:
        return str(self._signer.dumps({"p": person_id, "v": version}))

    def read(self, request: web.Request) -> Claim | None:
        """The claim of the request's cookie, or None if absent, forged or expired."""
        value = request.cookies.get(COOKIE)
        if not value:
            return None
        try:
            data = self._signer.loads(value, max_age=int(self.lifetime.total_seconds()))
        except BadSignature:
            return None
        if not isinstance(data, dict):
            return None
        person_id, version = data.get("p"), data.get("v")
        if not isinstance(person_id, int) or not isinstance(version, int):
            return None
        return Claim(person_id, version)

    @staticmethod
    def valid_for(claim: Claim | None, person: Person | None) -> bool:
        """A claim counts only for a person who still has that password (version)."""
        return (
            claim is not None
            and person is not None
            and person.id == claim.person_id
            and bool(person.password_hash)
            and person.session_version == claim.version
        )

    def log_in(self, response: web.StreamResponse, person_id: int, version: int) -> None:
        """Set (or renew: the lifetime counts from the last visit) the session cookie."""
        options = cookie_options(self.base_url, int(self.lifetime.total_seconds()))
        response.set_cookie(COOKIE, self.value(person_id, version), **options)

    def log_out(self, response: web.StreamResponse) -> None:
        options = cookie_options(self.base_url, None)
        del options["max_age"]
        response.del_cookie(COOKIE, **options)
