"""A signature with characters outside ASCII is a wrong signature, not a crash.

`hmac.compare_digest` raises TypeError for a str that is not ASCII, so
`/confirm?c=1&s=%C3%A9` answered 500, and so did any form whose CSRF token
was `é`. They are refused like every other bad signature.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

import pytest

from tests.conftest import RunningDaemon
from tests.web.portal_client import Client, base_url


@pytest.fixture
def config_values(config_values: dict[str, Any]) -> dict[str, Any]:
    config_values["support"]["base_url"] = f"http://127.0.0.1:{config_values['web']['port']}"
    return config_values


@pytest.mark.parametrize("signature", ["é", "\u00a0" * 10, "abcdefghi\u0131"])
def test_a_confirm_link_signed_outside_ascii_is_not_valid(
    daemon: RunningDaemon, signature: str
) -> None:
    client = Client(base_url(daemon))
    query = urllib.parse.urlencode({"c": "1", "s": signature})  # s=%C3%A9 …
    assert client.get(f"/confirm?{query}").status == 400
    assert client.post("/confirm", {"c": "1", "s": signature}, csrf=False).status == 400


def test_a_csrf_token_outside_ascii_is_refused(daemon: RunningDaemon) -> None:
    client = Client(base_url(daemon))
    client.get("/login")
    form = {"csrf_token": "é", "email": "bob@customer.test", "password": "anything at all"}
    assert client.post("/login", form, csrf=False).status == 403
