"""Every answer of the web listener is framed by nobody and never sniffed (web/framing.py).

The paid-work page, whose one button approves paid work, could be framed by any site
and its button clicked through a decoy (clickjacking); attachments, a raised
redirect and aiohttp's own error answers sent neither header either. Fetched here over
real HTTP from the running daemon.
"""

from __future__ import annotations

import email.policy
import uuid
from email.message import EmailMessage
from email.message import Message as Headers
from typing import Any

import pytest

from maildesk.models import Ticket
from maildesk.web.framing import with_no_framing
from tests.conftest import RunningDaemon, make_mail, wait_for
from tests.helpers import tickets
from tests.web.portal_client import Client, base_url, customer, logged_in

ALICE = "alice@customer.test"


@pytest.fixture
def config_values(config_values: dict[str, Any]) -> dict[str, Any]:
    config_values["support"]["base_url"] = f"http://127.0.0.1:{config_values['web']['port']}"
    return config_values


def assert_not_framed_nor_sniffed(headers: Headers, what: str) -> None:
    assert headers["X-Frame-Options"] == "DENY", what
    assert headers["X-Content-Type-Options"] == "nosniff", what
    policies = headers.get_all("Content-Security-Policy") or []
    assert len(policies) == 1, what
    assert "frame-ancestors 'none'" in policies[0], what


def test_no_answer_of_the_portal_can_be_framed_or_sniffed(daemon: RunningDaemon) -> None:
    services = daemon.services
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = ALICE, "support@example.test", "Screenshot"
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@customer.test>"
    msg.set_content("See the attached page.")
    msg.add_attachment(b"<html>page</html>", maintype="text", subtype="html", filename="a.html")
    daemon.send(msg.as_bytes(policy=email.policy.SMTP))
    number = int(wait_for(lambda: tickets(services), what="ticket")[0]["number"])
    with services.db.transaction() as session:  # the ticket waits for her approval
        found = session.get(Ticket, number)
        assert found is not None
        found.type, found.paid_state, found.status = "modification", "pending", "waiting_customer"
    customer(services, ALICE)
    alice = logged_in(daemon, ALICE)
    anyone = Client(base_url(daemon))

    ticket_page = alice.get(f"/tickets/{number}")
    assert ticket_page.status == 200
    assert_not_framed_nor_sniffed(ticket_page.headers, "a portal page")

    paid = anyone.get(services.links.url(number, 0, "approve"))
    assert paid.status == 200 and "<button" in paid.text
    assert_not_framed_nor_sniffed(paid.headers, "the paid-work question")

    start = ticket_page.text.index(f"/tickets/{number}/attachments/")
    link = ticket_page.text[start : ticket_page.text.index('"', start)]
    status, body, headers = alice.get_bytes(link)
    assert (status, body) == (200, b"<html>page</html>")
    assert_not_framed_nor_sniffed(headers, "an attachment")
    # The attachment's own policy is kept beside it: it never runs as a page.
    assert headers["Content-Security-Policy"] == "sandbox; frame-ancestors 'none'"

    redirect = anyone.get("/tickets")
    assert redirect.status == 303 and "/login" in redirect.location
    assert_not_framed_nor_sniffed(redirect.headers, "a redirect")

    unknown = anyone.get("/no-such-page")
    assert unknown.status == 404
    assert_not_framed_nor_sniffed(unknown.headers, "aiohttp's 404")
    wrong_method = anyone.get("/logout")
    assert wrong_method.status == 405
    assert_not_framed_nor_sniffed(wrong_method.headers, "aiohttp's 405")
    invalid = anyone.get("/confirm?id=1")
    assert invalid.status == 400
    assert_not_framed_nor_sniffed(invalid.headers, "the confirmation error page")
    refused = anyone.post("/logout", {"a": "b"}, csrf=False, headers={"Content-Type": "text/plain"})
    assert refused.status == 415
    assert_not_framed_nor_sniffed(refused.headers, "a refused body")

    daemon.send(make_mail("Another"))  # the daemon still takes mail: nothing broke


def test_a_policy_that_names_its_frame_ancestors_is_kept_as_it_is() -> None:
    assert with_no_framing("") == "frame-ancestors 'none'"
    assert with_no_framing("sandbox") == "sandbox; frame-ancestors 'none'"
    assert with_no_framing("default-src 'none';") == "default-src 'none'; frame-ancestors 'none'"
    own = "default-src 'self'; Frame-Ancestors https://intranet.example.test"
    assert with_no_framing(own) == own
