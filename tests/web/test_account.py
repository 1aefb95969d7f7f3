"""Account pages over real HTTP: set-password links, login, logout, new links, sessions."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import pytest
from aiohttp import web

from maildesk.clock import ManualClock
from maildesk.web import ratelimit
from maildesk.web.session import COOKIE, Sessions, cookie_options
from tests.conftest import RunningDaemon, make_mail, wait_for
from tests.helpers import outbox_rows, tickets
from tests.web.portal_client import (
    PASSWORD,
    Client,
    base_url,
    customer,
    invitation,
    logged_in,
    person,
)


@pytest.fixture
def config_values(config_values: dict[str, Any], request: pytest.FixtureRequest) -> dict[str, Any]:
    config_values["support"]["base_url"] = f"http://127.0.0.1:{config_values['web']['port']}"
    for section, values in getattr(request, "param", {}).items():
        config_values.setdefault(section, {}).update(values)
    return config_values


def assert_fresh_link_page(page: Any) -> None:
    """The page for a broken link: offers a new one, names nobody."""
    assert page.status == 400
    assert "This link no longer works" in page.text
    assert 'action="/account/forgot"' in page.text
    assert "@" not in page.text.split("<main>")[1]
    assert page.headers["Referrer-Policy"] == "no-referrer"


def test_a_link_sets_the_password_once_and_logs_in(
    daemon: RunningDaemon, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    link = invitation(daemon.services, "alice@customer.test")
    client = Client(base_url(daemon))

    page = client.get(link)
    assert page.status == 200
    assert page.headers["Referrer-Policy"] == "no-referrer"
    assert "at least 12 characters" in page.text and "not a common password" in page.text

    token = page.field("token")
    short = client.post(
        "/account/set-password", {"token": token, "password": "short", "confirm": "short"}
    )
    assert short.status == 400 and "too short" in short.text
    common = client.post(
        "/account/set-password",
        {"token": token, "password": "password1234", "confirm": "password1234"},
    )
    assert common.status == 400 and "common password" in common.text
    assert client.cookie(COOKIE) is None

    done = client.post(
        "/account/set-password", {"token": token, "password": PASSWORD, "confirm": PASSWORD}
    )
    assert (done.status, done.location) == (303, "/tickets")
    landed = client.get("/tickets")
    assert landed.status == 200 and "alice@customer.test" not in landed.text.split("<main>")[0]

    again = Client(base_url(daemon))
    assert_fresh_link_page(again.get(link))
    assert_fresh_link_page(
        client.post(
            "/account/set-password", {"token": token, "password": PASSWORD, "confirm": PASSWORD}
        )
    )
    # Neither the token nor the password ever reaches the log.
    assert token not in caplog.text and PASSWORD not in caplog.text


def test_tampered_expired_and_superseded_links_are_refused(
    daemon: RunningDaemon, clock: ManualClock
) -> None:
    services = daemon.services
    client = Client(base_url(daemon))
    old = invitation(services, "alice@customer.test")
    link = invitation(services, "alice@customer.test")
    assert_fresh_link_page(client.get(old))  # a newer link replaced it
    assert_fresh_link_page(
        client.get(link[:-4] + ("AAAA" if not link.endswith("AAAA") else "BBBB"))
    )
    assert client.get(link).status == 200

    clock.advance(timedelta(days=services.settings.web.invitation_days, seconds=1))
    assert_fresh_link_page(client.get(link))
    assert person(services, "alice@customer.test").password_hash is None


def test_every_form_needs_its_csrf_token(daemon: RunningDaemon) -> None:
    services = daemon.services
    customer(services, "bob@customer.test")
    link = invitation(services, "alice@customer.test")
    client = Client(base_url(daemon))
    token = client.get(link).field("token")

    data = {"token": token, "password": PASSWORD, "confirm": PASSWORD}
    assert client.post("/account/set-password", data, csrf=False).status == 403
    forged = {**data, "csrf_token": "0" * 64}
    assert client.post("/account/set-password", forged, csrf=False).status == 403
    assert person(services, "alice@customer.test").password_hash is None

    login = {"email": "bob@customer.test", "password": PASSWORD}
    assert client.post("/login", login, csrf=False).status == 403
    assert client.post("/account/forgot", {"email": "bob@customer.test"}, csrf=False).status == 403

    # A token from another browser (another CSRF cookie) does not work either.
    other = Client(base_url(daemon))
    other.get("/login")
    stolen = {**login, "csrf_token": other.last.field("csrf_token") if other.last else ""}
    client.get("/login")
    assert client.post("/login", stolen, csrf=False).status == 403

    bob = logged_in(daemon, "bob@customer.test")
    assert bob.post("/logout", {}, csrf=False).status == 403
    assert bob.get("/tickets").status == 200  # still logged in
    assert bob.post("/account/language", {"language": "cs"}, csrf=False).status == 403


def test_login_logout_and_the_session_cookie(daemon: RunningDaemon, clock: ManualClock) -> None:
    customer(daemon.services, "bob@customer.test")
    client = Client(base_url(daemon))
    assert client.get("/tickets").location == "/login?next=%2Ftickets"

    client.get("/login?next=/tickets/7")
    wrong = client.post(
        "/login", {"email": "bob@customer.test", "password": "nope", "next": "/tickets/7"}
    )
    assert wrong.status == 400 and "not right" in wrong.text
    ok = client.post(
        "/login", {"email": "Bob@Customer.test", "password": PASSWORD, "next": "/tickets/7"}
    )
    assert (ok.status, ok.location) == (303, "/tickets/7")
    cookie = next(c for c in ok.cookies() if c.startswith(COOKIE + "="))
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie

    client.get("/tickets")
    out = client.post("/logout", {})
    assert (out.status, out.location) == (303, "/login")
    assert client.get("/tickets").status == 303

    # An outside `next` never redirects away from the site.
    client.get("/login")
    away = client.post(
        "/login", {"email": "bob@customer.test", "password": PASSWORD, "next": "//evil.test/x"}
    )
    assert away.location == "/tickets"

    # The session lasts session_days after the last visit.
    assert client.get("/tickets").status == 200
    clock.advance(timedelta(days=daemon.services.settings.web.session_days, seconds=1))
    assert client.get("/tickets").status == 303


def test_a_new_password_ends_other_sessions(daemon: RunningDaemon) -> None:
    services = daemon.services
    customer(services, "bob@customer.test")
    laptop = logged_in(daemon, "bob@customer.test")
    phone = Client(base_url(daemon))
    token = phone.get(invitation(services, "bob@customer.test")).field("token")
    new = "another long passphrase"
    phone.post("/account/set-password", {"token": token, "password": new, "confirm": new})
    assert phone.get("/tickets").status == 200
    assert laptop.get("/tickets").location.startswith("/login")


def test_secure_cookies_when_the_site_is_https(clock: ManualClock) -> None:
    assert cookie_options("https://help.example.test", 60)["secure"] is True
    assert cookie_options("http://127.0.0.1:8080", 60)["secure"] is False
    response = web.Response()
    Sessions(clock, "https://help.example.test", 30).give(response, "s" * 43)
    header = response.cookies[COOKIE].output()
    assert "Secure" in header and "HttpOnly" in header and "SameSite=Lax" in header
    assert f"Max-Age={30 * 86400}" in header


def test_a_wrong_password_is_refused_without_the_write_lock(daemon: RunningDaemon) -> None:
    """A guess, for an account or for an address that has none, is checked (argon2id:
    64 MiB, tens of milliseconds) outside any write transaction: with SQLite's one write
    lock held elsewhere (processing a batch of mail), guesses are still answered, and
    none of them makes the mail wait."""
    customer(daemon.services, "bob@customer.test")
    client = Client(base_url(daemon))
    client.get("/login")
    with daemon.services.db.transaction():  # holds the write lock (SQLite) meanwhile
        for email in ("bob@customer.test", "nobody@customer.test"):
            wrong = client.post("/login", {"email": email, "password": "a wrong guess here"})
            assert wrong.status == 400 and "not right" in wrong.text
    right = client.post("/login", {"email": "bob@customer.test", "password": PASSWORD})
    assert right.status == 303 and client.cookie(COOKIE) is not None


def test_failed_logins_are_rate_limited(daemon: RunningDaemon, clock: ManualClock) -> None:
    customer(daemon.services, "bob@customer.test")
    client = Client(base_url(daemon))
    client.get("/login")
    wrong = {"email": "bob@customer.test", "password": "wrong password!"}
    for _ in range(ratelimit.LOGIN_FREE_FAILURES + 1):
        assert client.post("/login", wrong).status == 400
    blocked = client.post("/login", {"email": "bob@customer.test", "password": PASSWORD})
    assert blocked.status == 429 and int(blocked.headers["Retry-After"]) > 0
    assert client.cookie(COOKIE) is None

    clock.advance(ratelimit.LOGIN_FIRST_WAIT)
    client.get("/login")
    assert client.post("/login", {"email": "bob@customer.test", "password": PASSWORD}).status == 303


def test_forgot_answers_the_same_and_mails_only_known_addresses(
    daemon: RunningDaemon, outbox: Any
) -> None:
    services = daemon.services
    daemon.send(make_mail())  # alice writes in: now she is known
    wait_for(lambda: tickets(services), what="ticket 1")
    before = len(outbox_rows(services))

    client = Client(base_url(daemon))
    client.get("/account/forgot")
    unknown = client.post("/account/forgot", {"email": "nobody@customer.test"})
    # A forged Host header never makes it into the link.
    known = client.post(
        "/account/forgot", {"email": "Alice@customer.test"}, headers={"Host": "evil.test"}
    )
    assert (unknown.status, unknown.text) == (known.status, known.text)
    assert known.status == 200

    rows = wait_for(  # queued after the answer (see the test below)
        lambda: [r for r in outbox_rows(services)[before:] if r.kind == "invitation"],
        what="the invitation queued",
    )
    assert [r.recipients for r in rows] == [["alice@customer.test"]]
    mail = wait_for(lambda: _mail_with_id(outbox, rows[0].message_id), what="the invitation")
    body = mail.get_body(("plain",))
    assert body is not None
    link = next(w for w in body.get_content().split() if "/account/set-password?token=" in w)
    assert link.startswith(base_url(daemon) + "/account/set-password?token=")
    page = Client(base_url(daemon)).get(link)
    assert page.status == 200 and "alice@customer.test" in page.text


def test_forgot_answers_a_known_address_without_waiting_for_its_mail(
    daemon: RunningDaemon,
) -> None:
    """A known address's link was made and queued before the answer: it came a few
    milliseconds later than an unknown address's, which told anyone who is a customer
    here. With SQLite's write lock held elsewhere (the queuing cannot run), both are
    answered at once; the link is queued once the lock is free."""
    services = daemon.services
    daemon.send(make_mail())
    wait_for(lambda: tickets(services), what="ticket 1")
    before = len(outbox_rows(services))
    client = Client(base_url(daemon))
    client.get("/account/forgot")
    with services.db.transaction():  # holds the write lock (SQLite) meanwhile
        known = client.post("/account/forgot", {"email": "alice@customer.test"})
        unknown = client.post("/account/forgot", {"email": "nobody@customer.test"})
        assert (known.status, known.text) == (unknown.status, unknown.text)
    invitations = wait_for(
        lambda: [r for r in outbox_rows(services)[before:] if r.kind == "invitation"],
        what="the invitation queued",
    )
    assert [r.recipients for r in invitations] == [["alice@customer.test"]]


def _invitations(services: Any) -> list[Any]:
    return [row for row in outbox_rows(services) if row.kind == "invitation"]


@pytest.mark.parametrize(
    "config_values",
    [{"limits": {"auto_replies_per_hour_total": 3, "auto_replies_unproven_percent": 100}}],
    indirect=True,
)
def test_new_links_count_in_the_desk_wide_cap_of_automatic_mail_and_stop_at_it(
    daemon: RunningDaemon, caplog: pytest.LogCaptureFixture
) -> None:
    """ "Send me a new link", asked for address after address, mailed links outside the
    desk-wide cap on automatic mail (`[limits] auto_replies_per_hour_total`, 3 here): a
    link went past it, and an acknowledgement after them still did. Now each request
    counts in it, an unknown address's as a known one's (a count that rose for known
    addresses alone would tell who is a customer), and no link goes past it; the page
    reads the same for a known address as for an unknown one."""
    caplog.set_level(logging.INFO)
    services = daemon.services
    known = [f"c{n}@customer.test" for n in range(3)]
    for address in known:
        customer(services, address)
    client = Client(base_url(daemon))
    client.get("/account/forgot")
    for address in (known[0], "nobody@customer.test", known[1]):
        assert client.post("/account/forgot", {"email": address}).status == 200
    wait_for(lambda: len(_invitations(services)) == 2, what="two links queued")

    over = client.post("/account/forgot", {"email": known[2]})
    unknown = client.post("/account/forgot", {"email": "nobody2@customer.test"})
    assert (over.status, over.text) == (unknown.status, unknown.text) == (200, over.text)
    wait_for(
        lambda: "no set-password link mailed" in caplog.text or len(_invitations(services)) > 2,
        what="the third link, queued or refused",
    )
    assert [row.recipients for row in _invitations(services)] == [[a] for a in known[:2]]

    # They counted: a new ticket's acknowledgement waits for the hour, as after 3 others.
    daemon.send(make_mail(sender="dave@other.test"), sender="dave@other.test")
    wait_for(lambda: tickets(services), what="dave's ticket")
    assert not [r for r in outbox_rows(services) if r.kind == "acknowledgement"]


@pytest.mark.parametrize("config_values", [{"web": {"trusted_proxies": ["127.0.0.1"]}}],
                         indirect=True)  # fmt: skip
def test_one_client_asking_new_links_for_many_addresses_is_limited_by_its_ip(
    daemon: RunningDaemon,
) -> None:
    """A client's requests count together across addresses (`FORGOT_PER_IP` an hour),
    an IPv6 client by its /64 (here behind our own proxy, which names it); the limit
    answers the same for known and unknown addresses. (This held before; pinned here.)"""
    services = daemon.services
    customer(services, "c0@customer.test")
    client = Client(base_url(daemon))
    client.get("/account/forgot")

    def ask(address: str, client_ip: str) -> int:
        return client.post(
            "/account/forgot", {"email": address}, headers={"X-Forwarded-For": client_ip}
        ).status

    for n in range(ratelimit.FORGOT_PER_IP):
        assert ask(f"c{n}@customer.test", f"2001:db8:1:2::{n + 1}") == 200
    # Another host of the same /64, a known address and an unknown one: both refused.
    assert ask("c0@customer.test", "2001:db8:1:2:ffff::9") == 429
    assert ask("new@customer.test", "2001:db8:1:2:ffff::9") == 429
    assert ask("new@customer.test", "2001:db8:1:3::1") == 200  # another client


def _mail_with_id(outbox: Any, message_id: str) -> Any:
    return next((m for m in outbox.messages() if message_id in str(m["Message-ID"])), None)


def test_the_language_page_switches_the_portal(daemon: RunningDaemon) -> None:
    customer(daemon.services, "bob@customer.test")
    client = logged_in(daemon, "bob@customer.test")
    page = client.get("/account/language")
    assert page.status == 200 and "English" in page.text
    saved = client.post("/account/language", {"language": "cs"})
    assert saved.location == "/account/language?saved=1"
    assert person(daemon.services, "bob@customer.test").language == "cs"
    assert "Požadavky" in client.get("/tickets").text
