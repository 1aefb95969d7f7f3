"""A stranger's subject or name never breaks a header we write, nor adds one (issue 7, #9).

str.splitlines() breaks on more than CR and LF: VT, FF, FS/GS/RS, U+0085,
U+2028 and U+2029. A subject holding one used to pass the inbound clean-up,
and every portal reply on that ticket then failed with 500, because the
reply's Subject header could not be written.
"""

from __future__ import annotations

import base64
import uuid
from typing import Any

import pytest
from sqlalchemy import update

from maildesk.models import Person, Ticket
from maildesk.outbound import headers
from maildesk.outbound.compose import verify_header_block
from maildesk.outbound.headers import HeaderError
from tests.conftest import Outbox, RunningDaemon, wait_for
from tests.helpers import participants, ticket, tickets
from tests.web.portal_client import customer, logged_in

ALICE = "alice@customer.test"
AGENT = "agent@example.test"
MALLORY = "mallory@evil.test"
SEPARATORS = "\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


@pytest.fixture
def config_values(config_values: dict[str, Any]) -> dict[str, Any]:
    config_values["agents"]["addresses"] = [AGENT]
    config_values["support"]["base_url"] = f"http://127.0.0.1:{config_values['web']['port']}"
    return config_values


def encoded(text: str) -> str:
    return f"=?UTF-8?B?{base64.b64encode(text.encode()).decode()}?="


def mail_with_separators() -> bytes:
    """What a hostile (or merely odd) client sends: separators inside encoded words."""
    subject = encoded("Printer\u2028broken\x85on floor\u20292" + SEPARATORS + "end")
    name = encoded("Alice\u2028Customer\x85")
    return (
        f"From: {name} <{ALICE}>\r\n"
        "To: support@example.test\r\n"
        f"Subject: {subject}\r\n"
        f"Message-ID: <{uuid.uuid4().hex}@customer.test>\r\n"
        "Date: Mon, 30 Nov 2026 10:00:00 +0100\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "\r\n"
        "The printer prints only blank pages.\r\n"
    ).encode()


def test_a_portal_reply_works_on_a_ticket_whose_subject_holds_line_separators(
    daemon: RunningDaemon, outbox: Outbox
) -> None:
    services = daemon.services
    daemon.send(mail_with_separators())
    wait_for(lambda: tickets(services), what="ticket 1")
    subject = ticket(services, 1)["subject"]
    assert not any(ch in subject for ch in SEPARATORS + "\r\n"), repr(subject)
    assert "Printer broken on floor 2" in subject

    customer(services, ALICE)
    with services.db.transaction() as session:  # a name and subject stored by older code
        session.execute(update(Person).values(name="Alice\u2028Customer\x85"))
        session.execute(update(Ticket).values(subject="Printer\u2028broken\x85again\u2029"))
    alice = logged_in(daemon, ALICE)
    alice.get("/tickets/1")
    page = alice.post("/tickets/1/reply", {"text": "Still blank, sorry."})
    assert (page.status, page.location) == (303, "/tickets/1?sent=1"), page.text
    wait_for(
        lambda: any("Still blank" in m["body_text"] for m in ticket(services, 1)["messages"]),
        what="the web reply in ticket 1",
    )
    # The agent is told, with a subject on one line.
    told = wait_for(
        lambda: [m for m in outbox.messages() if AGENT in str(m["To"]) and "Still" in str(m)],
        what="the agent's notification of the reply",
    )
    assert not any(ch in str(told[0]["Subject"]) for ch in SEPARATORS)


def test_a_forged_subject_writes_no_header_into_the_customers_portal_reply(
    daemon: RunningDaemon,
) -> None:
    """Mallory opens a ticket in Alice's name whose subject decodes to an encoded word of
    a line break and a Cc of his. The stdlib's writer, on this Python, turned that into
    a real Cc of Alice's portal reply (CVE-2024-6923); and as the reply carries the
    ticket's signed address, the pipeline believed it and made him a participant."""
    services = daemon.services
    forged = (
        f"From: Alice Customer <{ALICE}>\r\n"
        "To: support@example.test\r\n"
        f"Subject: {encoded(f'Your invoice =?UTF-8?Q?=0D=0A?=Cc: {MALLORY}')}\r\n"
        "Message-ID: <forged-1@evil.test>\r\n"
        "Date: Mon, 30 Nov 2026 10:00:00 +0100\r\n"
        "\r\n"
        "Please see the attached invoice.\r\n"
    ).encode()
    daemon.send(forged, sender=MALLORY)
    wait_for(lambda: tickets(services), what="ticket 1")
    subject = ticket(services, 1)["subject"]
    assert subject == f"Your invoice =?UTF-8?Q?=0D=0A?=Cc: {MALLORY}"  # text, as written

    customer(services, ALICE)
    alice = logged_in(daemon, ALICE)
    alice.get("/tickets/1")
    page = alice.post("/tickets/1/reply", {"text": "I did not send this."})
    assert (page.status, page.location) == (303, "/tickets/1?sent=1"), page.text
    reply = wait_for(
        lambda: next(
            (m for m in ticket(services, 1)["messages"] if "did not" in m["body_text"]), None
        ),
        what="Alice's portal reply in ticket 1",
    )
    assert reply["cc"] == [] and reply["to"] == ["support@example.test"]
    assert reply["subject"] == f"Re: [#1] {subject}"
    assert participants(services, 1) == {ALICE}


@pytest.mark.parametrize("separator", list(SEPARATORS + "\r\n\0"))
def test_no_header_we_write_holds_a_line_separator(separator: str) -> None:
    assert headers.breaks_line(f"a{separator}b")
    # Customer text is folded to a space, never written as a break.
    line = headers.unstructured("Subject", f"Printer{separator}broken")
    assert "Printer broken" in line or "=?" in line
    # And the last check refuses a block whose decoded value would break.
    block = f"Subject: {encoded('a' + separator + 'b')}\r\n".encode()
    with pytest.raises(HeaderError):
        verify_header_block(block, ["Subject"])
