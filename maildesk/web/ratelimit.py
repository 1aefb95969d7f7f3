"""How often anyone may try a password, a set-password link or a "new link" request.

In memory, per daemon: a sliding window of attempt times per key, where a key
is an IP address or an account (the e-mail address typed, or the person a
link names), so neither one IP guessing many accounts nor many IPs guessing
one account gets far. Keys for unknown addresses count exactly like known ones,
so a 429 reveals nothing. Time comes from the injected clock (tests move it).
A restart forgets the counts; that costs an attacker one restart per window.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from maildesk.clock import Clock

# The most keys one window remembers; beyond it the stalest keys are dropped
# first, so a flood of random addresses cannot grow memory without bound.
MAX_KEYS = 50_000


class SlidingWindow:
    """At most `limit` hits per key in any `window`."""

    def __init__(self, clock: Clock, limit: int, window: timedelta) -> None:
        self.clock = clock
        self.limit = limit
        self.window = window
        self._hits: dict[str, deque[datetime]] = {}

    def _recent(self, key: str, now: datetime) -> deque[datetime]:
        hits = self._hits.get(key)
        if hits is None:
            return deque()
        while hits and now - hits[0] >= self.window:
            hits.popleft()
        if not hits:
            del self._hits[key]
        return hits

    def blocked(self, key: str) -> bool:
        return len(self._recent(key, self.clock.now())) >= self.limit

    def hit(self, key: str) -> None:
        now = self.clock.now()
        hits = self._recent(key, now)
        if key not in self._hits:
            if len(self._hits) >= MAX_KEYS:
                del self._hits[next(iter(self._hits))]  # dicts keep insertion order
            self._hits[key] = hits
        hits.append(now)

    def reset(self, key: str) -> None:
        self._hits.pop(key, None)

    def retry_after(self, key: str) -> int:
        """Seconds until the oldest counted hit leaves the window."""
        now = self.clock.now()
        hits = self._recent(key, now)
        if len(hits) < self.limit:
            return 0
        return max(1, int((hits[0] + self.window - now).total_seconds()) + 1)


@dataclass
class Guard:
    """One kind of POST, limited per IP and per account at once."""

    per_ip: SlidingWindow
    per_account: SlidingWindow

    def blocked(self, ip: str, account: str = "") -> int:
        """Seconds to wait (0 = go ahead); an empty account checks the IP alone."""
        wait = self.per_ip.retry_after(ip)
        return max(wait, self.per_account.retry_after(account.lower())) if account else wait

    def hit(self, ip: str, account: str = "") -> None:
        self.per_ip.hit(ip)
        if account:
            self.per_account.hit(account.lower())

    def forgive(self, account: str) -> None:
        """A right password clears the account's failures (not the IP's)."""
        self.per_account.reset(account.lower())


# Failed logins, per IP and per e-mail address typed.
LOGIN_FAILURES_PER_ACCOUNT = 5
LOGIN_FAILURES_PER_IP = 20
# Set-password attempts (a wrong-password rule or a used link counts too).
SET_PASSWORD_PER_ACCOUNT = 10
SET_PASSWORD_PER_IP = 30
# "Send me a new link": each may send mail, so fewer.
FORGOT_PER_ACCOUNT = 3
FORGOT_PER_IP = 10


@dataclass
class RateLimits:
    clock: Clock
    login: Guard = field(init=False)
    set_password: Guard = field(init=False)
    forgot: Guard = field(init=False)

    def __post_init__(self) -> None:
        quarter, hour = timedelta(minutes=15), timedelta(hours=1)
        self.login = self._guard(LOGIN_FAILURES_PER_IP, LOGIN_FAILURES_PER_ACCOUNT, quarter)
        self.set_password = self._guard(SET_PASSWORD_PER_IP, SET_PASSWORD_PER_ACCOUNT, quarter)
        self.forgot = self._guard(FORGOT_PER_IP, FORGOT_PER_ACCOUNT, hour)

    def _guard(self, per_ip: int, per_account: int, window: timedelta) -> Guard:
        return Guard(
            SlidingWindow(self.clock, per_ip, window),
            SlidingWindow(self.clock, per_account, window),
        )
