"""Paid modifications by mail, end to end over real SMTP and the web listener.

The agent's `#type modification` and `#paid PRICE` send the customer a notice to
approve; her APPROVE / SCHVALUJI answer or the link's form records it. The notice
carries the agent's text and attachment, never the agent's address or an internal note.
"""

from __future__ import annotations

import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.client_replies import (
    CLIENTS,
    OUTLOOK_EN,
    PDF,
    PDF_NAME,
    Quoted,
    agent_sends,
    client_reply,
    commands_top,
    gmail_plain,
)
from tests.conftest import Outbox, RunningDaemon
from tests.mailclient import (
    AGENT,
    AGENT_NAME,
    ALICE,
    CUSTOMER_TEXT,
    SUPPORT_NAME,
    Sent,
    assert_no_trace_of_the_agent,
    attachments,
    customer_mail,
    desk_config,
    mail_to,
    open_ticket,
    processed,
    queued_to,
    show,
)


@pytest.fixture
def config_values(config_values: dict[str, Any]) -> dict[str, Any]:
    # The approve link in the paid-work notice must reach this daemon's web listener.
    return desk_config(config_values, AGENT)


PAID_TEXT = "We can add the export column; it is about four hours of work."


def paid_top() -> str:
    return commands_top(
        "#type modification", "#paid 4 hours, 6 000 CZK", text=f"Hello Alice,\n\n{PAID_TEXT}"
    )


def customer_answer(notice: Sent, language: str, first_line: str) -> bytes:
    """Alice answers the notice from her mail client, quoting it (its words and links too)."""
    q = Quoted.of(notice)
    body = f"{first_line}\n\nAlice\n\n" + gmail_plain(q, language)
    return customer_mail(
        language,
        message_id=f"<{uuid.uuid4().hex}@customer.test>",
        subject=f"Re: {notice.subject}",
        body=body,
        answering=notice,
        to=str(notice.msg["Reply-To"].addresses[0].addr_spec),
    )


def follow(url: str, data: dict[str, str] | None = None) -> str:
    """The customer's browser: GET the link, or POST the page's form."""
    body = urllib.parse.urlencode(data).encode("ascii") if data is not None else None
    with urllib.request.urlopen(url, data=body, timeout=10) as response:  # noqa: S310
        assert response.status == 200
        return str(response.read().decode("utf-8"))


@pytest.mark.parametrize(
    ("language", "answer"),
    [("en", "APPROVE"), ("cs", "SCHVALUJI"), ("en", "link"), ("cs", "link")],
)
def test_paid_modification_waits_for_the_customers_approval(
    daemon: RunningDaemon,
    outbox: Outbox,
    config_file: Path,
    config_values: dict[str, Any],
    language: str,
    answer: str,
) -> None:
    opened = open_ticket(daemon, outbox, language)
    client = OUTLOOK_EN if language == "en" else CLIENTS[1]
    agent_sends(
        daemon,
        client_reply(client, opened.notification, opened.reply_to, top=paid_top()),
        opened.reply_to,
    )

    [_, notice] = mail_to(outbox, ALICE, 2)
    subject = CUSTOMER_TEXT[language][0]
    base = config_values["support"]["base_url"]
    if language == "cs":
        assert notice.subject == f"[#1] Placená úprava: prosíme o schválení — {subject}"
        assert "Cena: 4 hours, 6 000 CZK\n" in notice.text
        assert "nebo odpovězte slovem SCHVALUJI." in notice.text
        approve = notice.text.split("Pro schválení otevřete ")[1].split("\n")[0]
    else:
        assert notice.subject == f"[#1] Paid work: please approve — {subject}"
        assert "Price: 4 hours, 6 000 CZK\n" in notice.text
        assert "or reply with the word APPROVE." in notice.text
        approve = notice.text.split("To approve, open ")[1].split("\n")[0]
    assert f"Hello Alice,\n\n{PAID_TEXT}\n" in notice.text
    assert approve.startswith(f"{base}/paid?token=")
    assert "#paid" not in notice.text and "#type" not in notice.text
    state = show(config_file)
    assert (state["type"], state["paid"], state["status"]) == (
        "modification",
        "pending",
        "waiting_customer",
    )

    if answer == "link":
        page = follow(approve)  # a mail scanner may do this much: it approves nothing
        assert "Approve the paid work — #1" in page
        assert show(config_file)["paid"] == "pending"
        token = urllib.parse.parse_qs(urllib.parse.urlsplit(approve).query)["token"][0]
        assert "Your answer was recorded" in follow(f"{base}/paid", {"token": token})
    else:
        daemon.send(customer_answer(notice, language, answer))

    [*_, told] = mail_to(outbox, AGENT, 2)
    assert told.subject == f"[#1] Customer APPROVED the paid work: {subject}"
    state = show(config_file)
    assert (state["paid"], state["status"]) == ("approved", "accepted")
    via = "web" if answer == "link" else "mail"
    assert [(e["field"], e["new"], e["actor"], e["via"]) for e in state["events"]] == [
        ("owner", AGENT, AGENT, "command"),
        ("status", "accepted", AGENT, "command"),
        ("type", "modification", AGENT, "command"),
        ("paid", "pending", AGENT, "command"),
        ("status", "waiting_customer", AGENT, "command"),
        ("paid", "approved", ALICE, via),
        ("status", "accepted", ALICE, via),
    ]


