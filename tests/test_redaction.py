"""Account and paid-work tokens are removed in every shape a mail client or a link
rewriter gives them (issue 7, #13): Outlook SafeLinks percent-encodes the link, once or
twice, and a raw quoted-printable body cuts it with soft line breaks (`=` at a line's
end). Proofpoint URL Defense v2 and v3, Sophos' base64 and a quote wrapped onto two
lines passed unredacted, and a colleague of the customer took over her account from the
portal (security audit, HIGH): the token is now found by its own shape wherever it is.
"""

from __future__ import annotations

import base64
import email
import email.policy
import logging
import random
import re
from typing import Any
from urllib.parse import quote

import pytest

from maildesk.clock import ManualClock
from maildesk.logs import redact
from maildesk.redaction import LINK_SLACK, _replaced, _spans, redact_head, redact_links
from maildesk.services import Services
from maildesk.signing import signed_serializer
from maildesk.tickets import search
from tests.conftest import make_mail
from tests.helpers import outbox_rows, receive
from tests.rewriters import (
    SAFELINKS,
    leaks,
    pieces,
    proofpoint_v2,
    proofpoint_v3,
    safelinks,
    sophos,
    wrapped,
)

# Tokens as maildesk makes them (accounts.py, web/links.py): payload, timestamp, signature.
TOKEN = signed_serializer("k", "maildesk.invitation", ManualClock()).dumps(
    {"p": 1007, "n": "hal22SDW8pPi191HTmipGA"}
)
PAID = signed_serializer("k", "maildesk.paid-answer", ManualClock()).dumps(
    {"t": 42, "r": 1, "a": "approve"}
)
LINK = f"https://help.example.test/account/set-password?token={TOKEN}"
PAID_LINK = f"https://help.example.test/paid?token={PAID}"
CUT = LINK.index("token=") + 8  # inside the token's "eyJ"
SHAPES = {
    "plain": LINK,
    "safelinks": safelinks(LINK),
    "safelinks twice": f"{SAFELINKS}{quote(quote(LINK, safe=''), safe='')}",
    "qp soft breaks": LINK[:40] + "=\n" + LINK[40:75] + "=\r\n" + LINK[75:],
    "qp =3D": LINK.replace("token=", "token=3D"),
    "paid link": PAID_LINK,
    "proofpoint v2": proofpoint_v2(LINK),
    "proofpoint v2, paid link": proofpoint_v2(PAID_LINK),
    "proofpoint v2 of safelinks": proofpoint_v2(safelinks(LINK)),
    "proofpoint v2, quoted-printable": proofpoint_v2(LINK).replace("=", "=3D")[:70]
    + "=\n"
    + proofpoint_v2(LINK).replace("=", "=3D")[70:],
    "proofpoint v3": proofpoint_v3(LINK),
    "proofpoint v3 of safelinks": proofpoint_v3(safelinks(LINK)),
    "proofpoint v3, token starred": proofpoint_v3(LINK, starred="-_"),
    "proofpoint v3, a run starred": proofpoint_v3(LINK.replace("?", "?##&"), starred="#-"),
    "sophos": sophos(LINK),
    "sophos, url-safe": "https://x.test/?u=" + base64.urlsafe_b64encode(LINK.encode()).decode(),
    "sophos of proofpoint": sophos(proofpoint_v2(LINK)),
    "base64 of the token alone": base64.b64encode(f"{TOKEN}x".encode()).decode().rstrip("="),
    "sophos, wrapped": wrapped(sophos(LINK), 70, 140),
    "wrapped": wrapped(LINK, 60),
    "wrapped in eyJ": wrapped(LINK, CUT),
    "wrapped three times": wrapped(LINK, 50, 90, 120, prefix="> > "),
    "wrapped and quoted-printable": wrapped(LINK, 60).replace("token=", "token=3D"),
    "bare token": f"the code was {TOKEN}, thanks",
    "in html": f'<a href="{LINK}">Set a password</a>',
    "compressed": "x ."
    + base64.urlsafe_b64encode(b"x\x9c" + bytes(range(40))).decode().rstrip("=")
    + TOKEN[TOKEN.index(".") :]
    + " y",
}
AGENT = "agent@example.test"


@pytest.mark.parametrize("shape", SHAPES)
def test_every_shape_loses_its_token(shape: str) -> None:
    token = PAID if "paid" in shape else TOKEN
    assert leaks(SHAPES[shape], token)  # the test can see it before
    assert "…" in redact_links(SHAPES[shape])
    for where in (redact_links(SHAPES[shape]), redact(f"GET {SHAPES[shape]} 200")):
        assert not leaks(where, token), where


def test_what_surrounds_a_token_stays() -> None:
    text = "Still down, see below.\n\n> Set a password: " + SHAPES["proofpoint v2"] + "\n> Bye"
    assert redact_links(text) == (
        "Still down, see below.\n\n> Set a password: "
        "https://urldefense.proofpoint.com/v2/url?u=https-3A__help.example.test_account_"
        "set-2Dpassword-3Ftoken-3D…&d=DwMFaQ&c=euGZstcaTDllvimEN8b7jXrwqOf-v5A_CdpgnVfiiMM"
        "&r=Pz4xy&m=kJ9s&s=Qx1v&e=\n> Bye"
    )
    # A wrapped token goes with the line break inside it; the next line stays.
    assert redact_links(SHAPES["wrapped"] + "\n> Thanks") == (
        "> https://help.example.test/account/set-password?token=…\n> Thanks"
    )
    # A base64 run that holds one goes whole, and only it.
    assert redact_links(SHAPES["sophos"]).startswith(
        "https://eu-central-1.protection.sophos.com?d=example.test&u=…"
    )
    assert redact_links(SHAPES["sophos"]).endswith(
        "&i=NjNhOGE5&t=dWpHc2Rt&h=8b2f9d0c&s=AVNPUEhUT0NFTkNSWVBUSVaWMr"
    )


