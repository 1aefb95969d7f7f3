"""Sessions live on the server: logout ends them for good (issue 7, #13).

A session cookie copied off a shared computer, a proxy log or a stolen
laptop used to keep working after its owner logged out, because the cookie
alone was the session. Now the server keeps the session (only a hash of its
id), and logout or a new password deletes it.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from maildesk.models import WebSession
from maildesk.web.session import COOKIE
from tests.conftest import RunningDaemon
from tests.web.portal_client import Client, base_url, customer, invitation, logged_in

BOB = "bob@customer.test"


@pytest.fixture
def config_values(config_values: dict[str, Any]) -> dict[str, Any]:
    config_values["support"]["base_url"] = f"http://127.0.0.1:{config_values['web']['port']}"
    return config_values


def copy_of(daemon: RunningDaemon, client: Client) -> Client:
    """Another browser presenting the same session cookie (a copied cookie)."""
    value = client.cookie(COOKIE)
    assert value
    thief = Client(base_url(daemon))
    thief.get("/login", headers={"Cookie": f"{COOKIE}={value}"})
    thief.jar.clear()
    thief.extra = {"Cookie": f"{COOKIE}={value}"}  # type: ignore[attr-defined]
    return thief


def tickets_page(client: Client) -> int:
    return client.get("/tickets", headers=getattr(client, "extra", None)).status


def test_a_copied_cookie_stops_working_when_its_owner_logs_out(daemon: RunningDaemon) -> None:
    customer(daemon.services, BOB)
    bob = logged_in(daemon, BOB)
    thief = copy_of(daemon, bob)
    assert tickets_page(thief) == 200  # the copy works while the session lives

    bob.get("/tickets")
    assert bob.post("/logout", {}).location == "/login"
    assert tickets_page(bob) == 303
    assert tickets_page(thief) == 303  # ended on the server, not just in bob's browser


def test_a_new_password_ends_every_other_session_and_the_database_holds_no_cookie(
    daemon: RunningDaemon,
) -> None:
    services = daemon.services
    customer(services, BOB)
    laptop = logged_in(daemon, BOB)
    thief = copy_of(daemon, laptop)
    cookie = laptop.cookie(COOKIE)
    with services.db.transaction() as session:
        stored = list(session.scalars(select(WebSession.id_hash)))
    assert len(stored) == 1 and cookie not in stored[0]

    phone = Client(base_url(daemon))
    token = phone.get(invitation(services, BOB)).field("token")
    new = "another long passphrase"
    phone.post("/account/set-password", {"token": token, "password": new, "confirm": new})
    assert tickets_page(phone) == 200
    assert tickets_page(laptop) == 303 and tickets_page(thief) == 303
    with services.db.transaction() as session:
        assert len(list(session.scalars(select(WebSession.id_hash)))) == 1
