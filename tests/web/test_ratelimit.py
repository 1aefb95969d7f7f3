"""The sliding windows behind the 429s, on a clock the test moves."""

from __future__ import annotations

from datetime import timedelta

import pytest

from maildesk.clock import ManualClock
from maildesk.web import ratelimit
from maildesk.web.ratelimit import Backoff, Guard, PasswordQueue, SlidingWindow


def test_a_window_slides_hit_by_hit() -> None:
    clock = ManualClock()
    window = SlidingWindow(clock, limit=3, window=timedelta(minutes=15))
    for _ in range(2):
        window.hit("alice")
        clock.advance(timedelta(minutes=5))
    window.hit("alice")  # hits at 0, 5 and 10 minutes
    assert window.blocked("alice") and not window.blocked("bob")
    assert window.retry_after("alice") == 5 * 60 + 1

    clock.advance(timedelta(minutes=5))  # the first hit leaves the window
    assert not window.blocked("alice")
    window.hit("alice")
    assert window.blocked("alice")


def test_a_guard_limits_the_ip_and_the_account_separately() -> None:
    clock = ManualClock()
    minute = timedelta(minutes=1)
    guard = Guard(SlidingWindow(clock, 4, minute), SlidingWindow(clock, 2, minute))
    guard.hit("10.0.0.1", "Alice@Customer.test")
    guard.hit("10.0.0.2", "alice@customer.test")
    assert guard.blocked("10.0.0.3", "ALICE@customer.test")  # one account, any IP
    assert not guard.blocked("10.0.0.3", "bob@customer.test")
    guard.forgive("alice@customer.test")
    assert not guard.blocked("10.0.0.3", "alice@customer.test")

    for account in ("a@x.test", "b@x.test", "c@x.test", "d@x.test"):
        guard.hit("10.0.0.9", account)
    assert guard.blocked("10.0.0.9", "e@x.test")  # one IP, any account
    assert guard.blocked("10.0.0.9")
    clock.advance(minute)
    assert not guard.blocked("10.0.0.9", "a@x.test")


def test_a_right_password_gives_back_the_attempt_counted_before_it() -> None:
    clock = ManualClock()
    minute = timedelta(minutes=1)
    guard = Guard(SlidingWindow(clock, 2, minute), SlidingWindow(clock, 2, minute))
    guard.hit("10.0.0.1", "alice@customer.test")
    guard.hit("10.0.0.1", "alice@customer.test")
    assert guard.blocked("10.0.0.1", "bob@customer.test")
    guard.succeeded("10.0.0.1", "alice@customer.test")
    assert not guard.blocked("10.0.0.1", "alice@customer.test")


def test_the_password_queue_holds_a_few_per_client_and_no_more_in_all() -> None:
    queue = PasswordQueue(per_ip=2, total=3)
    with queue.place("10.0.0.1"), queue.place("10.0.0.1"):
        assert queue.full("10.0.0.1") and not queue.full("10.0.0.2")
        with queue.place("10.0.0.2"):
            assert queue.full("10.0.0.3")
    assert not queue.full("10.0.0.1") and not queue.full("10.0.0.3")


def test_a_flood_of_new_keys_never_wipes_a_key_at_its_limit() -> None:
    """ "Send me a new link" for Bob three times, then for 50,000 random addresses: Bob's
    count used to be pushed out as the stalest key, and he got three more mails."""
    clock = ManualClock()
    window = SlidingWindow(clock, limit=3, window=timedelta(hours=1))
    for _ in range(3):
        window.hit("bob@customer.test")
    window.hit("alice@customer.test")  # below her limit: hers may go
    for n in range(ratelimit.MAX_KEYS):
        window.hit(f"junk{n}@example.test")
    assert window.blocked("bob@customer.test")
    assert len(window._hits) == ratelimit.MAX_KEYS  # memory stays bounded

    # A key that fell back below its limit is an ordinary one again.
    clock.advance(timedelta(hours=1))
    window.hit("bob@customer.test")
    assert not window.blocked("bob@customer.test")


def test_when_every_key_is_at_its_limit_the_stalest_goes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ratelimit, "MAX_KEYS", 10)
    window = SlidingWindow(ManualClock(), limit=1, window=timedelta(hours=1))
    for n in range(11):
        window.hit(f"c{n}@customer.test")
    assert len(window._hits) == 10
    assert not window.blocked("c0@customer.test")
    assert window.blocked("c1@customer.test") and window.blocked("c10@customer.test")


def test_a_flood_of_new_accounts_never_wipes_a_back_off() -> None:
    clock = ManualClock()
    backoff = Backoff(clock, free=5, base=timedelta(seconds=2), cap=timedelta(minutes=15))
    for _ in range(9):
        backoff.hit("bob@customer.test")
        clock.advance(timedelta(seconds=backoff.retry_after("bob@customer.test")))
    backoff.hit("bob@customer.test")
    wait = backoff.retry_after("bob@customer.test")
    assert wait == 32
    for n in range(ratelimit.MAX_KEYS):
        backoff.hit(f"junk{n}@example.test")
    assert backoff.retry_after("bob@customer.test") == wait
