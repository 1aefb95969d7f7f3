"""Failed logins slow the attacker, never the customers (issue 7, #11).

Behind a reverse proxy every customer used to share the proxy's address, so
20 failures from 20 different people locked everyone out; and five wrong
passwords locked a targeted account for 15 minutes. Now the client address
comes from X-Forwarded-For, believed only from `[web] trusted_proxies`, and
an account's failures cost exponentially growing waits that its owner ends
with a set-password link from "send me a new link".
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import text

from maildesk.clock import ManualClock
from maildesk.web import pages, ratelimit
from tests.conftest import Outbox, RunningDaemon, wait_for
from tests.web.portal_client import PASSWORD, Client, base_url, customer

BOB = "bob@customer.test"
ALICE = "alice@customer.test"
WRONG = "not the right password"
ATTACKER, OWNER = "192.0.2.66", "203.0.113.9"


@pytest.fixture
def config_values(config_values: dict[str, Any]) -> dict[str, Any]:
    config_values["support"]["base_url"] = f"http://127.0.0.1:{config_values['web']['port']}"
    return config_values


def attempt(client: Client, email: str, password: str, via: str = "") -> int:
    headers = {"X-Forwarded-For": via} if via else {}
    client.get("/login", headers=headers)
    return client.post("/login", {"email": email, "password": password}, headers=headers).status


@contextmanager
def password_thread_busy() -> Iterator[None]:
    """Holds serve's one password thread, as a long run of argon2 work would: whatever
    is admitted meanwhile waits in line, so the test sees who was let in."""
    release = threading.Event()
    holding = pages.PASSWORD_WORK.submit(release.wait)
    try:
        yield
    finally:
        release.set()
        holding.result(timeout=10)


def burst(
    pool: ThreadPoolExecutor, client: Client, logins: list[tuple[str, str]]
) -> list[Future[int]]:
    """Wrong passwords for these (address, client IP) pairs, all sent at once."""
    client.get("/login")  # one CSRF cookie for all, before they race
    return [pool.submit(attempt, client, email, WRONG, ip) for email, ip in logins]


def refused(sent: list[Future[int]]) -> int:
    return sum(1 for f in sent if f.done() and f.result() == 429)


class TestABurstAtOnce:
    """Guesses sent at once were all checked (60 × 400): the limits were read before the
    queued password check but counted after it, and the line for that check had no end."""

    @pytest.fixture
    def config_values(self, config_values: dict[str, Any]) -> dict[str, Any]:
        config_values["web"]["trusted_proxies"] = ["127.0.0.1"]
        return config_values

    def test_a_burst_at_one_account_is_checked_no_more_often_than_one_by_one(
        self, daemon: RunningDaemon
    ) -> None:
        customer(daemon.services, BOB)
        customer(daemon.services, ALICE)
        attacker = Client(base_url(daemon))
        with ThreadPoolExecutor(60) as pool:
            statuses = [f.result() for f in burst(pool, attacker, [(BOB, ATTACKER)] * 60)]
        checked = statuses.count(400)
        assert 1 <= checked <= ratelimit.LOGIN_FREE_FAILURES + 1  # as many as one by one
        assert statuses.count(429) == 60 - checked
        assert attempt(Client(base_url(daemon)), ALICE, PASSWORD, OWNER) == 303

    def test_one_client_gets_only_a_few_places_in_the_line(self, daemon: RunningDaemon) -> None:
        customer(daemon.services, ALICE)
        attacker, owner = Client(base_url(daemon)), Client(base_url(daemon))
        places = ratelimit.PASSWORD_QUEUE_PER_IP
        guesses = [(f"c{n}@customer.test", ATTACKER) for n in range(40)]
        with ThreadPoolExecutor(41) as pool:
            with password_thread_busy():
                sent = burst(pool, attacker, guesses)
                wait_for(lambda: refused(sent) == len(guesses) - places, what="the 429s")
                login = pool.submit(attempt, owner, ALICE, PASSWORD, OWNER)
            assert [f.result() for f in sent].count(400) == places
            assert login.result() == 303  # behind `places` guesses at most, not 40

    def test_the_line_as_a_whole_is_short(self, daemon: RunningDaemon) -> None:
        customer(daemon.services, ALICE)
        total = ratelimit.PASSWORD_QUEUE_TOTAL
        guesses = [(f"c{n}@customer.test", f"198.51.100.{n + 1}") for n in range(total + 10)]
        attacker = Client(base_url(daemon))
        with ThreadPoolExecutor(len(guesses)) as pool:
            with password_thread_busy():
                sent = burst(pool, attacker, guesses)
                wait_for(lambda: refused(sent) == 10, what="the 429s")
            assert [f.result() for f in sent].count(400) == total
        assert attempt(Client(base_url(daemon)), ALICE, PASSWORD, OWNER) == 303


class TestBehindAProxy:
    @pytest.fixture
    def config_values(self, config_values: dict[str, Any]) -> dict[str, Any]:
        config_values["web"]["trusted_proxies"] = ["127.0.0.1", "10.0.0.0/8"]
        return config_values

    def test_twenty_failures_from_twenty_customers_lock_nobody_out(
        self, daemon: RunningDaemon
    ) -> None:
        customer(daemon.services, BOB)
        client = Client(base_url(daemon))
        for n in range(ratelimit.LOGIN_FAILURES_PER_IP):
            # Each a different customer mistyping; the proxy appends their address.
            assert attempt(client, f"c{n}@customer.test", WRONG, f"198.51.100.{n + 1}") == 400
        assert attempt(client, BOB, PASSWORD, "203.0.113.9") == 303

    def test_one_client_is_limited_whatever_it_writes_into_the_header(
        self, daemon: RunningDaemon
    ) -> None:
        customer(daemon.services, BOB)
        client = Client(base_url(daemon))
        for n in range(ratelimit.LOGIN_FAILURES_PER_IP):
            # The attacker invents a new "client" each time; our proxies (10.0.0.7, then
            # the peer) append the address they really saw: 192.0.2.66.
            via = f"198.51.100.{n + 1}, 192.0.2.66, 10.0.0.7"
            assert attempt(client, f"c{n}@customer.test", WRONG, via) == 400
        assert attempt(client, "x@customer.test", WRONG, "1.2.3.4, 192.0.2.66, 10.0.0.7") == 429
        assert attempt(client, BOB, PASSWORD, "192.0.2.67, 10.0.0.7") == 303


def test_without_trusted_proxies_the_header_is_ignored(daemon: RunningDaemon) -> None:
    client = Client(base_url(daemon))
    for n in range(ratelimit.LOGIN_FAILURES_PER_IP):
        assert attempt(client, f"c{n}@customer.test", WRONG, f"198.51.100.{n + 1}") == 400
    assert attempt(client, "c99@customer.test", WRONG, "203.0.113.200") == 429


def test_a_proxy_missing_from_trusted_proxies_is_warned_of_once(
    daemon: RunningDaemon, caplog: pytest.LogCaptureFixture
) -> None:
    """Behind a reverse proxy that `[web] trusted_proxies` does not name, every client is
    the proxy's address: ten customers asking "send me a new link" stopped the eleventh,
    and nothing told ops why. The first request that a peer we do not trust relays with
    X-Forwarded-For (or Forwarded) gets one WARNING naming the setting; no more after."""
    caplog.set_level(logging.WARNING, logger="maildesk.web")

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if "trusted_proxies" in r.getMessage()]

    client = Client(base_url(daemon))
    client.get("/account/forgot")
    assert client.post("/account/forgot", {"email": "c0@customer.test"}).status == 200
    assert warnings() == []  # a client reaching us directly: nothing to say
    for n in range(1, ratelimit.FORGOT_PER_IP):
        relayed = {"X-Forwarded-For": f"198.51.100.{n}"}
        page = client.post("/account/forgot", {"email": f"c{n}@customer.test"}, headers=relayed)
        assert page.status == 200
    forwarded = {"Forwarded": "for=198.51.100.99"}
    late = client.post("/account/forgot", {"email": "late@customer.test"}, headers=forwarded)
    assert late.status == 429  # another customer behind the proxy, refused for the others'

    [warning] = warnings()
    assert "127.0.0.1 is not in [web] trusted_proxies" in warning
    assert "198.51.100" not in warning  # what the client wrote is not repeated

    def counted() -> int:  # each request let in counts in the hour's automatic mail
        with daemon.services.db.engine.connect() as connection:
            found = connection.execute(text("SELECT SUM(count) FROM auto_reply_minutes"))
            return int(found.scalar() or 0)

    # The links are queued after each answer: done before the daemon (and its schema) go.
    wait_for(lambda: counted() == ratelimit.FORGOT_PER_IP, what="every request counted")


def test_failures_cost_growing_waits_and_the_owner_gets_in_by_a_mailed_link(
    daemon: RunningDaemon, clock: ManualClock, outbox: Outbox
) -> None:
    services = daemon.services
    customer(services, BOB)
    attacker = Client(base_url(daemon))
    for _ in range(ratelimit.LOGIN_FREE_FAILURES):
        assert attempt(attacker, BOB, WRONG) == 400
    waits = []
    for _ in range(4):
        assert attempt(attacker, BOB, WRONG) == 400
        page = attacker.post("/login", {"email": BOB, "password": WRONG})
        assert page.status == 429
        waits.append(int(page.headers["Retry-After"]))
        clock.advance(timedelta(seconds=waits[-1]))
    assert waits == [2, 4, 8, 16]  # the attacker slows down; nobody is locked for good

    # Bob, meanwhile, is asked to wait too; a new link from "forgot" lets him in now.
    assert attempt(attacker, BOB, WRONG) == 400
    owner = Client(base_url(daemon))
    assert attempt(owner, BOB, PASSWORD) == 429
    owner.get("/account/forgot")
    owner.post("/account/forgot", {"email": BOB})
    mail = wait_for(
        lambda: next((m for m in outbox.messages() if BOB in str(m["To"])), None),
        what="the new link",
    )
    body = mail.get_body(("plain",))
    assert body is not None
    link = next(w for w in body.get_content().split() if "/account/set-password?token=" in w)
    token = owner.get(link).field("token")
    new = "a brand new passphrase"
    page = owner.post("/account/set-password", {"token": token, "password": new, "confirm": new})
    assert (page.status, page.location) == (303, "/tickets")
    assert owner.get("/tickets").status == 200
    # And on another device, the new password works at once.
    assert attempt(Client(base_url(daemon)), BOB, new) == 303


class TestAFloodOfAccounts:
    @pytest.fixture
    def config_values(self, config_values: dict[str, Any]) -> dict[str, Any]:
        config_values["web"]["trusted_proxies"] = ["127.0.0.1"]
        return config_values

    def test_wrong_passwords_for_many_accounts_never_wipe_one_accounts_back_off(
        self, daemon: RunningDaemon, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An attacker with many addresses guesses at other accounts until the limiter is
        full (50,000 in production, 40 here): Bob's back-off used to be forgotten as the
        stalest entry, and guessing at him started again for free."""
        monkeypatch.setattr(ratelimit, "MAX_KEYS", 40)
        customer(daemon.services, BOB)
        attacker = Client(base_url(daemon))
        for _ in range(ratelimit.LOGIN_FREE_FAILURES + 1):
            assert attempt(attacker, BOB, WRONG, ATTACKER) == 400
        assert attempt(attacker, BOB, WRONG, ATTACKER) == 429
        for n in range(40):
            assert attempt(attacker, f"c{n}@customer.test", WRONG, f"198.51.100.{n + 1}") == 400
        assert attempt(attacker, BOB, WRONG, "203.0.113.77") == 429
