"""The agents' console by mail, end to end over real SMTP (pipeline/console.py).

Two agents share the desk. Agnes owns the ticket; Bob reads, searches and takes it
over with his mail client alone. Forged requests (From: an agent, sent by a stranger,
with nothing that proves it) read nothing and change nothing until the real agent's
mailbox confirms. Canned replies in Czech and English; watchers hear of replies.

Waits are deadlines on the outbox or the database, never sleeps; expiry moves the
ManualClock.
"""

from __future__ import annotations

import email
import email.policy
import urllib.error
import urllib.parse
import urllib.request
import uuid
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from maildesk.clock import ManualClock
from maildesk.outbound.catalogue import agents as agents_catalogue
from tests.conftest import Outbox, RunningDaemon
from tests.mailclient import (
    AGENT,
    ALICE,
    BOB,
    STRANGER,
    Sent,
    agent_writes,
    alice_replies,
    attachments,
    cli,
    customer_mail,
    desk_config,
    mail,
    mail_to,
    mails_to,
    open_ticket,
    processed,
    queued_to,
    reply_to,
    sent,
    show,
)


@pytest.fixture
def config_values(config_values: dict[str, Any]) -> dict[str, Any]:
    return desk_config(config_values, AGENT, BOB)


def owned_by_agnes(daemon: RunningDaemon, outbox: Outbox) -> None:
    """Alice opens ticket 1; Agnes takes it with a proven reply (commands only)."""
    opened = open_ticket(daemon, outbox)
    agent_writes(daemon, AGENT, "#assign me", to=opened.reply_to, answering=opened.notification)
    processed(daemon, 2)


def test_a_second_agent_reads_searches_and_takes_over_by_mail_only(
    daemon: RunningDaemon, outbox: Outbox, config_file: Path
) -> None:
    owned_by_agnes(daemon, outbox)
    assert show(config_file)["owner"] == AGENT

    agent_writes(daemon, BOB, "#list open")
    [listed] = mails_to(outbox, BOB, "#list")
    assert listed.subject == "#list open: 1 ticket"
    row = next(line for line in listed.text.splitlines() if line.startswith("[#1]"))
    assert row.split()[:4] == ["[#1]", "Accepted", "normal", AGENT]
    assert row.endswith("Printer broken")
    show_address = next(line.split()[1] for line in listed.text.splitlines() if "+s1a2." in line)

    agent_writes(daemon, BOB, "#search BLANK pages")
    [found] = mails_to(outbox, BOB, "#search")
    assert found.subject == "#search BLANK pages: 1 ticket"
    assert "prints only blank pages" in found.text

    # Any mail to the row's signed address is "#show 1" to Bob's own address.
    agent_writes(daemon, BOB, "thanks", to=show_address)
    [shown] = mails_to(outbox, BOB, "[#1] Printer broken")
    assert "The printer on floor 2 prints only blank pages." in shown.text
    assert f"owner: - -> {AGENT}" in shown.text
    assert reply_to(shown).startswith("support+t1a2.")  # signed for Bob and ticket 1

    # Bob answers the #show with #take: a proven reply on ticket 1.
    agent_writes(daemon, BOB, "#take", to=reply_to(shown), answering=shown)
    processed(daemon, 6)
    state = show(config_file)
    assert state["owner"] == BOB
    assert state["events"][-1]["actor"] == BOB
    # Agnes hears she no longer owns it (waited for: it is sent after the #take).
    mails_to(outbox, AGENT, "[#1] Taken over by a colleague")
    # Alice writes again: the new owner is told, Agnes no longer.
    before = len(mail_to(outbox, AGENT))
    alice_replies(daemon, outbox, "Still blank.\n")
    [told] = mails_to(outbox, BOB, "[#1] Customer replied")
    assert "Still blank." in told.text
    assert len([s for s in sent(outbox) if AGENT in s.to]) == before


