"""Commands in an agent's reply to a notification, end to end over real SMTP.

Each command changes the ticket and only the text reaches the customer; `#status
resolved` alone asks her to confirm; `#note` stays internal; an unknown command is an
error back to the agent and nothing reaches the customer. "Nothing was sent" is read
from the outbox table once a later effect of the same mail is visible: everything one
inbound mail causes is committed in one transaction.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from maildesk.clock import ManualClock
from maildesk.tickets import views
from tests.client_replies import (
    GMAIL_EN,
    GREETING,
    OUTLOOK_EN,
    PDF,
    PDF_NAME,
    SIGNATURE,
    THUNDERBIRD_EN,
    agent_sends,
    client_reply,
    commands_top,
    gt_quote,
)
from tests.conftest import Outbox, RunningDaemon
from tests.mailclient import (
    AGENT,
    AGENT_NAME,
    ALICE,
    CUSTOMER_TEXT,
    SUPPORT_NAME,
    assert_no_trace_of_the_agent,
    attachments,
    customer_mail,
    desk_config,
    mail_to,
    open_ticket,
    parse_bytes,
    processed,
    queued_to,
    show,
)


@pytest.fixture
def config_values(config_values: dict[str, Any]) -> dict[str, Any]:
    return desk_config(config_values, AGENT)


RESOLVED_PARAGRAPH = (
    "We consider your request resolved. If everything works, reply with the word\n"
    "CONFIRM (or just say thanks); if not, simply reply and tell us what is wrong.\n"
)


Change = tuple[str, str | None, str | None, str]  # field, old, new, via


def agent_events(state: dict[str, Any]) -> list[Change]:
    return [(e["field"], e["old"], e["new"], e["via"]) for e in state["events"]]


@pytest.mark.parametrize(
    ("command", "field", "value"),
    [
        ("#status resolved", "status", "resolved"),
        ("#type bug", "type", "bug"),
        ("#priority critical", "priority", "critical"),
        ("#assign me", "owner", AGENT),
    ],
)
def test_each_command_changes_the_ticket_and_only_the_text_reaches_the_customer(
    daemon: RunningDaemon,
    outbox: Outbox,
    config_file: Path,
    clock: ManualClock,
    command: str,
    field: str,
    value: str,
) -> None:
    opened = open_ticket(daemon, outbox)
    raw = client_reply(GMAIL_EN, opened.notification, opened.reply_to, top=commands_top(command))
    agent_sends(daemon, raw, opened.reply_to)

    [_, relay] = mail_to(outbox, ALICE, 2)
    resolved = RESOLVED_PARAGRAPH if command == "#status resolved" else ""
    assert relay.text == f"{GREETING}\n\n{resolved}{SIGNATURE}"
    assert_no_trace_of_the_agent(relay)
    assert attachments(relay.msg) == [(PDF_NAME, "application/pdf", PDF)]
    if command == "#priority critical":  # every agent hears of it at once
        [_, alert] = mail_to(outbox, AGENT, 2)
        assert alert.subject == "[#1] CRITICAL: Printer broken"
        # What is critical is the customer's mail, not the agent's own command mail.
        assert CUSTOMER_TEXT["en"][1].splitlines()[0] in alert.text
        assert GREETING.splitlines()[-1] not in alert.text

    state = show(config_file)
    assert state[field] == value
    # Who, when and how: the agent, now; by command, and the reply itself (no #status) by
    # mail. The first act also accepts the ticket and makes the agent its owner.
    assert {e["at"] for e in state["events"]} == {views.iso(clock.now())}
    assert {e["actor"] for e in state["events"]} == {AGENT}
    replied: list[Change] = [("status", "accepted", "waiting_customer", "mail")]
    then: dict[str, list[Change]] = {
        "status": [("status", "accepted", "resolved", "command")],
        "type": [("type", None, "bug", "command"), *replied],
        "priority": [("priority", "normal", "critical", "command"), *replied],
        "owner": replied,  # "me" already owns it: no second owner event
    }
    assert agent_events(state) == [
        ("owner", None, AGENT, "command"),
        ("status", "new", "accepted", "command"),
        *then[field],
    ]
    # The agent's mail is kept without the command lines (and internal).
    kept = state["messages"][2]
    assert (kept["kind"], kept["internal"], kept["body_text"]) == (
        "agent",
        True,
        f"{GREETING}",
    )


def test_status_resolved_alone_asks_the_customer_to_confirm_and_the_answer_closes_it(
    daemon: RunningDaemon, outbox: Outbox, config_file: Path
) -> None:
    opened = open_ticket(daemon, outbox, "cs")
    top = commands_top("#status resolved", text="")
    raw = client_reply(OUTLOOK_EN, opened.notification, opened.reply_to, top=top)
    agent_sends(daemon, raw, opened.reply_to)

    [_, notice] = mail_to(outbox, ALICE, 2)
    subject = CUSTOMER_TEXT["cs"][0]
    assert notice.subject == f"[#1] Vyřešeno: {subject}"
    assert "odpovězte slovem POTVRZUJI" in notice.text
    assert notice.msg["From"].addresses[0].display_name == SUPPORT_NAME
    assert_no_trace_of_the_agent(notice)
    assert show(config_file)["status"] == "resolved"

    daemon.send(
        customer_mail(
            "cs",
            message_id=f"<{uuid.uuid4().hex}@customer.test>",
            subject=f"Re: {notice.subject}",
            body="Děkuji, funguje to.\n\nAlice\n\n" + gt_quote(notice.text),
            answering=notice,
            to=str(notice.msg["Reply-To"].addresses[0].addr_spec),
        )
    )
    [*_, closed] = mail_to(outbox, ALICE, 3)
    assert closed.subject == f"[#1] Uzavřeno: {subject}"
    [*_, told] = mail_to(outbox, AGENT, 2)
    assert told.subject == f"[#1] Customer confirmed the resolution: {subject}"
    state = show(config_file)
    assert state["status"] == "closed"
    assert state["events"][-1] == {
        "at": state["events"][-1]["at"],
        "actor": ALICE,
        "field": "status",
        "old": "resolved",
        "new": "closed",
        "via": "mail",
    }


def test_note_stays_internal_even_when_the_agent_repeats_it_later(
    daemon: RunningDaemon, outbox: Outbox, config_file: Path, clock: ManualClock
) -> None:
    opened = open_ticket(daemon, outbox)
    note = "Alice's printer still runs the 2019 driver; our licence for it expired."
    top = commands_top("#note", text=note)
    agent_sends(
        daemon,
        client_reply(OUTLOOK_EN, opened.notification, opened.reply_to, top=top),
        opened.reply_to,
    )
    processed(daemon, 2)

    state = show(config_file)
    kept = state["messages"][-1]
    assert (kept["kind"], kept["internal"], kept["from"], kept["body_text"]) == (
        "note",
        True,
        AGENT,
        note,
    )
    assert [a["filename"] for a in kept["attachments"]] == [PDF_NAME]
    assert [(e["field"], e["new"], e["actor"], e["via"]) for e in state["events"]] == [
        ("owner", AGENT, AGENT, "command"),
        ("status", "accepted", AGENT, "command"),
    ]
    assert [r["kind"] for r in queued_to(config_file, ALICE)] == ["acknowledgement"]
    assert len(mail_to(outbox, ALICE)) == 1

    # Later the agent answers and pastes the note's line into the text by mistake.
    later = f"We are on it.\n{note}\n\nRegards,\nAgnes\n\n"
    raw = client_reply(THUNDERBIRD_EN, opened.notification, opened.reply_to, top=later)
    agent_sends(daemon, raw, opened.reply_to)
    [_, relay] = mail_to(outbox, ALICE, 2)
    assert relay.text == f"We are on it.\n\n{SIGNATURE}"


def test_unknown_command_sends_the_agent_an_error_and_the_customer_nothing(
    daemon: RunningDaemon, outbox: Outbox, config_file: Path
) -> None:
    opened = open_ticket(daemon, outbox)
    top = commands_top("#stauts resolved", "#priority urgent", text="All fixed, bye.")
    raw = client_reply(OUTLOOK_EN, opened.notification, opened.reply_to, top=top)
    agent_sends(daemon, raw, opened.reply_to)

    [_, error] = mail_to(outbox, AGENT, 2)
    assert error.subject == "[#1] Not sent: RE: [#1] New ticket: Printer broken"
    assert "NOT sent to the customer and changed nothing" in error.text
    assert "  - #stauts resolved: unknown command\n" in error.text
    assert "  - #priority urgent: must be one of critical, normal, low\n" in error.text
    assert error.msg["In-Reply-To"] == parse_bytes(raw)["Message-ID"]
    assert [r["kind"] for r in queued_to(config_file, ALICE)] == ["acknowledgement"]
    assert len(mail_to(outbox, ALICE)) == 1
    state = show(config_file)
    assert (state["status"], state["owner"], state["priority"]) == ("new", None, "normal")
    assert state["events"] == []
    assert [m["kind"] for m in state["messages"]] == ["customer", "acknowledgement"]


# Outlook's and a phone's signature: no "-- " line above it, the agent's name first.
OUTLOOK_SIGNATURE = f"{AGENT_NAME}\nExample Support s.r.o.\nTel. +420 777 000 000\n"


def test_commands_above_the_agents_signature_send_the_customer_nothing(
    daemon: RunningDaemon, outbox: Outbox, config_file: Path
) -> None:
    opened = open_ticket(daemon, outbox)
    top = f"#assign me\n#priority critical\n\n{OUTLOOK_SIGNATURE}\n"
    raw = client_reply(OUTLOOK_EN, opened.notification, opened.reply_to, top=top)
    agent_sends(daemon, raw, opened.reply_to)
    [_, alert] = mail_to(outbox, AGENT, 2)  # the critical alert: the mail was processed
    assert alert.subject == "[#1] CRITICAL: Printer broken"

    assert [r["kind"] for r in queued_to(config_file, ALICE)] == ["acknowledgement"]
    state = show(config_file)
    # Not answered: the first response is still due, the customer still waited on.
    assert (state["owner"], state["status"], state["priority"]) == (AGENT, "accepted", "critical")


def test_the_agents_signature_is_not_relayed_below_the_text(
    daemon: RunningDaemon, outbox: Outbox
) -> None:
    opened = open_ticket(daemon, outbox)
    top = f"{GREETING}\n\n{OUTLOOK_SIGNATURE}\n"
    raw = client_reply(OUTLOOK_EN, opened.notification, opened.reply_to, top=top)
    agent_sends(daemon, raw, opened.reply_to)

    [_, relay] = mail_to(outbox, ALICE, 2)
    assert relay.text == f"{GREETING}\n\n{SIGNATURE}"


def test_a_nul_in_an_agents_reply_is_dropped_and_its_commands_still_run(
    daemon: RunningDaemon, outbox: Outbox, config_file: Path
) -> None:
    """A NUL in the agent's text (a client's UTF-16 pasted as 8-bit text): PostgreSQL
    refuses it in any text column, so it went to quarantine there. It is dropped as
    any mail's is, on both databases; the command runs and the rest is relayed."""
    opened = open_ticket(daemon, outbox)
    top = commands_top("#status resolved", text=GREETING.replace("driver", "dri\0ver"))
    raw = client_reply(GMAIL_EN, opened.notification, opened.reply_to, top=top)
    assert b"\0" in raw or b"=00" in raw
    agent_sends(daemon, raw, opened.reply_to)

    [_, relay] = mail_to(outbox, ALICE, 2)
    assert relay.text == f"{GREETING}\n\n{RESOLVED_PARAGRAPH}{SIGNATURE}"
    state = show(config_file)
    assert state["status"] == "resolved"
    assert state["messages"][2]["body_text"] == GREETING
