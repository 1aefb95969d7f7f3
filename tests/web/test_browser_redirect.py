"""In a real browser, a phishing `next` ends on our own ticket list (issue 7, #8).

Chromium drops the tab in `/\t/evil.test/phish` and would leave the site: the
HTTP test shows what we send, this one what a browser then does with it.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import RunningDaemon
from tests.web.portal_client import PASSWORD, base_url, customer
from tests.web.test_browser import CHROMIUM, page  # noqa: F401  (the browser fixture)

BOB = "bob@customer.test"

pytestmark = pytest.mark.skipif(
    not __import__("pathlib").Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is missing"
)


@pytest.fixture
def config_values(config_values: dict[str, Any]) -> dict[str, Any]:
    config_values["support"]["base_url"] = f"http://127.0.0.1:{config_values['web']['port']}"
    return config_values


def test_a_phishing_next_lands_on_our_ticket_list(daemon: RunningDaemon, page: Any) -> None:  # noqa: F811
    customer(daemon.services, BOB)
    base = base_url(daemon)
    # Any request that leaves our origin is recorded (and answered by nobody).
    left: list[str] = []
    page.route(
        lambda url: urlsplit(url).netloc != urlsplit(base).netloc,
        lambda route: (left.append(route.request.url), route.abort()),
    )
    page.goto(f"{base}/login?next=/%09/evil.test/phish")
    page.fill("input[name=email]", BOB)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/tickets")
    assert left == []
