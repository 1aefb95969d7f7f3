"""`next` after login goes only to our own paths (issue 7, #8): no open redirect.

A phishing mail links to our real login page with `next=/%09/evil.test/phish`;
the customer logs in on the genuine site and used to land on evil.test,
because browsers drop the tab and read `//evil.test/phish` as another host.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, unquote

import pytest

from maildesk.web.redirects import is_local_path
from tests.conftest import RunningDaemon
from tests.web.portal_client import PASSWORD, Client, base_url, customer

BOB = "bob@customer.test"
# Each as it would appear in a link, already percent-encoded for the query string.
HOSTILE = [
    "/%09/evil.test/phish",
    "//evil.test/phish",
    "/%5Cevil.test/phish",
    "%2F%2Fevil.test",
    "/%2F%2Fevil.test",
    "/%252F%252Fevil.test",
    "/%0A/evil.test",
    "/%0D%0A/evil.test",
    "/%E2%80%A8/evil.test",
    "https://evil.test/",
    "https:evil.test",
    "javascript:alert(1)",
    "/%00/evil.test",
    "%20//evil.test",
    "/%5C%5Cevil.test",
]


@pytest.fixture
def config_values(config_values: dict[str, Any]) -> dict[str, Any]:
    config_values["support"]["base_url"] = f"http://127.0.0.1:{config_values['web']['port']}"
    return config_values


@pytest.mark.parametrize("target", HOSTILE)
def test_login_never_redirects_off_site(daemon: RunningDaemon, target: str) -> None:
    customer(daemon.services, BOB)
    client = Client(base_url(daemon))
    form = client.get(f"/login?next={target}")
    assert form.status == 200
    login = client.post("/login", {"email": BOB, "password": PASSWORD, "next": form.field("next")})
    assert (login.status, login.location) == (303, "/tickets")
    # Already logged in, the login page redirects at once: to the same safe place.
    assert client.get(f"/login?next={target}").location == "/tickets"
    # And a crafted form (next sent straight in the POST, not from our page) too.
    again = Client(base_url(daemon))
    again.get("/login")
    raw = again.post("/login", {"email": BOB, "password": PASSWORD, "next": unquote(target)})
    assert raw.location == "/tickets"


def test_our_own_paths_still_work(daemon: RunningDaemon) -> None:
    customer(daemon.services, BOB)
    client = Client(base_url(daemon))
    target = "/tickets/7?show=all"
    form = client.get("/login?next=" + quote(target, safe=""))
    login = client.post("/login", {"email": BOB, "password": PASSWORD, "next": form.field("next")})
    assert (login.status, login.location) == (303, target)


@pytest.mark.parametrize(
    "value", ["/\t/evil.test", "/\\evil", "/\u2028/evil", "/%c3%28", "/%2525252F%2525252Fevil.test"]
)
def test_the_rule_refuses_what_browsers_would_rewrite(value: str) -> None:
    assert not is_local_path(value)
