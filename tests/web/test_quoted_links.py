"""A colleague reads a customer's thread in the portal: the set-password link she quoted,
however her gateway or mail client rewrote it, leaves him nothing to use.

Security audit, HIGH: Carol's reply quoted her acknowledgement as Proofpoint URL Defense
had rewritten it; Bob of the same organization opened the ticket, decoded `u=`, and set
her password. Sophos' base64 `u=` and a quote wrapped onto two lines passed as well.
"""

from __future__ import annotations

import email.policy
import email.utils
import re
import uuid
from collections.abc import Callable
from email.message import EmailMessage
from typing import Any
from urllib.parse import quote

import pytest

from maildesk.tickets.search import words
from tests.conftest import Outbox, RunningDaemon, make_mail, wait_for
from tests.helpers import ticket, tickets
from tests.rewriters import leaks, proofpoint_v2, proofpoint_v3, readings, safelinks, sophos
from tests.rewriters import wrapped as wrapped_at
from tests.web.portal_client import Client, base_url, customer, logged_in

CAROL = "carol@acme.test"
BOB = "bob@acme.test"


def wrapped(url: str) -> str:
    return wrapped_at(url, url.index("token=") + 20)[2:]  # the first "> " is the reply's


QUOTES: dict[str, Callable[[str], str]] = {
    "proofpoint v2": proofpoint_v2,
    "proofpoint v3 of safelinks": lambda url: proofpoint_v3(safelinks(url)),
    "sophos": sophos,
    "wrapped": wrapped,
}


@pytest.fixture
def config_values(config_values: dict[str, Any]) -> dict[str, Any]:
    config_values["support"]["base_url"] = f"http://127.0.0.1:{config_values['web']['port']}"
    return config_values


def carols_quote(daemon: RunningDaemon, outbox: Outbox, rewrite: Callable[[str], str]) -> str:
    """Carol writes in, then answers her acknowledgement quoting its set-password link
    as `rewrite` left it; returns the link."""
    daemon.send(make_mail(subject="VPN down", sender=f"Carol <{CAROL}>"), sender=CAROL)
    ack = wait_for(lambda: next((m for m in outbox.messages() if CAROL in str(m["To"])), None))
    found = re.search(
        r"https?://\S+/account/set-password\?token=\S+", ack.get_body(("plain",)).get_content()
    )
    assert found is not None
    reply = EmailMessage()
    reply["From"] = f"Carol <{CAROL}>"
    reply["To"] = "support@example.test"
    reply["Subject"] = f"Re: {ack['Subject']}"
    reply["Message-ID"] = f"<{uuid.uuid4().hex}@acme.test>"
    reply["In-Reply-To"] = ack["Message-ID"]
    reply["Date"] = email.utils.format_datetime(email.utils.localtime())
    reply.set_content(f"Still down, see below.\n\n> Set a password: {rewrite(found.group())}\n")
    daemon.send(reply.as_bytes(policy=email.policy.SMTP), sender=CAROL)
    return found.group()


@pytest.mark.parametrize("shape", sorted(QUOTES))
def test_a_colleague_finds_no_usable_token_in_a_quoted_link(
    daemon: RunningDaemon, outbox: Outbox, shape: str
) -> None:
    services = daemon.services
    with services.db.transaction() as session:
        services.accounts(session).add_organization("acme.test", "Acme", services.clock.now())
    link = carols_quote(daemon, outbox, QUOTES[shape])
    token = link.partition("token=")[2]
    number = int(wait_for(lambda: tickets(services), what="Carol's ticket")[0]["number"])
    wait_for(lambda: len(ticket(services, number)["messages"]) >= 3, what="Carol's reply")

    customer(services, BOB)
    bob = logged_in(daemon, BOB)
    page = bob.get(f"/tickets/{number}")
    assert page.status == 200 and "Still down, see below." in page.text
    found = bob.get("/tickets?q=" + quote("see below"))
    assert f"/tickets/{number}" in found.text  # with a snippet of the reply
    for text in (page.text, found.text):
        assert not leaks(text, token), shape
        # Whatever looks like a token in any reading of the page does not open her form.
        candidates = {
            m.group()
            for reading in readings(text)
            for m in re.finditer(r"(?<=token=)[\w.-]+|eyJ[\w-]*\.[\w-]+\.[\w-]+", reading)
        }
        for candidate in candidates:
            form = Client(base_url(daemon)).get(f"/account/set-password?token={candidate}")
            assert CAROL not in form.text, candidate
    # Nor does the search index spell the token out, word by word.
    for word in words(token):
        if len(word) >= 8:
            assert f"/tickets/{number}" not in bob.get(f"/tickets?q={word}").text, word
    # The link itself still works for Carol.
    assert CAROL in Client(base_url(daemon)).get(link[link.index("/account") :]).text
