"""Account and paid-work tokens are removed in every shape a mail client gives them
(issue 7, #13): Outlook SafeLinks percent-encodes the link, once or twice, and a raw
quoted-printable body cuts it with soft line breaks (`=` at a line's end).
"""

from __future__ import annotations

import email
import email.policy
import logging
import random
from typing import Any
from urllib.parse import quote

import pytest

from maildesk.logs import redact
from maildesk.redaction import redact_links
from maildesk.services import Services
from tests.conftest import make_mail
from tests.helpers import outbox_rows, receive

TOKEN = "eyJwIjoxLCJuIjoiQWJjRGVmIn0.Z2h5cQ.Xy_zW-1234567890abcdefGHIJ"
LINK = f"https://help.example.test/account/set-password?token={TOKEN}"
SAFELINKS = "https://eur01.safelinks.protection.outlook.com/?url="
SHAPES = {
    "plain": LINK,
    "safelinks": f"{SAFELINKS}{quote(LINK, safe='')}&data=05%7C01&reserved=0",
    "safelinks twice": f"{SAFELINKS}{quote(quote(LINK, safe=''), safe='')}",
    "qp soft breaks": LINK[:40] + "=\n" + LINK[40:75] + "=\r\n" + LINK[75:],
    "qp =3D": LINK.replace("token=", "token=3D"),
    "paid link": f"https://help.example.test/paid?token={TOKEN}",
}
AGENT = "agent@example.test"


def pieces(token: str) -> list[str]:
    """Any 12 characters of the token would do to recognize it."""
    return [token[i : i + 12] for i in range(0, len(token) - 12, 6)]


@pytest.mark.parametrize("shape", SHAPES)
def test_every_shape_loses_its_token(shape: str) -> None:
    for where in (redact_links(SHAPES[shape]), redact(f"GET {SHAPES[shape]} 200")):
        assert not any(piece in where for piece in pieces(TOKEN)), where


@pytest.fixture
def config_values(config_values: dict[str, Any]) -> dict[str, Any]:
    config_values["agents"]["addresses"] = [AGENT]
    return config_values


def test_agents_never_see_a_quoted_token(
    services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    body = "My colleague forwarded me this:\n\n" + "\n\n".join(SHAPES.values())
    receive(services, make_mail(body=body))
    to_agent = [r for r in outbox_rows(services) if r.recipients == [AGENT]]
    assert to_agent
    message = email.message_from_bytes(to_agent[0].raw, policy=email.policy.default)
    part = message.get_body(("plain",))  # type: ignore[attr-defined]
    text = str(part.get_content())
    assert "safelinks" in text  # the links are still there, only their tokens are gone
    assert not any(piece in text for piece in pieces(TOKEN)), text


def test_the_quick_check_never_skips_a_token() -> None:
    """Text without "token" (in any case, soft breaks aside) is not scanned: over random
    text of the paths' pieces, soft breaks, encodings and case changes, the result is
    the pattern's own."""
    from maildesk.redaction import _LINK

    pieces = ["/account/set-password?", "/paid?", "to", "TO", "ken", "KEN", "k", "=", "=3D"]
    pieces += ["=\n", "=\r\n", "%2F", "%252F", "%3F", "%3D", TOKEN[:10], "x", " ", "\n", "\u212a"]
    rng = random.Random(23)
    redacted = 0
    for _ in range(20_000):
        weights = [4, 4, 6, 3, 6, 3, 1, 4, 2, 2, 2, 1, 1, 1, 1, 4, 1, 1, 1, 1]
        text = "".join(rng.choices(pieces, weights, k=rng.randrange(1, 30)))
        expected = _LINK.sub(lambda m: m.group(1) + "…", text)
        assert redact_links(text) == expected, ascii(text)
        redacted += expected != text
    assert redacted > 100  # the pattern did match in some of them