@pytest.mark.parametrize("command", ["#show 1", "#list all", "#search printer"])
def test_a_forged_read_is_answered_only_to_the_real_agents_address(
    daemon: RunningDaemon, outbox: Outbox, config_file: Path, command: str
) -> None:
    open_ticket(daemon, outbox)
    # From: Agnes, but sent by a stranger who names himself everywhere he can.
    agent_writes(
        daemon,
        AGENT,
        command,
        envelope=STRANGER,
        extra={"Reply-To": STRANGER, "Cc": STRANGER, "Return-Path": STRANGER},
    )
    wanted = {"#show 1": "[#1] Printer broken", "#list all": "#list", "#search printer": "#sea"}
    [answer] = mails_to(outbox, AGENT, wanted[command])
    assert answer.to == [AGENT]
    assert "Printer broken" in answer.text
    everything = [r for r in sent(outbox)]
    assert all(STRANGER not in s.to for s in everything)
    assert queued_to(config_file, STRANGER) == []
    assert len(show(config_file)["messages"]) == 2  # nothing joined the ticket


def confirmation_for_bob(daemon: RunningDaemon, outbox: Outbox, config_file: Path) -> Sent:
    """A forged `#assign me` as Bob on ticket 1: only a confirmation mail to Bob."""
    owned_by_agnes(daemon, outbox)
    agent_writes(
        daemon, BOB, "#assign me", envelope=STRANGER, subject="[#1] mine now",
        extra={"Reply-To": STRANGER},
    )  # fmt: skip
    [confirm] = mails_to(outbox, BOB, "Confirm: #assign me on [#1]")
    assert reply_to(confirm).startswith("support+c")
    state = show(config_file)
    assert state["owner"] == AGENT  # nothing yet
    assert queued_to(config_file, STRANGER) == []
    return confirm


def test_a_forged_assign_does_nothing_until_the_real_mailbox_confirms(
    daemon: RunningDaemon, outbox: Outbox, config_file: Path
) -> None:
    confirm = confirmation_for_bob(daemon, outbox, config_file)
    events_before = len(show(config_file)["events"])

    agent_writes(daemon, BOB, "yes", to=reply_to(confirm), answering=confirm)
    mails_to(outbox, BOB, "Done: #assign me")
    state = show(config_file)
    assert state["owner"] == BOB
    assert len(state["events"]) == events_before + 1

    # The same confirmation again (a second reply): nothing more happens.
    agent_writes(daemon, BOB, "yes again", to=reply_to(confirm), answering=confirm)
    mails_to(outbox, BOB, "Already confirmed: #assign me")
    assert len(show(config_file)["events"]) == events_before + 1


def test_a_confirmation_expires(
    daemon: RunningDaemon, outbox: Outbox, config_file: Path, clock: ManualClock
) -> None:
    confirm = confirmation_for_bob(daemon, outbox, config_file)
    clock.advance(timedelta(hours=25))
    agent_writes(daemon, BOB, "yes", to=reply_to(confirm), answering=confirm)
    mails_to(outbox, BOB, "Expired: #assign me")
    assert show(config_file)["owner"] == AGENT


def _post(url: str, data: dict[str, str]) -> tuple[int, str]:
    body = urllib.parse.urlencode(data).encode()
    try:
        with urllib.request.urlopen(url, data=body, timeout=10) as response:  # noqa: S310
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_the_confirm_button_works_once(
    daemon: RunningDaemon, outbox: Outbox, config_file: Path
) -> None:
    confirm = confirmation_for_bob(daemon, outbox, config_file)
    url = next(w for w in confirm.text.split() if "/confirm?" in w)
    # GET only shows the question (mail scanners follow links).
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310
        assert "#assign me" in response.read().decode()
    assert show(config_file)["owner"] == AGENT
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
    target = url.split("?")[0]
    assert _post(target, query)[0] == 200
    assert show(config_file)["owner"] == BOB
    assert _post(target, query)[0] == 409
    tampered = {**query, "s": "a" * len(query["s"])}
    assert _post(target, tampered)[0] == 400
    for number in ("\u00b2", "9" * 30, "-1"):  # not a number, too long: refused, no error
        assert _post(target, {**query, "c": number})[0] == 400


@pytest.mark.parametrize(
    ("language", "expected"),
    [
        ("en", "the problem is fixed. Please try it again"),
        ("cs", "problém je opravený. Zkuste to prosím znovu"),
    ],
)
def test_a_canned_reply_reaches_the_customer_in_the_tickets_language(
    daemon: RunningDaemon, outbox: Outbox, config_file: Path, language: str, expected: str
) -> None:
    opened = open_ticket(daemon, outbox, language)
    agent_writes(
        daemon, AGENT, "#reply fixed\nOne more thing: restart it once.",
        to=opened.reply_to, answering=opened.notification,
    )  # fmt: skip
    [_, relay] = mail_to(outbox, ALICE, 2)
    assert expected in relay.text
    assert relay.text.index(expected) < relay.text.index("One more thing: restart it once.")
    assert AGENT not in relay.text


