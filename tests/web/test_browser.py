"""A real browser (Debian's chromium, driven by Playwright) walks the customer's whole way.

The link comes from the acknowledgement in the outbox, as the customer would
click it; the reply typed into the page must reach the ticket through the
mail pipeline and notify the agent. Chromium is the system's own
(`/usr/bin/chromium`, installed by .ci/run): Playwright never downloads one.
"""

from __future__ import annotations

from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from maildesk.models import Person, Ticket
from tests.conftest import Outbox, RunningDaemon, make_mail, wait_for
from tests.helpers import ticket, tickets

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
AGENT = "agent@example.test"
ALICE = "alice@customer.test"
GOOD_PASSWORD = "blue kettle on a quiet shelf"
REPLY = "Restarting it helped, but the toner light still blinks."

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is missing (.ci/run installs chromium)"
)


@pytest.fixture
def config_values(config_values: dict[str, Any]) -> dict[str, Any]:
    config_values["agents"]["addresses"] = [AGENT]
    config_values["support"]["base_url"] = f"http://127.0.0.1:{config_values['web']['port']}"
    return config_values


@pytest.fixture
def page() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        # A phone-sized window: the pages must read well there.
        context = browser.new_context(viewport={"width": 390, "height": 844}, locale="en-US")
        tab = context.new_page()
        tab.set_default_timeout(15_000)
        try:
            yield tab
        finally:
            context.close()
            browser.close()


def plain(message: EmailMessage) -> str:
    body = message.get_body(("plain",))
    return str(body.get_content()) if body is not None else ""


def invitation_link(outbox: Outbox) -> str:
    """The set-password link in Alice's acknowledgement, as she would click it."""

    def acknowledgement() -> EmailMessage | None:
        return next((m for m in outbox.messages() if ALICE in str(m["To"])), None)

    text = plain(wait_for(acknowledgement, what="the acknowledgement"))
    links = [w for w in text.split() if "/account/set-password?token=" in w]
    assert links, "the acknowledgement offers no account"
    return links[0]


def fits_the_screen(tab: Any) -> bool:
    return bool(tab.evaluate("document.documentElement.scrollWidth <= window.innerWidth"))


def test_a_customer_sets_a_password_and_replies_from_the_browser(
    daemon: RunningDaemon, outbox: Outbox, page: Any
) -> None:
    services = daemon.services
    daemon.send(make_mail(subject="Printer broken"))
    link = invitation_link(outbox)
    daemon.send(make_mail(subject="Old invoice question"))
    wait_for(lambda: len(tickets(services)) == 2, what="two tickets")
    with services.db.transaction() as session:
        old = session.get(Ticket, 2)
        assert old is not None
        old.status = "resolved"

    # The link opens the password page with its rules.
    page.goto(link)
    assert "at least 12 characters" in page.inner_text("#rules")
    assert fits_the_screen(page)
    page.fill("#password", "too short")
    page.fill("#confirm", "too short")
    page.click("button[type=submit]:has-text('Set password')")
    assert "too short" in page.inner_text("[role=alert]")

    page.fill("#password", GOOD_PASSWORD)
    page.fill("#confirm", GOOD_PASSWORD)
    page.click("button[type=submit]:has-text('Set password')")
    page.wait_for_url("**/tickets")
    assert page.is_visible("text=Log out")
    assert page.locator("li.ticket").count() == 2
    assert fits_the_screen(page)

    # The filters in the side column.
    page.click("text=Open or waiting")
    page.wait_for_url("**/tickets?show=open")
    assert page.locator("li.ticket").all_inner_texts()[0].startswith("#1 Printer broken")
    assert page.locator("li.ticket").count() == 1
    page.click("text=Resolved or closed")
    page.wait_for_url("**/tickets?show=closed")
    assert "Old invoice question" in page.inner_text("ul.tickets")
    assert "Resolved, waiting for confirmation" in page.inner_text("ul.tickets")
    page.click("text=All tickets")
    page.wait_for_url("**/tickets?show=all")

    # The ticket, and a reply through its form.
    page.click("text=#1 Printer broken")
    page.wait_for_url("**/tickets/1")
    assert "prints only blank pages" in page.inner_text("main")
    page.fill("#text", REPLY)
    page.click("button:has-text('Send reply')")
    page.wait_for_url("**/tickets/1?sent=1")
    assert "Your reply was sent" in page.inner_text("[role=status]")

    wait_for(
        lambda: any(REPLY in m["body_text"] for m in ticket(services, 1)["messages"]),
        what="the reply in ticket 1",
    )
    wait_for(
        lambda: any(AGENT in str(m["To"]) and REPLY in plain(m) for m in outbox.messages()),
        what="the agent's notification of the reply",
    )
    page.reload()
    assert REPLY in page.inner_text("main")

    # The name our mail greets her by, typed by herself: no mail changes it now.
    page.click("header >> text=Name")
    page.wait_for_url("**/account/name")
    assert fits_the_screen(page)
    page.fill("#name", "Alice Nováková")
    page.click("button[type=submit]:has-text('Save')")
    page.wait_for_url("**/account/name?saved=1")
    assert "Saved." in page.inner_text("main")
    assert page.input_value("#name") == "Alice Nováková"
    with services.db.transaction() as session:
        alice = session.scalars(select(Person).where(Person.email == ALICE)).one()
        assert (alice.name, alice.name_source) == ("Alice Nováková", "set")

    # The link worked once.
    page.goto(link)
    assert "This link no longer works" in page.inner_text("h1")
    assert page.is_visible("form[action='/account/forgot']")
