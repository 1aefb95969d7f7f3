"""How often anyone may try a password, a set-password link or a "new link" request,
search in the portal, and reply there.

In memory, per daemon. Two kinds of limit:
- per IP, a sliding window of attempt times (the IP is the client's real
  address: see `clientip.py`, which reads X-Forwarded-For only from
  `[web] trusted_proxies`);
- per account for passwords, an exponential back-off: the first few failures
  cost nothing, then each one doubles the wait before the next try. It slows
  a guesser to a few tries an hour without ever shutting the owner out for
  good: a set-password link from "send me a new link" logs the owner in and
  clears the account's failures.
Keys for unknown addresses count exactly like known ones, so a 429 reveals
nothing. Time comes from the injected clock (tests move it). A restart forgets
the counts; that costs an attacker one restart per window.

An attempt is counted when it is let through, before its password is checked
(a right one is given back): checks wait their turn on one thread, so counting
after the check let a burst sent at once pass every limit. The line for that
thread is short too (`PasswordQueue`); beyond it a check is refused, not queued.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Generic, Protocol, TypeVar

from maildesk.clock import Clock

# The most keys one limit remembers, so a flood of random addresses cannot grow memory
# without bound. Which go first when it is full: see `Remembered`.
MAX_KEYS = 50_000

V = TypeVar("V")


class Remembered(Generic[V]):
    """A limit's state per key, at most `MAX_KEYS` keys, in two tiers.

    A key is *held* once its limit holds it back (a window at its limit, an account past
    its free failures) and *free* before. When the table is full, the stalest free key is
    forgotten first: that gives its owner back at most what the limit still allowed. A
    held key is forgotten only when every key is held. Forgetting the stalest key of one
    tier, as this did, let anyone who sent 50,000 requests for random addresses wipe a
    victim's count: their reset-mail limit, their password back-off. Now that flood only
    pushes out other free keys; to push out a held one, each of 50,000 keys must be
    driven to its limit first.
    """

    def __init__(self) -> None:
        # Oldest first (dicts keep insertion order): a key moves to the end of its tier
        # when it changes tier.
        self._free: dict[str, V] = {}
        self._held: dict[str, V] = {}

    def __len__(self) -> int:
        return len(self._free) + len(self._held)

    def get(self, key: str) -> V | None:
        value = self._free.get(key)
        return self._held.get(key) if value is None else value

    def put(self, key: str, value: V, *, held: bool) -> None:
        """Remember `value` for `key` in its tier, forgetting another key if full."""
        here, there = (self._held, self._free) if held else (self._free, self._held)
        if there.pop(key, None) is None and key not in here and len(self) >= MAX_KEYS:
            victims = self._free or self._held
            del victims[next(iter(victims))]
        here[key] = value

    def pop(self, key: str) -> V | None:
        value = self._free.pop(key, None)
        return self._held.pop(key, None) if value is None else value


class SlidingWindow:
    """At most `limit` hits per key in any `window`."""

    def __init__(self, clock: Clock, limit: int, window: timedelta) -> None:
        self.clock = clock
        self.limit = limit
        self.window = window
        self._hits: Remembered[deque[datetime]] = Remembered()

    def _recent(self, key: str, now: datetime) -> deque[datetime]:
        hits = self._hits.get(key)
        if hits is None:
            return deque()
        held = len(hits) >= self.limit
        while hits and now - hits[0] >= self.window:
            hits.popleft()
        if not hits:
            self._hits.pop(key)
        elif held and len(hits) < self.limit:
            self._hits.put(key, hits, held=False)
        return hits

    def blocked(self, key: str) -> bool:
        return len(self._recent(key, self.clock.now())) >= self.limit

    def hit(self, key: str) -> None:
        now = self.clock.now()
        hits = self._recent(key, now)
        hits.append(now)
        self._hits.put(key, hits, held=len(hits) >= self.limit)

    def reset(self, key: str) -> None:
        self._hits.pop(key)

    def refund(self, key: str) -> None:
        """Takes back the newest hit (one counted in advance that turned out not to count)."""
        hits = self._hits.get(key)
        if hits:
            hits.pop()
            self._hits.put(key, hits, held=len(hits) >= self.limit)

    def retry_after(self, key: str) -> int:
        """Seconds until the oldest counted hit leaves the window."""
        now = self.clock.now()
        hits = self._recent(key, now)
        if len(hits) < self.limit:
            return 0
        return max(1, int((hits[0] + self.window - now).total_seconds()) + 1)


class Limit(Protocol):
    def retry_after(self, key: str) -> int: ...
    def hit(self, key: str) -> None: ...
    def reset(self, key: str) -> None: ...


@dataclass
class _Strikes:
    count: int
    last: datetime
    until: datetime


class Backoff:
    """Per key: `free` failures cost nothing; each further one doubles the wait before the
    next try (`base`, 2·`base`, …, at most `cap`). Failures older than `forget` are forgotten.
    """

    def __init__(
        self,
        clock: Clock,
        free: int,
        base: timedelta,
        cap: timedelta,
        forget: timedelta = timedelta(hours=24),
    ) -> None:
        self.clock, self.free, self.base, self.cap, self.forget = clock, free, base, cap, forget
        self._strikes: Remembered[_Strikes] = Remembered()

    def _current(self, key: str, now: datetime) -> _Strikes | None:
        strikes = self._strikes.get(key)
        if strikes is not None and now - strikes.last >= self.forget:
            self._strikes.pop(key)
            return None
        return strikes

    def retry_after(self, key: str) -> int:
        now = self.clock.now()
        strikes = self._current(key, now)
        if strikes is None or strikes.until <= now:
            return 0
        return max(1, -int(-(strikes.until - now).total_seconds() // 1))

    def hit(self, key: str) -> None:
        now = self.clock.now()
        strikes = self._current(key, now) or _Strikes(0, now, now)
        strikes.count += 1
        strikes.last = now
        over = strikes.count - self.free
        if over > 0:
            wait = self.base * (2 ** min(over - 1, 32))
            strikes.until = now + min(wait, self.cap)
        self._strikes.put(key, strikes, held=over > 0)

    def reset(self, key: str) -> None:
        self._strikes.pop(key)


@dataclass
class Guard:
    """One kind of POST, limited per IP and per account at once."""

    per_ip: SlidingWindow
    per_account: Limit

    def blocked(self, ip: str, account: str = "") -> int:
        """Seconds to wait (0 = go ahead); an empty account checks the IP alone."""
        wait = self.per_ip.retry_after(ip)
        return max(wait, self.per_account.retry_after(account.lower())) if account else wait

    def account_blocked(self, account: str) -> int:
        return self.per_account.retry_after(account.lower())

    def hit(self, ip: str, account: str = "") -> None:
        self.per_ip.hit(ip)
        if account:
            self.per_account.hit(account.lower())

    def forgive(self, account: str) -> None:
        """A right password (or a new one) clears the account's failures (not the IP's)."""
        self.per_account.reset(account.lower())

    def succeeded(self, ip: str, account: str) -> None:
        """The attempt `hit` counted in advance was a right password: not a failure."""
        self.per_ip.refund(ip)
        self.forgive(account)


class PasswordQueue:
    """Password checks waiting for (or on) the password thread: at most `per_ip` of one
    client and `total` in all. One more is refused at once: queued, a burst kept every
    login behind its argon2 work for as long as it took."""

    def __init__(self, per_ip: int, total: int) -> None:
        self.per_ip, self.total = per_ip, total
        self._held: Counter[str] = Counter()
        self._in_all = 0

    def full(self, ip: str) -> bool:
        return self._held[ip] >= self.per_ip or self._in_all >= self.total

    @contextmanager
    def place(self, ip: str) -> Iterator[None]:
        """Holds one of `ip`'s places while its check waits and runs (ask `full` first)."""
        self._held[ip] += 1
        self._in_all += 1
        try:
            yield
        finally:
            self._in_all -= 1
            self._held[ip] -= 1
            if not self._held[ip]:
                del self._held[ip]


