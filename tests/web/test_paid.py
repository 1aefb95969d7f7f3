"""The signed approve/decline link for paid work, over real HTTP to the running daemon."""

from __future__ import annotations

import html
import re
import urllib.error
import urllib.parse
import urllib.request
from email.message import EmailMessage
from typing import Any

import pytest

from maildesk.models import Ticket
from tests.conftest import Outbox, RunningDaemon, make_mail, wait_for
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
    return services.links.url(1, 0, "approve")


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


# -- rounds: every #paid is its own question (issue 7, #6) -----------------------------

AGENT = "agent@example.test"
ALICE = "alice@customer.test"


def _plain(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    return str(part.get_content()) if part is not None else ""


def _agent_says(daemon: RunningDaemon, outbox: Outbox, text: str) -> None:
    """The agent answers ticket 1's first notification from their mail client."""
    notification = wait_for(
        lambda: next((m for m in outbox.messages() if AGENT in str(m["To"])), None),
        what="the agent's notification",
    )
    reply_to = notification["Reply-To"].addresses[0].addr_spec
    raw = make_mail(
        subject=f"Re: {notification['Subject']}",
        sender=f"Agnes Agent <{AGENT}>",
        to=reply_to,
        body=text,
        In_Reply_To=notification["Message-ID"],
        References=notification["Message-ID"],
    )
    daemon.send(raw, sender=AGENT, recipients=(reply_to,))


def _paid_notice(daemon: RunningDaemon, outbox: Outbox, price: str) -> EmailMessage:
    """Ticket 1's paid-work notice that names `price`, as Alice receives it."""
    return wait_for(
        lambda: next(
            (m for m in outbox.messages() if ALICE in str(m["To"]) and price in _plain(m)),
            None,
        ),
        what=f"the paid-work notice for {price}",
    )


def _link(notice: EmailMessage, answer: str) -> str:
    found = re.search(rf"To {answer}, open (\S+)", _plain(notice))
    assert found is not None, _plain(notice)
    return found.group(1)


def _press(link: str) -> tuple[int, str]:
    """Open the link and press the page's button, as a customer (or whoever holds it) would."""
    status, page, _ = fetch(link)
    token = re.search(r'name="token" value="([^"]+)"', page)
    if token is None:
        return status, page
    base = link.split("/paid?")[0]
    status, page, _ = fetch(f"{base}/paid", {"token": html.unescape(token.group(1))})
    return status, page


def _two_rounds(daemon: RunningDaemon, outbox: Outbox) -> tuple[EmailMessage, EmailMessage]:
    """Alice declines a 100 EUR request; the agent then asks for 40,000 EUR."""
    services = daemon.services
    daemon.send(make_mail())
    wait_for(lambda: tickets(services), what="ticket 1")
    _agent_says(daemon, outbox, "#type modification\n#paid 100 EUR\nA small change.")
    first = _paid_notice(daemon, outbox, "100 EUR")
    assert _press(_link(first, "decline"))[0] == 200
    assert ticket(services, 1)["paid"] == "declined"
    _agent_says(daemon, outbox, "#paid 40,000 EUR\nThe whole rewrite, then.")
    second = _paid_notice(daemon, outbox, "40,000 EUR")
    wait_for(lambda: ticket(services, 1)["paid"] == "pending", what="the second round")
    return first, second


def test_a_link_from_an_earlier_round_never_answers_a_later_one(
    daemon: RunningDaemon, outbox: Outbox
) -> None:
    first, second = _two_rounds(daemon, outbox)

    # The old approve link (mailed for 100 EUR) is dead: neither its page nor its button.
    status, page, _ = fetch(_link(first, "approve"))
    assert status == 410 and "earlier request" in page
    assert _press(_link(first, "approve"))[0] == 410
    assert ticket(daemon.services, 1)["paid"] == "pending"

    # The current link shows what is being approved, and works.
    status, page, _ = fetch(_link(second, "approve"))
    assert status == 200 and "40,000 EUR" in page
    assert _press(_link(second, "approve"))[0] == 200
    assert ticket(daemon.services, 1)["paid"] == "approved"


def test_a_mailed_approve_of_an_earlier_round_does_not_approve_the_later_one(
    daemon: RunningDaemon, outbox: Outbox
) -> None:
    first, second = _two_rounds(daemon, outbox)
    services = daemon.services

    def answer(notice: EmailMessage, text: str) -> None:
        before = len(ticket(services, 1)["messages"])
        raw = make_mail(
            subject=f"Re: {notice['Subject']}",
            body=text,
            In_Reply_To=notice["Message-ID"],
            References=notice["Message-ID"],
        )
        daemon.send(raw)
        wait_for(lambda: len(ticket(services, 1)["messages"]) > before, what="the answer")

    answer(first, "APPROVE")  # late, and for 100 EUR
    assert ticket(services, 1)["paid"] == "pending"
    answer(second, "APPROVE")
    assert ticket(services, 1)["paid"] == "approved"