ORDINARY = {
    "a JWT": "Authorization: Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODk"
    "wIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
    "a JWT wrapped": wrapped("token: eyJhbGciOiJub25lIn0.eyJzdWIiOiJhYmMifQ.", 20),
    "words": "Hey Jo, the keyJ and the eJ key; e\nJ; ey\n> Jane wrote: .eJ. x.y.z",
    "a safelinks link": f"{SAFELINKS}{quote('https://www.example.com/some/page?a=1', safe='')}"
    "&data=05%7C01%7Cuser%40example.com%7C6f2d%7C72f988bf86f141af91ab2d7cd011db47%7C1%7C0%7C638"
    "%7CUnknown%7CTWFpbGZsb3d8eyJWIjoiMC4wLjAwMDAiLCJQIjoiV2luMzIiLCJBTiI6Ik1haWwiLCJXVCI6Mn0%3D"
    "%7C3000%7C%7C%7C&sdata=abcdefghijklmnopqrstuvwxyzABCDEFGHIJ%2BKLM%3D&reserved=0",
    "a proofpoint v2 link": proofpoint_v2("https://www.example.com/a-b_c?x=1&y=2"),
    "a proofpoint v3 link": proofpoint_v3("https://www.example.com/a#frag%20x"),
    "a sophos link": sophos("https://www.example.com/some/long/path?with=query&and=more"),
    "base64 of random bytes": base64.b64encode(random.Random(1).randbytes(3000)).decode(),
    "a long hash": "sha256:" + "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "itsdangerous-like, a long timestamp": "eyJhIjoxfQ.Z2h5cQabc.Xy_zW-1234567890abcdefGHIJK",
}


@pytest.mark.parametrize("name", ORDINARY)
def test_ordinary_text_is_left_alone(name: str) -> None:
    assert redact_links(ORDINARY[name]) == ORDINARY[name]


def test_a_token_cut_by_a_limit_goes_whole() -> None:
    """A body is cut before it is indexed or shown: a token across the cut is not
    recognized in the part before it, which would leave all but a few characters."""
    text = "x" * 100 + SHAPES["sophos"] + " after"
    for limit in range(90, len(text) + 2, 7):
        head = redact_head(text, limit)
        assert not leaks(head, TOKEN), limit
        assert head.startswith("x" * min(limit, 100))
        assert len(head) <= limit
    assert redact_head("y" * 10 + LINK, 50) == "y" * 10 + LINK[:40]  # the path only
    assert redact_head(LINK + " " + "y" * 10, len(LINK) + 5) == redact_links(LINK) + " yyyy"
    far = "y" * (LINK_SLACK + 10)
    assert redact_head(far + LINK, 5) == "yyyyy"


def test_the_search_index_holds_no_token_word() -> None:
    for shape in SHAPES:
        token = PAID if "paid" in shape else TOKEN
        document = search.document(f"Re: {SHAPES['plain']}", f"See below:\n\n> {SHAPES[shape]}")
        parts = [w for w in re.split(r"[^A-Za-z0-9]+", token) if len(w) > 3]
        assert not any(search.fold(part) in document.split() for part in parts), shape
        assert "password" in document.split()
        snippet = search.snippet(f"See below:\n\n> {SHAPES[shape]}", ["below"])
        assert not leaks(snippet, token), shape


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


def test_the_quick_checks_never_skip_a_token() -> None:
    """Text without "token" (in any case, soft breaks aside) is not matched against our
    paths, and text without a token's start (`eyJ`, `eJ`, line breaks aside) is not
    decoded for tokens: over random text of the paths' pieces, a token's, line breaks,
    encodings and case changes, and over links cut by line breaks and escapes at random,
    the result is that of every step run on every text."""
    pieces = ["/account/set-password?", "/paid?", "to", "TO", "ken", "KEN", "k", "=", "=3D"]
    pieces += ["=\n", "=\r\n", "%2F", "%252F", "%3F", "%3D", TOKEN[:10], "x", " ", "\n", "\u212a"]
    pieces += ["e", "y", "J", "eyJ", ".", "\n> ", "\r\n> > ", "\r", "%2E", "=2E", "=0A", "-"]
    pieces += [TOKEN[3:20], TOKEN[20 : TOKEN.index(".")], TOKEN[TOKEN.index(".") :], "eJwz"]
    weights = [4, 4, 6, 3, 6, 3, 1, 4, 2, 2, 2, 1, 1, 1, 1, 4, 1, 1, 1, 1]
    weights += [4, 3, 4, 2, 3, 3, 2, 1, 1, 1, 1, 1, 2, 2, 2, 1]
    breaks = ["=\n", "=\r\n", "\n", "\r\n", "\n> ", "\n>\n> ", "\r\n > ", "=\n> ", "\r", " ", "%0A"]
    rng = random.Random(23)
    redacted = cut = 0
    for i in range(20_000):
        if i % 2:
            text = "".join(rng.choices(pieces, weights, k=rng.randrange(1, 40)))
        else:
            text = rng.choice([LINK, TOKEN, "." + TOKEN.partition(".")[2], SHAPES["proofpoint v2"]])
            for _ in range(rng.randrange(1, 4)):
                at = rng.randrange(len(text))
                text = text[:at] + rng.choice(breaks) + text[at:]
        expected = _replaced(text, _spans(text, quick=False), len(text))
        assert redact_links(text) == expected, ascii(text)
        redacted += expected != text
        cut += "eyJ" not in text and "eJ" not in text and expected != text
    assert redacted > 5000 and cut > 100  # the steps did find tokens, some with a cut start
