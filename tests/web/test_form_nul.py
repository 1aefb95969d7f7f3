"""A form field holding NUL, from anyone who loads a page: PostgreSQL's text holds
none, and the login form's address went into a query as typed, so it answered 500
there (the forgotten-password form logged an error, after its answer). The other
forms and queries are held to the same: an answer, never a server error."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import RunningDaemon
from tests.web.portal_client import PASSWORD, Client, base_url, customer, logged_in

ALICE = "alice@customer.test"


@pytest.fixture
def config_values(config_values: dict[str, Any]) -> dict[str, Any]:
    config_values["support"]["base_url"] = f"http://127.0.0.1:{config_values['web']['port']}"
    return config_values


@pytest.mark.parametrize(
    ("page", "fields"),
    [
        ("/login", {"email": "alice\0@customer.test", "password": "x"}),
        ("/login", {"email": ALICE, "password": "pass\0word"}),
    ],
)
def test_a_nul_in_a_form_before_login_is_no_server_error(
    daemon: RunningDaemon, page: str, fields: dict[str, str]
) -> None:
    customer(daemon.services, ALICE)
    client = Client(base_url(daemon))
    client.get(page)
    answer = client.post(page, fields)
    assert answer.status < 500, answer.text


@pytest.mark.parametrize(
    ("page", "fields"),
    [
        ("/account/name", {"name": "Alice\0Customer"}),
        ("/account/language", {"language": "cs\0"}),
        ("/tickets/1/reply", {"body": "More\0 details"}),
    ],
)
def test_a_nul_in_a_form_after_login_is_no_server_error(
    daemon: RunningDaemon, page: str, fields: dict[str, str]
) -> None:
    customer(daemon.services, ALICE)
    client = logged_in(daemon, ALICE)
    client.get(page if "/tickets/" not in page else "/tickets")
    answer = client.post(page, fields)
    assert answer.status < 500, answer.text


@pytest.mark.parametrize("query", ["q=printer%00", "creator=alice%00%40customer.test"])
def test_a_nul_in_a_query_is_no_server_error(daemon: RunningDaemon, query: str) -> None:
    customer(daemon.services, ALICE)
    client = logged_in(daemon, ALICE)
    answer = client.get(f"/tickets?{query}")
    assert answer.status < 500, answer.text


def test_an_address_with_a_unicode_domain_logs_in_as_it_is_stored(
    daemon: RunningDaemon,
) -> None:
    """Mail from a Unicode domain is stored under its A-label; typed as the customer
    knows it, the address finds that account."""
    customer(daemon.services, "alice@xn--k-cia6w.cz")
    client = Client(base_url(daemon))
    client.get("/login")
    answer = client.post("/login", {"email": "Alice@čšk.cz", "password": PASSWORD})
    assert answer.status == 303, answer.text


def test_a_domain_that_idna_2003_maps_away_reaches_only_its_own_account(
    daemon: RunningDaemon,
) -> None:
    """Python's "idna" codec is IDNA 2003: `straße.de` became `strasse.de`, another
    domain, and the customer of one typed her way into the other's account (and its
    set-password links went there)."""
    customer(daemon.services, "alice@strasse.de")
    client = Client(base_url(daemon))
    client.get("/login")
    answer = client.post("/login", {"email": "alice@straße.de", "password": PASSWORD})
    assert answer.status != 303
    customer(daemon.services, "alice@xn--strae-oqa.de")
    client.get("/login")
    answer = client.post("/login", {"email": "alice@straße.de", "password": PASSWORD})
    assert answer.status == 303, answer.text
