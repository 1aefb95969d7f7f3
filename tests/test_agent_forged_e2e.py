"""A stranger writing From an agent's address, end to end over real SMTP.

Nothing in the mail proves the agent (the customer's own Message-ID, her reply
address, an Authentication-Results header our MTA did not write, a guessed subject
tag): the mail is a customer message flagged `forged-agent`, no command runs, nothing
is relayed, and the real agent is warned.
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import uuid
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Outbox, RunningDaemon
from tests.mailclient import (
    AGENT,
    AGENT_FROM,
    ALICE,
    SUPPORT,
    Opened,
    desk_config,
    mail_to,
    open_ticket,
    queued_to,
    show,
)


@pytest.fixture
def config_values(config_values: dict[str, Any]) -> dict[str, Any]:
    return desk_config(config_values, AGENT)


FORGED_BODY = "#status closed\n#assign me\nDone, closing this. Bye.\n\nAgnes\n"


def forged_mail(headers: dict[str, str]) -> bytes:
    msg = EmailMessage()
    msg["From"] = AGENT_FROM
    msg["Date"] = email.utils.format_datetime(email.utils.localtime())
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@forger.test>"
    for name, value in headers.items():
        msg[name] = value
    msg.set_content(FORGED_BODY)
    return msg.as_bytes(policy=email.policy.SMTP)


FORGERIES: dict[str, Callable[[Opened], dict[str, str]]] = {
    # Answers the customer's own message: the Message-ID is no secret from a customer.
    "answers-the-customers-message": lambda o: {
        "To": SUPPORT,
        "Subject": "Re: [#1] Printer broken",
        "In-Reply-To": f"<{o.customer_message_id}>",
        "References": f"<{o.customer_message_id}>",
    },
    # Sent to the customer's signed reply address (her acknowledgement's Reply-To).
    "to-the-customers-reply-token": lambda o: {
        "To": str(o.ack.msg["Reply-To"]),
        "Subject": "Re: [#1] Printer broken",
    },
    # Claims a DKIM/DMARC pass, but not in a header our own MTA wrote.
    "untrusted-authentication-results": lambda o: {
        "Authentication-Results": (
            "mx.evil.test; dkim=pass header.d=example.test; dmarc=pass header.from=example.test"
        ),
        "To": SUPPORT,
        "Subject": "Re: [#1] Printer broken",
        "In-Reply-To": f"<{o.customer_message_id}>",
    },
}


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
def test_forged_agent_is_a_customer_message_and_changes_nothing(
    daemon: RunningDaemon, outbox: Outbox, config_file: Path, forgery: str
) -> None:
    opened = open_ticket(daemon, outbox)
    headers = FORGERIES[forgery](opened)
    daemon.send(
        forged_mail(headers), sender=AGENT, recipients=(headers["To"].split("<")[-1].strip(">"),)
    )

    [_, warning] = mail_to(outbox, AGENT, 2)
    assert warning.subject == "[#1] Unverified mail from an agent address: Printer broken"
    assert "no command in it was run and nothing was relayed" in warning.text
    state = show(config_file)
    assert (state["status"], state["owner"]) == ("new", None)
    assert state["events"] == []
    forged = state["messages"][-1]
    assert (forged["kind"], forged["flag"], forged["from"], forged["internal"]) == (
        "participant",
        "forged-agent",
        AGENT,
        False,
    )
    assert [r["kind"] for r in queued_to(config_file, ALICE)] == ["acknowledgement"]
    assert len(mail_to(outbox, ALICE)) == 1


def test_forged_agent_with_only_the_subject_tag_opens_no_door_to_ticket_1(
    daemon: RunningDaemon, outbox: Outbox, config_file: Path
) -> None:
    open_ticket(daemon, outbox)
    headers = {"To": SUPPORT, "Subject": "Re: [#1] Printer broken"}
    daemon.send(forged_mail(headers), sender=AGENT)

    [_, told] = mail_to(outbox, AGENT, 2)
    assert told.subject.startswith("[#2] ")  # a guessed tag threads nothing: a new ticket
    first = show(config_file, 1)
    assert (first["status"], first["owner"], first["events"]) == ("new", None, [])
    assert len(first["messages"]) == 2
    second = show(config_file, 2)
    [forged] = second["messages"]
    assert (forged["flag"], forged["from"]) == ("forged-agent", AGENT)
    assert second["status"] == "new" and second["events"] == []
    assert [r["kind"] for r in queued_to(config_file, ALICE)] == ["acknowledgement"]
    assert queued_to(config_file, AGENT)[-1]["ticket"] == 2
