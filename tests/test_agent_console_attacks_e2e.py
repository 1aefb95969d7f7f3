"""The agents' console attacked by a stranger, end to end over real SMTP.

Mallory knows the agents' addresses and the ticket numbers, and can put anything in
From, Reply-To, the subject and the body. What she tries: using up an agent's
console allowance, getting a confirmation run by a vacation responder or by the
wrong person, adding recipients or headers with `#cc`, search operators, path
names as canned replies, and mail big or deep enough to stall the processor.

Waits are deadlines on the outbox or the database, never sleeps.
"""

from __future__ import annotations

import email.policy
import email.utils
import urllib.error
import urllib.parse
import urllib.request
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from maildesk import replies
from maildesk.clock import ManualClock
from maildesk.models import Participant, Person
from maildesk.pipeline import console
from maildesk.tickets import commands
from tests.conftest import Outbox, RunningDaemon
from tests.mailclient import (
    AGENT,
    ALICE,
    BOB,
    STRANGER,
    SUPPORT,
    Sent,
    agent_writes,
    cli,
    desk_config,
    mail_to,
    mails_to,
    open_ticket,
    processed,
    processed_or_failed,
    reply_to,
    sent,
    show,
)


@pytest.fixture
def config_values(config_values: dict[str, Any]) -> dict[str, Any]:
    return desk_config(config_values, AGENT, BOB)


def forged(daemon: RunningDaemon, agent: str, body: str, **kw: Any) -> None:
    """Mallory's mail From `agent`, naming herself wherever a reply could go."""
    extra = {"Reply-To": STRANGER, **kw.pop("extra", {})}
    agent_writes(daemon, agent, body, envelope=STRANGER, extra=extra, **kw)


def participants(daemon: RunningDaemon, number: int = 1) -> list[str]:
    with daemon.services.db.reading() as session:
        query = (
            select(Person.email)
            .join(Participant, Participant.person_id == Person.id)
            .where(Participant.ticket_id == number)
            .order_by(Person.email)
        )
        return list(session.scalars(query))


def confirmation_for_bob(daemon: RunningDaemon, outbox: Outbox) -> Sent:
    """Ticket 1 owned by Agnes; a forged `#assign me` as Bob asks Bob to confirm."""
    opened = open_ticket(daemon, outbox)
    agent_writes(daemon, AGENT, "#assign me", to=opened.reply_to, answering=opened.notification)
    forged(daemon, BOB, "#assign me", subject="[#1] mine now")
    [confirm] = mails_to(outbox, BOB, "Confirm: #assign me on [#1]")
    return confirm


def test_a_forged_read_goes_to_the_registered_address_whatever_the_headers_say(
    daemon: RunningDaemon, outbox: Outbox
) -> None:
    open_ticket(daemon, outbox)
    everywhere = {
        "Sender": STRANGER,
        "Cc": STRANGER,
        "Mail-Followup-To": STRANGER,
        "Mail-Reply-To": STRANGER,
        "Errors-To": STRANGER,
        "Disposition-Notification-To": STRANGER,
        "Return-Receipt-To": STRANGER,
    }
    forged(daemon, "Agnes <AGENT@EXAMPLE.TEST>", "#show 1", extra=everywhere)
    [shown] = mails_to(outbox, AGENT, "[#1] Printer broken")
    assert shown.to == [AGENT]
    processed(daemon, 2)
    assert all(STRANGER.encode() not in s.raw.lower() for s in sent(outbox))