# -- regressions: bugs these tests found, fixed in maildesk/ while they were written ------


def test_paid_notice_carries_no_trace_of_the_agents_address(
    daemon: RunningDaemon, outbox: Outbox
) -> None:
    opened = open_ticket(daemon, outbox)
    raw = client_reply(OUTLOOK_EN, opened.notification, opened.reply_to, top=paid_top())
    agent_sends(daemon, raw, opened.reply_to)

    [_, notice] = mail_to(outbox, ALICE, 2)
    assert notice.text.endswith(f"\n{AGENT_NAME}, {SUPPORT_NAME}\n")
    assert_no_trace_of_the_agent(notice)


def test_paid_notice_carries_the_agents_attachment(daemon: RunningDaemon, outbox: Outbox) -> None:
    opened = open_ticket(daemon, outbox)
    # The agent attaches the offer the customer is asked to approve.
    raw = client_reply(OUTLOOK_EN, opened.notification, opened.reply_to, top=paid_top())
    agent_sends(daemon, raw, opened.reply_to)

    [_, notice] = mail_to(outbox, ALICE, 2)
    assert "Price: 4 hours, 6 000 CZK" in notice.text
    assert attachments(notice.msg) == [(PDF_NAME, "application/pdf", PDF)]


def test_paid_notice_never_repeats_an_internal_note(daemon: RunningDaemon, outbox: Outbox) -> None:
    opened = open_ticket(daemon, outbox)
    note = "Alice's firm is two invoices behind; ask for a deposit first."
    top = commands_top("#note", text=note)
    raw = client_reply(OUTLOOK_EN, opened.notification, opened.reply_to, top=top)
    agent_sends(daemon, raw, opened.reply_to)
    processed(daemon, 2)
    # The relay drops a line repeating a note; the paid-work notice must do the same.
    top = commands_top(
        "#type modification", "#paid 4 hours, 6 000 CZK", text=f"{PAID_TEXT}\n{note}"
    )
    raw = client_reply(OUTLOOK_EN, opened.notification, opened.reply_to, top=top)
    agent_sends(daemon, raw, opened.reply_to)

    [_, notice] = mail_to(outbox, ALICE, 2)
    assert PAID_TEXT in notice.text
    assert "invoices" not in notice.text


def test_note_with_paid_keeps_the_whole_reply_internal(
    daemon: RunningDaemon, outbox: Outbox, config_file: Path
) -> None:
    opened = open_ticket(daemon, outbox)
    secret = "Internal: quote them 6 000 CZK, our cost is 1 500 CZK."
    top = commands_top("#note", "#type modification", "#paid 4 hours, 6 000 CZK", text=secret)
    raw = client_reply(OUTLOOK_EN, opened.notification, opened.reply_to, top=top)
    agent_sends(daemon, raw, opened.reply_to)

    # "#note: the whole reply stays internal" (commands.HELP): the mix is refused.
    [_, error] = mail_to(outbox, AGENT, 2)
    assert error.subject.startswith("[#1] Not sent: ")
    assert [r["kind"] for r in queued_to(config_file, ALICE)] == ["acknowledgement"]
    state = show(config_file)
    assert (state["paid"], state["type"], state["events"]) == (None, None, [])
