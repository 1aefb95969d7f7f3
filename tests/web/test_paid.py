"""The signed approve/decline link for paid work, over real HTTP to the running daemon."""

from __future__ import annotations

import re
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import pytest

from maildesk.models import Ticket
from tests.conftest import RunningDaemon, make_mail, wait_for
from tests.helpers import ticket, tickets


@pytest.fixture
def config_values(config_values: dict[str, Any]) -> dict[str, Any]:
    config_values["agents"]["addresses"] = ["agent@example.test"]
    web = config_values["web"]
    config_values["support"]["base_url"] = f"http://127.0.0.1:{web['port']}"
    return config_values


def pending_paid_ticket(daemon: RunningDaemon) -> str:
    """Ticket 1 waits for the customer's approval; returns the approve link."""
    services = daemon.services
    daemon.send(make_mail())
    wait_for(lambda: tickets(services), what="ticket 1")
    with services.db.transaction() as session:
        found = session.get(Ticket, 1)
        assert found is not None
        found.type, found.paid_state, found.status = "modification", "pending", "waiting_customer"
    return services.links.url(1, "approve")


def fetch(url: str, data: dict[str, str] | None = None) -> tuple[int, str, Any]:
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    try:
        with urllib.request.urlopen(url, data=body, timeout=10) as response:
            return response.status, response.read().decode(), response.headers
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(), error.headers


def test_link_shows_a_question_then_the_button_approves_once(daemon: RunningDaemon) -> None:
    link = pending_paid_ticket(daemon)

    status, page, headers = fetch(link)
    assert status == 200
    assert headers["Referrer-Policy"] == "no-referrer"
    assert ticket(daemon.services, 1)["paid"] == "pending"  # GET changes nothing
    token = re.search(r'name="token" value="([^"]+)"', page)
    assert token is not None

    base = daemon.services.settings.support.base_url
    status, page, _ = fetch(f"{base}/paid", {"token": token.group(1)})
    assert status == 200 and "Thank you" in page
    state = ticket(daemon.services, 1)
    assert (state["paid"], state["status"]) == ("approved", "accepted")
    assert state["events"][-2]["via"] == "web"

    status, _page, _ = fetch(f"{base}/paid", {"token": token.group(1)})
    assert status == 409  # a link works once


def test_tampered_link_is_refused(daemon: RunningDaemon) -> None:
    link = pending_paid_ticket(daemon)
    status, page, _ = fetch(link[:-3] + "abc")
    assert status == 400 and "not valid" in page
    assert ticket(daemon.services, 1)["paid"] == "pending"