def test_an_unknown_canned_reply_is_an_error_back_to_the_agent(
    daemon: RunningDaemon, outbox: Outbox, config_file: Path
) -> None:
    opened = open_ticket(daemon, outbox)
    agent_writes(
        daemon, AGENT, "#reply nope\nHello", to=opened.reply_to, answering=opened.notification
    )
    [error] = mails_to(outbox, AGENT, "[#1] Not sent")
    assert "#reply nope: no such canned reply (known: fixed, need-details)" in error.text
    assert [r["kind"] for r in queued_to(config_file, ALICE)] == ["acknowledgement"]

    agent_writes(daemon, AGENT, "#replies")
    [listing] = mails_to(outbox, AGENT, "Canned replies")
    # Each with its first words, so the agent knows which one to use.
    assert "  fixed: Hello, the problem is fixed. Please try it again" in listing.text
    assert "  need-details: Hello, thank you for your message" in listing.text


def test_a_watcher_hears_of_the_customers_replies(
    daemon: RunningDaemon, outbox: Outbox, config_file: Path
) -> None:
    owned_by_agnes(daemon, outbox)
    agent_writes(daemon, BOB, "#show 1")
    [shown] = mails_to(outbox, BOB, "[#1] Printer broken")
    agent_writes(daemon, BOB, "#watch", to=reply_to(shown), answering=shown)
    processed(daemon, 4)
    assert show(config_file)["owner"] == AGENT  # watching is not taking

    alice_replies(daemon, outbox, "It is still blank.\n")
    [to_bob] = mails_to(outbox, BOB, "[#1] Customer replied")
    [to_agnes] = mails_to(outbox, AGENT, "[#1] Customer replied")
    assert "It is still blank." in to_bob.text and "It is still blank." in to_agnes.text

    agent_writes(daemon, BOB, "#unwatch", to=reply_to(shown), answering=shown)
    processed(daemon, 6)
    alice_replies(daemon, outbox, "Now it works.\n")
    [*_, last] = mails_to(outbox, AGENT, "[#1] Customer replied", 2)
    assert "Now it works." in last.text
    assert not any("Now it works." in s.text for s in sent(outbox) if BOB in s.to)


def test_list_overdue_lists_breached_tickets_only(daemon: RunningDaemon, outbox: Outbox) -> None:
    open_ticket(daemon, outbox)  # new, far from any target
    agent_writes(daemon, AGENT, "#list overdue")
    [answer] = mails_to(outbox, AGENT, "#list overdue")
    assert answer.subject == "#list overdue: 0 tickets"
    assert "No tickets." in answer.text


def test_a_request_in_the_subject_or_above_a_signature_is_answered_not_opened(
    daemon: RunningDaemon, outbox: Outbox, config_file: Path
) -> None:
    open_ticket(daemon, outbox)
    # The command typed as the subject, the body left empty.
    agent_writes(daemon, AGENT, "", subject="#list all")
    [listed] = mails_to(outbox, AGENT, "#list all")
    assert listed.subject == "#list all: 1 ticket"
    # The phone adds its signature below the command, with no "-- " line.
    agent_writes(daemon, BOB, "#search printer\n\nBob Builder\nSent from my iPhone\n")
    [found] = mails_to(outbox, BOB, "#search printer")
    assert "Printer broken" in found.text
    # A typo above the signature is explained, not opened as a ticket.
    agent_writes(daemon, AGENT, "#lsit mine\n\nAgnes Agent\nExample Support\n", subject="list")
    [error] = mails_to(outbox, AGENT, "Not sent: list")
    assert "#lsit mine: unknown command" in error.text
    processed(daemon, 4)
    assert [t["number"] for t in cli(config_file, "tickets", "list")] == [1]  # no new ticket


def test_show_carries_the_tickets_files_up_to_its_limit(
    daemon: RunningDaemon, outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agents_catalogue, "ATTACHED_BYTES", 1000)  # what `fitting` allows
    raw = customer_mail("en", message_id=f"<{uuid.uuid4().hex}@customer.test>")
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    msg.add_attachment(b"E" * 600, maintype="text", subtype="plain", filename="error.log")
    msg.add_attachment(b"P" * 800, maintype="image", subtype="png", filename="screen.png")
    daemon.send(msg.as_bytes(policy=email.policy.SMTP))
    mail_to(outbox, ALICE)

    agent_writes(daemon, BOB, "#show 1")
    [shown] = mails_to(outbox, BOB, "[#1] Printer broken")
    assert attachments(shown.msg) == [("error.log", "text/plain", b"E" * 600)]
    assert "attachment: error.log (600 bytes)\n" in shown.text
    assert "attachment: screen.png (800 bytes), not attached: a #show carries" in shown.text