def test_forgeries_use_up_only_the_unproven_allowance(
    daemon: RunningDaemon, outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(console, "PER_HOUR", 2)
    opened = open_ticket(daemon, outbox)
    for _ in range(3):
        forged(daemon, AGENT, "#list all")
    processed(daemon, 4)
    # Two answered (to Agnes, never to Mallory), the third dropped.
    assert len(mails_to(outbox, AGENT, "#list all", 2)) == 2
    # Agnes's own request, proven by her signed reply address, is still answered.
    agent_writes(daemon, AGENT, "#show 1", to=opened.reply_to, answering=opened.notification)
    [shown] = mails_to(outbox, AGENT, "[#1] Printer broken")
    assert shown.to == [AGENT]
    processed(daemon, 5)
    assert len([s for s in sent(outbox) if s.subject.startswith("#list all")]) == 2
    assert all(STRANGER not in s.to for s in sent(outbox))


@pytest.mark.parametrize("to", ["signed reply address", "support address"])
def test_an_agents_out_of_office_answer_is_not_relayed(
    daemon: RunningDaemon, outbox: Outbox, config_file: Path, to: str
) -> None:
    opened = open_ticket(daemon, outbox)
    # Exchange and Sieve vacation answer a notification, marked as RFC 3834 says, to
    # its Reply-To or to the envelope sender; either proves the agent's mailbox.
    address = opened.reply_to if to == "signed reply address" else SUPPORT
    agent_writes(
        daemon, AGENT, "#status closed\nI am out of the office until Monday.", to=address,
        answering=opened.notification, subject="Automatic reply: [#1] New ticket",
        extra={"Auto-Submitted": "auto-replied"},
    )  # fmt: skip
    processed(daemon, 2)
    state = show(config_file)
    assert (state["status"], state["owner"], state["events"]) == ("new", None, [])
    assert len(mail_to(outbox, ALICE)) == 1  # the acknowledgement only
    assert not [s for s in sent(outbox) if s.subject.startswith("[#1] Not sent")]


def test_an_automatic_console_request_is_not_answered(
    daemon: RunningDaemon, outbox: Outbox
) -> None:
    open_ticket(daemon, outbox)
    agent_writes(daemon, AGENT, "#list all", extra={"Auto-Submitted": "auto-replied"})
    processed(daemon, 2)
    agent_writes(daemon, AGENT, "#list open")
    mails_to(outbox, AGENT, "#list open")
    assert not [s for s in sent(outbox) if s.subject.startswith("#list all")]


def test_a_confirmation_runs_only_on_the_agents_own_typed_reply(
    daemon: RunningDaemon, outbox: Outbox, config_file: Path
) -> None:
    confirm = confirmation_for_bob(daemon, outbox)
    address = reply_to(confirm)
    # Bob's vacation responder answers the confirmation mail (RFC 3834 marks it).
    agent_writes(
        daemon, BOB, "I am away until Monday.", to=address, answering=confirm,
        subject="Automatic reply: Confirm", extra={"Auto-Submitted": "auto-replied"},
    )  # fmt: skip
    # Bob forwarded the confirmation to Agnes; she replies to it.
    agent_writes(daemon, AGENT, "yes", to=address, answering=confirm)
    # Mallory saw the address somewhere and replies From herself, then From Bob with a
    # null envelope sender, as a bounce would come.
    agent_writes(daemon, STRANGER, "yes", to=address, answering=confirm)
    agent_writes(daemon, BOB, "yes", to=address, answering=confirm, envelope="<>")
    processed(daemon, 7)
    assert show(config_file)["owner"] == AGENT
    assert not [s for s in sent(outbox) if s.subject.startswith("Done:")]
    # Not a confirmation, Mallory's mail is what any mail of hers is: a ticket of her own.
    [hers] = [t for t in cli(config_file, "tickets", "list") if t["number"] != 1
              and show(config_file, t["number"])["messages"][0]["from"] == STRANGER]  # fmt: skip
    assert show(config_file, hers["number"])["messages"][0]["body_text"].startswith("yes")

    # Bob's own reply runs it, once.
    agent_writes(daemon, BOB, "yes", to=address, answering=confirm)
    mails_to(outbox, BOB, "Done: #assign me")
    assert show(config_file)["owner"] == BOB


def test_an_agents_no_to_a_forged_request_cancels_it_for_good(
    daemon: RunningDaemon, outbox: Outbox, config_file: Path
) -> None:
    """Mallory, as Bob, asks for `#assign me`; Bob answers the confirmation mail "No":
    that was taken for a yes (any reply ran the commands). It cancels them now, and
    neither a later yes nor the button runs them."""
    confirm = confirmation_for_bob(daemon, outbox)
    address = reply_to(confirm)
    assert "reply YES" in confirm.text
    agent_writes(daemon, BOB, "No. I did not send this, do not do anything!", to=address,
                 answering=confirm)  # fmt: skip
    [cancelled] = mails_to(outbox, BOB, "Cancelled: #assign me")
    assert "nothing was done" in cancelled.text
    assert show(config_file)["owner"] == AGENT

    agent_writes(daemon, BOB, "yes", to=address, answering=confirm)
    assert len(mails_to(outbox, BOB, "Cancelled: #assign me", count=2)) == 2
    url = next(w for w in confirm.text.split() if "/confirm?" in w)
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
    request = urllib.request.Request(url.split("?")[0], urllib.parse.urlencode(query).encode())
    with pytest.raises(urllib.error.HTTPError) as pressed:
        urllib.request.urlopen(request, timeout=10)  # noqa: S310
    assert pressed.value.code == 409
    assert "cancelled" in pressed.value.read().decode()
    assert show(config_file)["owner"] == AGENT
    assert not [s for s in sent(outbox) if s.subject.startswith("Done:")]


@pytest.mark.parametrize(
    ("answer", "agrees"),
    [
        ("yes", True),
        ("Yes, please.", True),
        ("ANO", True),
        ("Dobrý den,\nano", True),
        ("CONFIRM\n\n-- \nBob", True),
        ("ok", True),
        ("No. I did not send this!", False),
        ("yes? I never asked for that", False),
        ("Yes, but not now", False),
        ("I don't know what this is", False),
        ("Ne, to jsem neposlal.", False),
        ("", False),
        ("> yes\nwho sent this?", False),
        ("On Mon, Nov 23, 2026 at 10:00 AM Bob wrote:\n> reply YES\n\nyes", True),
        ("> reply YES to this mail\n\nNo way!", False),
    ],
)
def test_what_answers_a_confirmation_with_yes(answer: str, agrees: bool) -> None:
    assert replies.agrees(answer) is agrees


def test_a_row_address_asks_for_a_show_and_proves_nothing(
    daemon: RunningDaemon, outbox: Outbox, config_file: Path
) -> None:
    open_ticket(daemon, outbox)
    agent_writes(daemon, BOB, "#list all")
    [listed] = mails_to(outbox, BOB, "#list all")
    row = next(w for w in listed.text.split() if w.startswith("support+s1a2."))
    # Bob's row address in Mallory's hands: From Bob, with commands that change things.
    forged(daemon, BOB, "#status closed\n#assign me\n#cc mallory@stranger.test", to=row)
    [shown] = mails_to(outbox, BOB, "[#1] Printer broken")
    assert shown.to == [BOB]
    # From Agnes, Bob's row address is nobody's: her commands name no ticket.
    forged(daemon, AGENT, "#status closed", to=row)
    [error] = mails_to(outbox, AGENT, "Not sent")
    assert "which ticket?" in error.text
    processed(daemon, 4)
    state = show(config_file)
    assert (state["status"], state["owner"], state["events"]) == ("new", None, [])
    assert participants(daemon) == [ALICE]
    assert all(STRANGER not in s.to for s in sent(outbox))


def test_an_expired_confirm_button_does_nothing(
    daemon: RunningDaemon, outbox: Outbox, config_file: Path, clock: ManualClock
) -> None:
    confirm = confirmation_for_bob(daemon, outbox)
    url = next(w for w in confirm.text.split() if "/confirm?" in w)
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
    clock.advance(timedelta(hours=console.CONFIRM_HOURS, seconds=1))
    with pytest.raises(urllib.error.HTTPError) as shown:
        urllib.request.urlopen(url, timeout=10)  # noqa: S310
    assert shown.value.code == 400  # the page offers nothing to confirm
    assert "#assign me" not in shown.value.read().decode()
    request = urllib.request.Request(url.split("?")[0], urllib.parse.urlencode(query).encode())
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)  # noqa: S310
    assert refused.value.code == 410
    assert show(config_file)["owner"] == AGENT


