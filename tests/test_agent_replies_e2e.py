"""An agent answers a notification from a real mail client, end to end over real SMTP.

Alice writes; Agnes's notification is read from the outbox; she answers it as Outlook,
Gmail, Apple Mail or Thunderbird would, in Czech and English (tests/client_replies.py);
Alice's copy is read back from the outbox: only the new text and the attachment, no trace
of the agent's address. Mails attached to mails travel both ways.
tests/pipeline/test_agents.py covers the same rules in-process, without sockets.
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import uuid
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from tests.client_replies import (
    CLIENTS,
    GMAIL_EN,
    OUTLOOK_EN,
    PDF,
    PDF_NAME,
    SIGNATURE,
    THUNDERBIRD_EN,
    Client,
    Quoted,
    agent_sends,
    client_reply,
    eml_attachment,
    gmail_plain,
)
from tests.conftest import Outbox, RunningDaemon
from tests.mailclient import (
    AGENT,
    AGENT_NAME,
    ALICE,
    ALICE_FROM,
    CUSTOMER_TEXT,
    SUPPORT,
    SUPPORT_NAME,
    assert_no_trace_of_the_agent,
    attachments,
    customer_mail,
    desk_config,
    mail_to,
    open_ticket,
    parse_bytes,
    plain_text,
    processed_or_failed,
    show,
)


@pytest.fixture
def config_values(config_values: dict[str, Any]) -> dict[str, Any]:
    return desk_config(config_values, AGENT)


@pytest.mark.parametrize("client", CLIENTS, ids=lambda c: c.id)
def test_agent_reply_from_each_client_reaches_the_customer_clean(
    daemon: RunningDaemon, outbox: Outbox, config_file: Path, client: Client
) -> None:
    opened = open_ticket(daemon, outbox, client.language)
    notification = opened.notification
    assert notification.msg["From"].addresses[0].addr_spec == SUPPORT
    assert opened.reply_to.startswith("support+t1a1.")
    assert CUSTOMER_TEXT[client.language][1].split("\n")[0] in notification.text

    raw = client_reply(client, notification, opened.reply_to)
    # What the client sends does quote the notification, and says who the agent is.
    assert notification.text.split("\n")[0] in plain_text(parse_bytes(raw)).replace("> ", "")
    assert AGENT.encode() in raw
    agent_sends(daemon, raw, opened.reply_to)

    [_, relay] = mail_to(outbox, ALICE, 2)
    assert relay.to == [ALICE]
    sender = relay.msg["From"].addresses[0]
    assert (sender.addr_spec, sender.display_name) == (SUPPORT, f"{AGENT_NAME} ({SUPPORT_NAME})")
    assert_no_trace_of_the_agent(relay)
    assert relay.text == f"{client.expected}\n\n{SIGNATURE}"
    assert relay.subject == f"Re: [#1] {CUSTOMER_TEXT[client.language][0]}"
    # The customer's thread: her message, then the acknowledgement this reply answers.
    assert relay.msg["In-Reply-To"] == opened.ack.msg["Message-ID"]
    assert relay.msg["References"].split() == [
        f"<{opened.customer_message_id}>",
        str(opened.ack.msg["Message-ID"]),
    ]
    assert relay.msg["Reply-To"] == opened.ack.msg["Reply-To"]  # the customer's, not agent's
    assert "Auto-Submitted" not in relay.msg  # a person wrote it
    assert "X-Auto-Response-Suppress" not in relay.msg  # the customer's away notice may come
    assert "X-Loop" not in relay.msg  # nor is it a help desk's automatic mail
    expected_files = [(PDF_NAME, "application/pdf", PDF)] if client.rich else []
    assert attachments(relay.msg) == expected_files

    state = show(config_file)
    assert (state["status"], state["owner"]) == ("waiting_customer", AGENT)
    [customer, ack, kept, out] = state["messages"]
    assert (customer["kind"], customer["from"]) == ("customer", ALICE)
    assert (ack["kind"], ack["internal"]) == ("acknowledgement", False)
    assert (kept["kind"], kept["from"], kept["internal"]) == ("agent", AGENT, True)
    assert kept["thread_rule"] == ("references" if client.threading else "reply_token")
    assert [a["filename"] for a in kept["attachments"]] == [n for n, _, _ in expected_files]
    assert (out["kind"], out["internal"], out["from_name"]) == (
        "agent_reply",
        False,
        f"{AGENT_NAME} ({SUPPORT_NAME})",
    )
    assert [a["filename"] for a in out["attachments"]] == [n for n, _, _ in expected_files]
    assert [(e["field"], e["new"], e["actor"], e["via"]) for e in state["events"]] == [
        ("owner", AGENT, AGENT, "mail"),
        ("status", "accepted", AGENT, "mail"),
        ("status", "waiting_customer", AGENT, "mail"),
    ]


def test_in_reply_to_the_agents_own_notification_alone_proves_the_agent(
    daemon: RunningDaemon, outbox: Outbox, config_file: Path
) -> None:
    opened = open_ticket(daemon, outbox)
    # The client ignored Reply-To (the address book won): only In-Reply-To ties it to the
    # notification, a Message-ID that only this agent received.
    raw = client_reply(GMAIL_EN, opened.notification, SUPPORT)
    agent_sends(daemon, raw, SUPPORT)

    [_, relay] = mail_to(outbox, ALICE, 2)
    assert relay.text == f"{GMAIL_EN.expected}\n\n{SIGNATURE}"
    assert_no_trace_of_the_agent(relay)
    kept = show(config_file)["messages"][2]
    assert (kept["kind"], kept["flag"], kept["thread_rule"]) == ("agent", "", "references")


def test_agent_whose_client_shows_the_address_as_the_name_is_not_revealed(
    daemon: RunningDaemon, outbox: Outbox
) -> None:
    opened = open_ticket(daemon, outbox)
    # Outlook and Apple Mail use the address as the display name when none is set up.
    sender = f'"{AGENT}" <{AGENT}>'
    raw = client_reply(OUTLOOK_EN, opened.notification, opened.reply_to, sender=sender)
    agent_sends(daemon, raw, opened.reply_to)

    [_, relay] = mail_to(outbox, ALICE, 2)
    assert relay.msg["From"].addresses[0].addr_spec == SUPPORT
    assert_no_trace_of_the_agent(relay)


def test_html_only_reply_from_thunderbird_relays_only_the_new_text(
    daemon: RunningDaemon, outbox: Outbox
) -> None:
    opened = open_ticket(daemon, outbox)
    first = client_reply(GMAIL_EN, opened.notification, opened.reply_to)
    agent_sends(daemon, first, opened.reply_to)  # the agent now owns the ticket
    [_, relay] = mail_to(outbox, ALICE, 2)
    daemon.send(
        customer_mail(
            "en",
            message_id=f"<{uuid.uuid4().hex}@customer.test>",
            subject=f"Re: {relay.subject}",
            body="It still prints blank pages.\n\nAlice\n\n" + gmail_plain(Quoted.of(relay), "en"),
            answering=relay,
            to=str(relay.msg["Reply-To"].addresses[0].addr_spec),
        )
    )
    [_, replied] = mail_to(outbox, AGENT, 2)
    assert f"Owner: {AGENT}" in replied.text

    # Thunderbird's "Send Format: Only Rich Text (HTML)": no text/plain part at all.
    raw = client_reply(THUNDERBIRD_EN, replied, opened.reply_to, html_only=True)
    assert parse_bytes(raw).get_body(("plain",)) is None
    agent_sends(daemon, raw, opened.reply_to)

    [*_, relay] = mail_to(outbox, ALICE, 3)
    assert "Status: Accepted | Type:" not in relay.text  # the quoted notification
    assert_no_trace_of_the_agent(relay)
    assert relay.text == f"{THUNDERBIRD_EN.expected}\n\n{SIGNATURE}"


def test_agent_reply_with_a_mail_attached_reaches_the_customer(
    daemon: RunningDaemon, outbox: Outbox
) -> None:
    opened = open_ticket(daemon, outbox)
    vendor = EmailMessage()
    vendor["From"] = "Printer Vendor <service@vendor.test>"
    vendor["To"] = SUPPORT
    vendor["Subject"] = "Driver 4.2 released"
    vendor["Message-ID"] = "<driver42@vendor.test>"
    vendor.set_content("Driver 4.2 fixes blank pages on the LaserJet 4.\n")
    extra = eml_attachment(vendor.as_bytes(policy=email.policy.SMTP), "Driver 4.2 released.eml")
    raw = client_reply(THUNDERBIRD_EN, opened.notification, opened.reply_to, extra=extra)
    agent_sends(daemon, raw, opened.reply_to)

    [_, row] = processed_or_failed(daemon, 2)
    assert row.error == "", row.error.strip().splitlines()[-1]
    [_, relay] = mail_to(outbox, ALICE, 2)
    assert relay.text == f"{THUNDERBIRD_EN.expected}\n\n{SIGNATURE}"
    assert_no_trace_of_the_agent(relay)
    [pdf, eml] = attachments(relay.msg)
    assert pdf == (PDF_NAME, "application/pdf", PDF)
    assert eml[:2] == ("Driver 4.2 released.eml", "application/octet-stream")
    assert b"Driver 4.2 fixes blank pages on the LaserJet 4." in eml[2]


def test_customer_mail_with_a_mail_attached_reaches_the_agent(
    daemon: RunningDaemon, outbox: Outbox
) -> None:
    msg = EmailMessage()
    msg["From"] = ALICE_FROM
    msg["To"] = SUPPORT
    msg["Subject"] = "Fwd: phishing?"
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@customer.test>"
    msg["Date"] = email.utils.format_datetime(email.utils.localtime())
    msg.set_content("Is the attached mail really from you?\n\nAlice\n")
    suspicious = EmailMessage()
    suspicious["From"] = "Support <support@examp1e.test>"
    suspicious["Subject"] = "Your password expires"
    suspicious.set_content("Click here.\n")
    msg.add_attachment(suspicious)  # message/rfc822, as every client forwards "as attachment"
    daemon.send(msg.as_bytes(policy=email.policy.SMTP))

    [row] = processed_or_failed(daemon, 1)
    assert row.error == "", row.error.strip().splitlines()[-1]
    [notification] = mail_to(outbox, AGENT)
    assert "Is the attached mail really from you?" in notification.text
    [(filename, ctype, data)] = attachments(notification.msg)
    assert filename is not None and filename.endswith(".eml")
    assert (ctype, b"Subject: Your password expires" in data) == ("application/octet-stream", True)
    assert len(mail_to(outbox, ALICE)) == 1  # and she is acknowledged
