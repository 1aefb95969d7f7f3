"""Who is logged in: a random session id in a cookie, and a row on the server that says so.

The cookie holds only a random id (256 bits); the `web_sessions` table keeps
its sha256, so a copy of the database does not hand out live logins. A
session lasts `[web] session_days` from the last visit (a visit renews the
cookie and, at most every few minutes, the row). Because the server decides,
a session can end for good: logging out deletes its row, so a copied cookie
stops working at once, and a new password deletes every session of that
person. The cookie is HttpOnly, SameSite=Lax, and Secure whenever
`[support] base_url` is https.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from aiohttp import web
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from maildesk.clock import Clock, as_utc
from maildesk.models import WebSession

COOKIE = "maildesk_session"
# How many logins one person keeps at once; the oldest end first beyond it.
MAX_PER_PERSON = 20
# A visit writes its time to the row at most this often (one write, not one per page).
TOUCH_EVERY = timedelta(minutes=5)
_ID = re.compile(r"[A-Za-z0-9_-]{40,64}")


@dataclass(frozen=True)
class Claim:
    """What a cookie presents: the hash of its session id, still to be looked up."""

    key: str


def cookie_options(base_url: str, max_age: int | None) -> dict[str, Any]:
    """Flags for every cookie we set: never readable by scripts, never sent cross-site POST."""
    return {
        "path": "/",
        "httponly": True,
        "samesite": "Lax",
        "secure": base_url.lower().startswith("https://"),
        "max_age": max_age,
    }


def _hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class Sessions:
    def __init__(self, clock: Clock, base_url: str, days: int) -> None:
        self.clock = clock
        self.base_url = base_url
        self.lifetime = timedelta(days=days)

    def read(self, request: web.Request) -> Claim | None:
        """The claim of the request's cookie (not yet checked), or None without one."""
        value = request.cookies.get(COOKIE, "")
        return Claim(_hash(value)) if _ID.fullmatch(value) else None

    # -- the rows (inside the caller's transaction) ------------------------------------

    def start(self, session: Session, person_id: int) -> str:
        """A new login for `person_id`; returns the id the cookie carries."""
        now = self.clock.now()
        session_id = secrets.token_urlsafe(32)
        session.execute(delete(WebSession).where(WebSession.last_seen_at < now - self.lifetime))
        session.add(
            WebSession(
                id_hash=_hash(session_id), person_id=person_id, created_at=now, last_seen_at=now
            )
        )
        session.flush()
        keep = (
            select(WebSession.id_hash)
            .where(WebSession.person_id == person_id)
            .order_by(WebSession.last_seen_at.desc(), WebSession.created_at.desc())
            .limit(MAX_PER_PERSON)
        )
        session.execute(
            delete(WebSession).where(
                WebSession.person_id == person_id, WebSession.id_hash.not_in(keep)
            )
        )
        return session_id

    def person_of(self, session: Session, claim: Claim) -> int | None:
        """The person a live session belongs to (renewing it), or None if it ended."""
        row = session.get(WebSession, claim.key)
        if row is None:
            return None
        now = self.clock.now()
        if as_utc(row.last_seen_at) + self.lifetime <= now:
            session.delete(row)
            return None
        if now - as_utc(row.last_seen_at) >= TOUCH_EVERY:
            row.last_seen_at = now
        return row.person_id

    def looked_up(self, session: Session, claim: Claim) -> tuple[int | None, bool]:
        """`person_of` without changing anything (for a read transaction): the person,
        and whether `person_of` would write (renew the row, or delete it as ended), once
        in `TOUCH_EVERY` per login at most."""
        row = session.get(WebSession, claim.key)
        if row is None:
            return None, False
        seen = as_utc(row.last_seen_at)
        now = self.clock.now()
        return row.person_id, seen + self.lifetime <= now or now - seen >= TOUCH_EVERY

    @staticmethod
    def end(session: Session, claim: Claim) -> None:
        session.execute(delete(WebSession).where(WebSession.id_hash == claim.key))

    @staticmethod
    def end_all(session: Session, person_id: int) -> None:
        """Every login of this person ends (a new password)."""
        session.execute(delete(WebSession).where(WebSession.person_id == person_id))

    # -- the cookie ----------------------------------------------------------------------

    def give(self, response: web.StreamResponse, session_id: str) -> None:
        """Set the cookie of a new login."""
        options = cookie_options(self.base_url, int(self.lifetime.total_seconds()))
        response.set_cookie(COOKIE, session_id, **options)

    def renew(self, request: web.Request, response: web.StreamResponse) -> None:
        """Extend the cookie's lifetime from this visit (the row is renewed by person_of)."""
        value = request.cookies.get(COOKIE, "")
        if _ID.fullmatch(value):
            self.give(response, value)

    def log_out(self, response: web.StreamResponse) -> None:
        options = cookie_options(self.base_url, None)
        del options["max_age"]
        response.del_cookie(COOKIE, **options)