@pytest.mark.parametrize(
    "line",
    [
        "#cc carol@partner.test, dave@partner.test",  # two recipients
        "#cc carol@partner.test dave@partner.test",
        "#cc Carol <carol@partner.test>",
        "#cc carol\x01@partner.test",  # a control character
        "#cc carol@partner",  # no domain to send to
        "#cc carol@-partner.test",
    ],
)
def test_cc_adds_one_plain_address_or_nothing(
    daemon: RunningDaemon, outbox: Outbox, config_file: Path, line: str
) -> None:
    opened = open_ticket(daemon, outbox)
    agent_writes(daemon, AGENT, f"{line}\nHello Alice.", to=opened.reply_to,
                 answering=opened.notification)  # fmt: skip
    [error] = mails_to(outbox, AGENT, "[#1] Not sent")
    assert "must be an address" in error.text
    assert participants(daemon) == [ALICE]
    assert len(mail_to(outbox, ALICE)) == 1  # only the acknowledgement


def test_cc_cannot_write_a_header(daemon: RunningDaemon, outbox: Outbox, config_file: Path) -> None:
    opened = open_ticket(daemon, outbox)
    # A line break ends the command line: what follows is text for Alice, not a header.
    agent_writes(daemon, AGENT, "#cc carol@partner.test\r\nBcc: mallory@stranger.test\r\n",
                 to=opened.reply_to, answering=opened.notification)  # fmt: skip
    [_, relay] = mail_to(outbox, ALICE, 2)
    assert relay.msg["Bcc"] is None
    assert sorted(relay.to) == [ALICE, "carol@partner.test"]
    assert participants(daemon) == [ALICE, "carol@partner.test"]
    assert all(STRANGER not in s.to for s in sent(outbox))