# Failed logins per IP (a window), and per e-mail address typed (a back-off): the first
# LOGIN_FREE_FAILURES cost nothing, then waits of 2 s, 4 s, 8 s … up to 15 minutes.
LOGIN_FAILURES_PER_IP = 20
LOGIN_FREE_FAILURES = 5
LOGIN_FIRST_WAIT = timedelta(seconds=2)
LOGIN_LONGEST_WAIT = timedelta(minutes=15)
# Set-password attempts (a wrong-password rule or a used link counts too).
SET_PASSWORD_PER_ACCOUNT = 10
SET_PASSWORD_PER_IP = 30
# "Send me a new link": each may send mail, so fewer.
FORGOT_PER_ACCOUNT = 3
FORGOT_PER_IP = 10
# Searches in the portal per 10 minutes. Each reads the search index: up to a tenth of a
# second of CPU on a desk of 100,000 messages (a word found nowhere, read as a prefix),
# so a script on one account could keep the web's threads busy. A person searches far
# less; people behind one address together, more.
SEARCHES_PER_ACCOUNT = 30
SEARCHES_PER_IP = 120
# Password checks (login, set-password) in line for the password thread, per client and
# in all; more get 429 and this Retry-After. Each takes tens to hundreds of milliseconds,
# so the last in a full line waits seconds, not minutes.
PASSWORD_QUEUE_PER_IP = 4
PASSWORD_QUEUE_TOTAL = 32
PASSWORD_QUEUE_RETRY_SECONDS = 5


@dataclass
class RateLimits:
    clock: Clock
    # `[limits] portal_replies_per_hour` (0: no limit).
    replies_per_hour: int = 0
    login: Guard = field(init=False)
    set_password: Guard = field(init=False)
    forgot: Guard = field(init=False)
    search: Guard = field(init=False)
    # Portal replies per account: each becomes a stored mail and notices to agents.
    replies: SlidingWindow | None = field(init=False)
    password_queue: PasswordQueue = field(init=False)

    def __post_init__(self) -> None:
        quarter, hour = timedelta(minutes=15), timedelta(hours=1)
        self.login = Guard(
            SlidingWindow(self.clock, LOGIN_FAILURES_PER_IP, quarter),
            Backoff(self.clock, LOGIN_FREE_FAILURES, LOGIN_FIRST_WAIT, LOGIN_LONGEST_WAIT),
        )
        self.set_password = self._guard(SET_PASSWORD_PER_IP, SET_PASSWORD_PER_ACCOUNT, quarter)
        self.forgot = self._guard(FORGOT_PER_IP, FORGOT_PER_ACCOUNT, hour)
        self.search = self._guard(SEARCHES_PER_IP, SEARCHES_PER_ACCOUNT, timedelta(minutes=10))
        self.replies = (
            SlidingWindow(self.clock, self.replies_per_hour, hour)
            if self.replies_per_hour > 0
            else None
        )
        self.password_queue = PasswordQueue(PASSWORD_QUEUE_PER_IP, PASSWORD_QUEUE_TOTAL)

    def _guard(self, per_ip: int, per_account: int, window: timedelta) -> Guard:
        return Guard(
            SlidingWindow(self.clock, per_ip, window),
            SlidingWindow(self.clock, per_account, window),
        )