def test_lang_in_a_console_mail_waits_for_confirmation_like_any_change(
    daemon: RunningDaemon, outbox: Outbox, config_file: Path
) -> None:
    open_ticket(daemon, outbox)  # Alice writes English
    # A new mail naming the ticket proves nothing: the agent's mailbox confirms.
    agent_writes(daemon, AGENT, "#lang cs", subject="[#1] she prefers Czech")
    [confirm] = mails_to(outbox, AGENT, "Confirm: #lang cs on [#1]")
    assert show(config_file)["language"] == "en"
    agent_writes(daemon, AGENT, "yes", to=reply_to(confirm), answering=confirm)
    mails_to(outbox, AGENT, "Done: #lang cs")
    assert show(config_file)["language"] == "cs"


def test_a_colleague_given_or_relieved_of_the_ticket_hears_of_it(
    daemon: RunningDaemon, outbox: Outbox, config_file: Path
) -> None:
    owned_by_agnes(daemon, outbox)
    notification = mail_to(outbox, AGENT)[0]
    agent_writes(daemon, AGENT, f"#assign {BOB}", to=reply_to(notification),
                 answering=notification)  # fmt: skip
    [given] = mails_to(outbox, BOB, "[#1] Assigned to you: Printer broken")
    assert "The printer on floor 2 prints only blank pages." in given.text  # her newest mail
    assert reply_to(given).startswith("support+t1a2.")  # a reply is Bob's proven reply
    assert show(config_file)["owner"] == BOB
    # Agnes takes it back: Bob hears he no longer owns it; Agnes is told nothing.
    agent_writes(daemon, AGENT, "#take", to=reply_to(notification), answering=notification)
    mails_to(outbox, BOB, "[#1] Taken over by a colleague: Printer broken")
    assert show(config_file)["owner"] == AGENT
    assert not [s for s in sent(outbox) if AGENT in s.to and "Assigned to you" in s.subject]
    assert not [s for s in sent(outbox) if AGENT in s.to and "Taken over" in s.subject]


def test_a_senders_flood_of_new_tickets_is_one_notice_and_a_list_away(
    daemon: RunningDaemon, outbox: Outbox, config_file: Path
) -> None:
    """A monitor opens 12 tickets in a minute (pipeline/quiet.py): Agnes hears of the first
    ten one by one and of the rest once, answers that notice like any other, and lists the
    monitor's tickets with `#list from=`."""
    monitor = "alerts@monitor.test"
    for n in range(1, 13):
        daemon.send(mail(monitor, f"alert {n}", subject=f"Disk full on host{n}"), sender=monitor)
    processed(daemon, 12)
    [summary] = mails_to(outbox, AGENT, "[#11] Filed quietly")
    assert f'"#list from={monitor}"' in summary.text
    notified = [s for s in sent(outbox) if AGENT in s.to]
    assert [s.subject.split()[0] for s in notified] == [f"[#{n}]" for n in range(1, 12)]

    agent_writes(daemon, AGENT, f"#list from={monitor.upper()}")
    [listed] = mails_to(outbox, AGENT, "#list from=")
    assert listed.subject == f"#list from={monitor}: 12 tickets"
    # A row per ticket, and under the table a signed address per ticket.
    numbers = {line.split()[0] for line in listed.text.splitlines() if line.startswith("[#")}
    assert numbers == {f"[#{n}]" for n in range(1, 13)}

    # The notice's Reply-To is Agnes's for ticket 11: she closes it by replying.
    agent_writes(daemon, AGENT, "#status closed", to=reply_to(summary), answering=summary)
    processed(daemon, 14)
    assert show(config_file, 11)["status"] == "closed"
    # Alice, another sender, still reaches Agnes one by one.
    daemon.send(customer_mail("en", message_id=f"<{uuid.uuid4().hex}@customer.test>"))
    mails_to(outbox, AGENT, "[#13] New ticket: Printer broken")