def test_each_cc_line_adds_one_and_a_repeated_command_is_an_error(
    daemon: RunningDaemon, outbox: Outbox, config_file: Path
) -> None:
    opened = open_ticket(daemon, outbox)
    agent_writes(daemon, AGENT, "#status resolved\n#status closed\nBye.", to=opened.reply_to,
                 answering=opened.notification)  # fmt: skip
    [error] = mails_to(outbox, AGENT, "[#1] Not sent")
    assert "#status closed: given twice; write it once" in error.text
    assert show(config_file)["status"] == "new"
    agent_writes(daemon, AGENT, "#cc carol@partner.test\n#cc dave@partner.test\nHello all.",
                 to=opened.reply_to, answering=opened.notification)  # fmt: skip
    [_, relay] = mail_to(outbox, ALICE, 2)
    assert sorted(relay.to) == [ALICE, "carol@partner.test", "dave@partner.test"]
    assert participants(daemon) == [ALICE, "carol@partner.test", "dave@partner.test"]


@pytest.mark.parametrize("name", ["../../etc/passwd", "{{ 7*7 }}", "fixed/../../x", "FIXED.txt"])
def test_a_canned_reply_name_is_a_name_not_a_path(
    daemon: RunningDaemon, outbox: Outbox, name: str
) -> None:
    opened = open_ticket(daemon, outbox)
    agent_writes(daemon, AGENT, f"#reply {name}\nHello", to=opened.reply_to,
                 answering=opened.notification)  # fmt: skip
    [error] = mails_to(outbox, AGENT, "[#1] Not sent")
    assert "canned reply's name" in error.text
    assert "root:" not in error.text and "49" not in error.text
    assert len(mail_to(outbox, ALICE)) == 1


def test_a_ticket_number_is_ascii_digits(daemon: RunningDaemon, outbox: Outbox) -> None:
    open_ticket(daemon, outbox)
    forged(daemon, AGENT, "#show \u00b2", subject="superscript")  # isdigit(), but no int
    [error] = mails_to(outbox, AGENT, "Not sent: superscript")
    assert "write a ticket number" in error.text
    processed(daemon, 2)


def test_a_canned_reply_renders_the_customers_words_as_text(
    daemon: RunningDaemon, outbox: Outbox
) -> None:
    msg = EmailMessage()
    msg["From"] = f'"{{{{ 7*7 }}}}" <{ALICE}>'
    msg["To"] = SUPPORT
    msg["Subject"] = "{{ 6*7 }} {% for x in ().__class__.__mro__ %}{{ x }}{% endfor %}"
    msg["Message-ID"] = "<template@customer.test>"
    msg["Date"] = email.utils.format_datetime(email.utils.localtime())
    msg.set_content("{{ ''.__class__ }}")
    msg["Content-Language"] = "en"
    daemon.send(msg.as_bytes(policy=email.policy.SMTP))
    [notification] = mail_to(outbox, AGENT)
    agent_writes(daemon, AGENT, "#reply need-details", to=reply_to(notification),
                 answering=notification)  # fmt: skip
    [_, relay] = mail_to(outbox, ALICE, 2)
    assert relay.text.startswith("Hello {{ 7*7 }},")
    assert '"{{ 6*7 }} {% for x in ().__class__.__mro__ %}{{ x }}{% endfor %}"' in relay.text
    assert "49" not in relay.text and "42" not in relay.text and "object" not in relay.text


def test_search_operators_are_words(daemon: RunningDaemon, outbox: Outbox) -> None:
    open_ticket(daemon, outbox)
    # FTS5 and tsquery syntax: quotes, a star, a column filter, NEAR, ^, unbalanced
    # parentheses. Every query word must be in the mail; none of it is syntax.
    forged(daemon, AGENT, '#search "printer" blank*')
    [found] = mails_to(outbox, AGENT, '#search "printer" blank*')
    assert found.subject.endswith(": 1 ticket")
    forged(daemon, AGENT, "#search document:printer OR NEAR(blank ^pages) ) ' \\ &|!:*")
    [none] = mails_to(outbox, AGENT, "#search document:printer")
    assert none.subject.endswith(": 0 tickets")


def test_a_huge_command_mail_gets_one_short_answer(daemon: RunningDaemon, outbox: Outbox) -> None:
    open_ticket(daemon, outbox)
    forged(daemon, AGENT, "#lsit\n" * 50_000)
    [many] = mails_to(outbox, AGENT, "Not sent")
    assert f"at most {commands.MAX_COMMANDS} command lines" in many.text
    assert len(many.raw) < 10_000
    forged(daemon, AGENT, "#search " + "printer " * 100_000, subject="long")
    [long] = mails_to(outbox, AGENT, "Not sent: long")
    assert f"at most {commands.MAX_LINE} characters" in long.text
    assert len(long.raw) < 10_000
    forged(daemon, AGENT, "#list all")
    mails_to(outbox, AGENT, "#list all")


def nested(depth: int, text: str) -> bytes:
    """A command mail `depth` multiparts deep."""
    body = f"Content-Type: text/plain\r\n\r\n{text}\r\n".encode()
    for level in range(depth):
        b = f"b{level}".encode()
        body = (
            b'Content-Type: multipart/mixed; boundary="' + b + b'"\r\n\r\n'
            b"--" + b + b"\r\n" + body + b"\r\n--" + b + b"--\r\n"
        )
    date = email.utils.format_datetime(email.utils.localtime()).encode()
    head = (
        f"From: {AGENT}\r\nTo: {SUPPORT}\r\nSubject: deep\r\n"
        f"Message-ID: <deep@stranger.test>\r\nMIME-Version: 1.0\r\n"
    ).encode()
    return head + b"Date: " + date + b"\r\n" + body


def test_a_deeply_nested_mail_does_not_stall_the_processor(
    daemon: RunningDaemon, outbox: Outbox
) -> None:
    open_ticket(daemon, outbox)
    daemon.send(nested(3000, "#list all"), sender=STRANGER)
    rows = processed_or_failed(daemon, 2)
    assert rows[-1].error or rows[-1].state != "pending"
    forged(daemon, AGENT, "#list all", subject="after")
    [listed] = mails_to(outbox, AGENT, "#list all")
    assert listed.to == [AGENT]
