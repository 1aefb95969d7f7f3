"""Attacks of someone other than the ticket's customer, end to end over real SMTP.

Each test is an attack that worked until the commit that added it: who tries it,
with what they hold (a ticket's signed reply address that reached them, a From
anyone can write), and what they get now. Waits are deadlines on the outbox or
the database, never sleeps.
"""

from __future__ import annotations

import io
import re
from typing import Any

import pytest
from sqlalchemy import event

from maildesk import logs
from maildesk.pipeline.threader import MAX_TAGS
from maildesk.states import OutboxState
from tests.client_replies import OUTLOOK_EN, agent_sends, client_reply, commands_top
from tests.conftest import Outbox, RunningDaemon, make_mail, wait_for
from tests.helpers import outbox_rows, participants, person_name, ticket, tickets
from tests.mailclient import (
    AGENT,
    ALICE,
    ALICE_FROM,
    STRANGER,
    Sent,
    alice_replies,
    desk_config,
    mail,
    mail_to,
    mails_to,
    open_ticket,
    processed,
    reply_to,
)
from tests.web.portal_client import Client

COLLEAGUE = "carol@partner.test"  # someone Alice copies in: a participant of her ticket
VICTIM = "victim@bank.test"  # whose From a stranger writes
SPAM = "Your account is locked, call +1 555 0100"


def fields(sent: Sent) -> str:
    return "\n".join(f"{name}: {value}" for name, value in sent.msg.items())


def repeats_no_lure(sent: Sent) -> None:
    """Neither `sent`'s header fields nor its text repeat the stranger's phone number."""
    assert "555" not in fields(sent) and "555" not in sent.text, f"{fields(sent)}\n\n{sent.text}"


@pytest.fixture
def config_values(config_values: dict[str, Any]) -> dict[str, Any]:
    # The shipped default: unproven mail's words are not repeated (conftest echoes them).
    config_values["trust"]["echo_unproven"] = False
    return desk_config(config_values, AGENT)


def test_a_participant_forging_the_requesters_from_cannot_approve_paid_work(
    daemon: RunningDaemon, outbox: Outbox
) -> None:
    """Paid work is the requester's to approve. Carol, whom Alice copied, holds the
    ticket's signed reply address (it was in the To of Alice's mail): with Alice's From
    written above it, her APPROVE was taken for Alice's, and Alice was to pay."""
    opened = open_ticket(daemon, outbox)
    token = reply_to(opened.ack)
    text = "Carol from our partner will follow this too."
    subject = "Re: [#1] Printer broken"
    copying = mail(ALICE_FROM, text, subject=subject, to=token, extra={"Cc": COLLEAGUE})
    daemon.send(copying, sender=ALICE, recipients=(token,))
    processed(daemon, 2)
    assert COLLEAGUE in participants(daemon.services, 1)
    top = commands_top("#type modification", "#paid 4 hours, 6 000 CZK", text="Hello Alice,")
    paid = client_reply(OUTLOOK_EN, opened.notification, opened.reply_to, top=top)
    agent_sends(daemon, paid, opened.reply_to)
    mails_to(outbox, ALICE, "[#1] Paid work")
    assert ticket(daemon.services, 1)["paid"] == "pending"

    forged = mail(ALICE_FROM, "APPROVE", subject="Re: [#1] Paid work", to=token)
    daemon.send(forged, sender=COLLEAGUE, recipients=(token,))
    processed(daemon, 4)

    state = ticket(daemon.services, 1)
    assert (state["paid"], state["status"]) == ("pending", "waiting_customer")
    told = mail_to(outbox, AGENT, 3)[-1]
    assert "APPROVED" not in told.subject


def test_a_strangers_words_in_a_forged_ticket_never_reach_its_victim_in_our_later_mail(
    daemon: RunningDaemon, outbox: Outbox
) -> None:
    """The acknowledgement of unproven mail repeats none of its words, so that nobody
    has our domain sign and deliver their text to any address. The mails after it did:
    an agent answering what looked like spam, or closing it, sent the victim "[#1]
    Closed: Your account is locked, call +1 555 0100", greeting "Call +1 555 0100"."""
    lure = make_mail(SPAM, f'"Call +1 555 0100" <{VICTIM}>', body=f"{SPAM}.",
                     message_id="<Your.account.is.locked.call.1-555-0100@bank.test>")  # fmt: skip
    daemon.send(lure, sender="x@stranger.test")
    [notification] = mail_to(outbox, AGENT)
    [ack] = mail_to(outbox, VICTIM)
    token = reply_to(notification)
    answer = commands_top(text="We have no account of yours; please ignore this.")
    agent_sends(daemon, client_reply(OUTLOOK_EN, notification, token, top=answer), token)
    mails_to(outbox, VICTIM, "Re: [#1]")
    closing = commands_top("#status closed", text="")
    agent_sends(daemon, client_reply(OUTLOOK_EN, notification, token, top=closing), token)
    mails_to(outbox, VICTIM, "[#1] Closed")

    for sent in mail_to(outbox, VICTIM, 3):
        repeats_no_lure(sent)
        assert "locked" not in fields(sent).lower(), fields(sent)
    assert ack.subject == "[#1] Your request"


def test_the_log_holds_no_message_id_of_our_mail_that_would_let_its_reader_into_the_ticket(
    daemon: RunningDaemon, outbox: Outbox, restore_logging: None
) -> None:
    """A Message-ID we minted for a customer's mail is a secret of her ticket: whoever
    answers it writes as a proven correspondent (README "Trust"). Every mail sent logged
    it ("outbox 2 sent md.…@example.test to alice@…"), so anyone who reads the journal
    (the adm group, a log shipper) could answer any customer's mail, From any address:
    he became a participant, got every later answer, and with the portal's "send me a
    new link" read the whole thread. The outbox's number says which mail it was."""
    stream = io.StringIO()
    logs.configure("info", stream)
    opened = open_ticket(daemon, outbox)
    answer = commands_top(text="Hello Alice, we are on it.")
    agent_sends(
        daemon,
        client_reply(OUTLOOK_EN, opened.notification, opened.reply_to, top=answer),
        opened.reply_to,
    )
    mails_to(outbox, ALICE, "Re: [#1]")

    def all_sent() -> list[Any] | None:
        rows = outbox_rows(daemon.services)
        return rows if all(row.state == OutboxState.SENT for row in rows) else None

    rows = wait_for(all_sent, what="every mail marked sent")
    written = stream.getvalue()
    assert len(rows) >= 3
    for row in rows:
        assert row.message_id not in written, row.message_id
        assert re.search(rf"outbox {row.id} sent\b", written), written
    assert not re.search(r"md\.[A-Za-z0-9]+@", written), written


def test_a_participant_forging_the_requesters_from_cannot_rename_her(
    daemon: RunningDaemon, outbox: Outbox
) -> None:
    """A name that unproven mail gave is replaced by the person's own proven mail. The
    ticket's reply address proves only that someone we wrote to wrote: Carol, whom Alice
    copied in, wrote Alice's From with a name of her choosing above it, and the agents'
    notices and every later mail called Alice so."""
    opened = open_ticket(daemon, outbox)
    token = reply_to(opened.ack)
    copying = mail(ALICE_FROM, "Carol follows this too.", subject="Re: [#1] Printer broken",
                   to=token, extra={"Cc": COLLEAGUE})  # fmt: skip
    daemon.send(copying, sender=ALICE, recipients=(token,))
    processed(daemon, 2)
    assert COLLEAGUE in participants(daemon.services, 1)

    renaming = mail(f"Alice Smith (dismissed) <{ALICE}>", "Ignore my earlier mail.",
                    subject="Re: [#1] Printer broken", to=token)  # fmt: skip
    daemon.send(renaming, sender=COLLEAGUE, recipients=(token,))
    processed(daemon, 3)

    assert person_name(daemon.services, ALICE) == "Alice Smith"
    told = mail_to(outbox, AGENT, 2)[-1]  # quotes the mail as written, names her as before
    assert f"Requester: Alice Smith <{ALICE}>" in told.text, told.text


def test_a_participant_cannot_prove_a_strangers_ticket_its_requesters(
    daemon: RunningDaemon, outbox: Outbox
) -> None:
    """A ticket a stranger opened in someone's name is hers once her own mail proves it;
    until then our mail to her repeats none of its words, and her organization does not
    see it. Any proven reply counted, whoever wrote it: Carol, whom the agent copied in,
    answered with the ticket's reply address, and the victim's next mail carried the
    stranger's subject, signed by our domain."""
    lure = make_mail(SPAM, f'"Call +1 555 0100" <{VICTIM}>', body=f"{SPAM}.")
    daemon.send(lure, sender="x@stranger.test")
    [notification] = mail_to(outbox, AGENT)
    token = reply_to(notification)
    copying = commands_top(f"#cc {COLLEAGUE}", text="Carol, do you know of this account?")
    agent_sends(daemon, client_reply(OUTLOOK_EN, notification, token, top=copying), token)
    [asked] = mails_to(outbox, COLLEAGUE, "Re: [#1]")
    for writer in (f"Carol <{COLLEAGUE}>", f"Victim <{VICTIM}>"):
        answer = mail(writer, "No idea.", subject="Re: [#1]", to=reply_to(asked))
        daemon.send(answer, sender=COLLEAGUE, recipients=(reply_to(asked),))
    processed(daemon, 4)

    closing = commands_top("#status closed", text="")
    agent_sends(daemon, client_reply(OUTLOOK_EN, notification, token, top=closing), token)
    [closed] = mails_to(outbox, VICTIM, "[#1] Closed")
    repeats_no_lure(closed)


# The statements that read one ticket, or whether someone takes part in it, by its number.
_BY_NUMBER = re.compile(
    r"FROM tickets JOIN people ON .*WHERE tickets\.id = "
    r"|FROM participants JOIN people ON .*WHERE participants\.ticket_id = ",
    re.DOTALL,
)


def test_a_subject_full_of_ticket_tags_costs_a_few_lookups(
    daemon: RunningDaemon, outbox: Outbox
) -> None:
    """`[#N]` in a subject names ticket N for its participants only. Each tag of a
    stranger's subject was read ticket by ticket (on PostgreSQL locked until the write
    ended) before asking whether he takes part: `[#1][#2]…` in 1,000 characters made
    185 lookups inside the write transaction, five times the cost of a whole mail, and
    held every ticket it named. Now the first few tags are asked about, by number, no
    ticket he takes no part in is read, and his mail opens a ticket of its own."""
    open_ticket(daemon, outbox)
    lookups: list[str] = []

    def note(_c: Any, _cur: Any, statement: str, _p: Any, _ctx: Any, _many: bool) -> None:
        if _BY_NUMBER.search(statement):
            lookups.append(statement)

    engine = daemon.services.db.engine
    event.listen(engine, "before_cursor_execute", note)
    try:
        tags = "".join(f"[#{n}]" for n in range(1, 300))[:1000]
        daemon.send(make_mail(tags, "Mallory <mallory@stranger.test>"), sender=STRANGER)
        processed(daemon, 2)
    finally:
        event.remove(engine, "before_cursor_execute", note)

    assert len(lookups) <= MAX_TAGS, lookups
    assert [t["requester"] for t in tickets(daemon.services)] == [ALICE, STRANGER]


def test_a_strangers_message_id_in_her_ticket_is_not_repeated_in_our_mail_to_her(
    daemon: RunningDaemon, outbox: Outbox
) -> None:
    """A Message-ID is words its writer chose (`<Your.account.is.locked…@…>`). Mallory
    writes Alice's From and her ticket's tag: his mail joins her ticket marked
    unverified, and the portal never shows it her. Our next mails to her named it in
    their In-Reply-To and References all the same, signed by our domain (once her own
    mail had proven the ticket hers, nothing filtered them)."""
    opened = open_ticket(daemon, outbox)
    alice_replies(daemon, outbox, "It is the HP on floor 2.")  # proves the ticket hers
    processed(daemon, 2)
    lure = "<Your.account.is.locked.call.1-555-0100@bank.test>"
    forged = make_mail("Re: [#1] Printer broken", ALICE_FROM, body="Call us.", message_id=lure)
    daemon.send(forged, sender=STRANGER)
    processed(daemon, 3)
    assert ticket(daemon.services, 1)["messages"][-1]["flag"] == "unverified"

    answer = commands_top(text="Hello Alice, a technician comes today.")
    reply = client_reply(OUTLOOK_EN, opened.notification, opened.reply_to, top=answer)
    agent_sends(daemon, reply, opened.reply_to)
    [relayed] = mails_to(outbox, ALICE, "Re: [#1]")

    threading = f"{relayed.msg['In-Reply-To']} {relayed.msg['References']}"
    assert "555" not in threading and "locked" not in threading, threading
    assert opened.customer_message_id in threading, threading


def test_a_name_a_stranger_gave_someone_new_is_not_repeated_when_they_are_copied_in(
    daemon: RunningDaemon, outbox: Outbox
) -> None:
    """Mail that proves nothing names only someone new, and our mail to the ticket it
    opened withholds that name. Mallory wrote `"Call +1 555 0100" <carol@…>` before
    Carol ever wrote to us; when Alice later copied Carol into her own ticket, the
    agent's answer went To `"Call +1 555 0100" <carol@…>`, to both of them, signed by
    our domain."""
    lure = make_mail("Hello", f'"Call +1 555 0100" <{COLLEAGUE}>', body="Hello.")
    daemon.send(lure, sender=STRANGER)
    mail_to(outbox, COLLEAGUE)  # the acknowledgement of ticket 1, which names nobody
    daemon.send(make_mail(sender=ALICE_FROM))  # ticket 2
    notification = mail_to(outbox, AGENT, 2)[-1]
    [ack] = mail_to(outbox, ALICE)
    token = reply_to(ack)
    copying = mail(ALICE_FROM, "Carol follows this too.", subject="Re: [#2] Printer broken",
                   to=token, extra={"Cc": COLLEAGUE})  # fmt: skip
    daemon.send(copying, sender=ALICE, recipients=(token,))
    processed(daemon, 3)
    assert COLLEAGUE in participants(daemon.services, 2)

    answer = commands_top(text="Hello Alice, a technician comes today.")
    agent_sends(daemon, client_reply(OUTLOOK_EN, notification, reply_to(notification),
                                     top=answer), reply_to(notification))  # fmt: skip
    [relayed] = mails_to(outbox, ALICE, "Re: [#2]")

    assert COLLEAGUE in relayed.to, fields(relayed)
    repeats_no_lure(relayed)


def test_nor_is_it_repeated_when_an_agent_makes_them_the_requester(
    daemon: RunningDaemon, outbox: Outbox
) -> None:
    """The same name, when an agent hands Alice's ticket (proven hers) over to Carol with
    `#requester`: the status notice greeted her "Hello Call +1 555 0100,"."""
    lure = make_mail("Hello", f'"Call +1 555 0100" <{COLLEAGUE}>', body="Hello.")
    daemon.send(lure, sender=STRANGER)
    mail_to(outbox, COLLEAGUE)  # the acknowledgement of ticket 1, which names nobody
    daemon.send(make_mail(sender=ALICE_FROM))  # ticket 2
    notification = mail_to(outbox, AGENT, 2)[-1]
    alice_replies_to = reply_to(mail_to(outbox, ALICE)[0])
    answer = mail(ALICE_FROM, "It is the HP.", subject="Re: [#2] Printer broken",
                  to=alice_replies_to)  # fmt: skip
    daemon.send(answer, sender=ALICE, recipients=(alice_replies_to,))  # proves it hers
    processed(daemon, 3)

    handing = commands_top(f"#requester {COLLEAGUE}", "#status resolved", text="")
    token = reply_to(notification)
    agent_sends(daemon, client_reply(OUTLOOK_EN, notification, token, top=handing), token)
    [resolved] = mails_to(outbox, COLLEAGUE, "[#2]")

    repeats_no_lure(resolved)


def test_a_canned_reply_repeats_none_of_a_forged_tickets_words(
    daemon: RunningDaemon, outbox: Outbox
) -> None:
    """Our mail to a ticket's customer repeats none of its unproven first mail's words.
    A canned reply did: an agent's routine `#reply need-details` to a vague request sent
    the victim 'Hello Call +1 555 0100, thank you for your message about "Your account
    is locked, call +1 555 0100"', signed by our domain."""
    lure = make_mail(SPAM, f'"Call +1 555 0100" <{VICTIM}>', body=f"{SPAM}.")
    daemon.send(lure, sender="x@stranger.test")
    [notification] = mail_to(outbox, AGENT)
    token = reply_to(notification)
    asking = commands_top("#reply need-details", text="")
    agent_sends(daemon, client_reply(OUTLOOK_EN, notification, token, top=asking), token)
    [answer] = mails_to(outbox, VICTIM, "Re: [#1]")

    assert answer.text.startswith("Hello,"), answer.text
    assert "thank you for your message" in answer.text, answer.text
    assert "555" not in answer.text and "locked" not in answer.text.lower(), answer.text


def test_a_name_a_stranger_gave_is_not_in_the_link_anyone_may_have_us_send(
    daemon: RunningDaemon, outbox: Outbox
) -> None:
    """Anyone may ask the portal to mail a known address a new set-password link. With
    a forged mail first naming the victim, the link came To `"Call +1 555 0100"
    <victim@…>`, greeting "Hello Call +1 555 0100,", signed by our domain."""
    lure = make_mail("Hello", f'"Call +1 555 0100" <{VICTIM}>', body="Hello.")
    daemon.send(lure, sender=STRANGER)
    mail_to(outbox, VICTIM)  # the acknowledgement, which names nobody
    web = daemon.services.settings.web
    portal = Client(f"http://{web.host}:{web.port}")
    portal.get("/account/forgot")
    portal.post("/account/forgot", {"email": VICTIM})
    [link] = mails_to(outbox, VICTIM, "Your account at")

    repeats_no_lure(link)


def test_her_own_proven_mail_lets_our_mail_name_her_again(
    daemon: RunningDaemon, outbox: Outbox
) -> None:
    """The other side of withholding names that unproven mail gave: once Alice's own mail
    proves her (her answer to our mail, in a ticket nobody else takes part in), the name
    it carries is hers, the same as before or not. Her first mail's name was kept as
    unproven for good when her proven mail repeated it, and our mail never named her."""
    opened = open_ticket(daemon, outbox)
    alice_answers = mail(ALICE_FROM, "It is the one on floor 2.", subject="Re: [#1] Your request",
                         to=reply_to(opened.ack))  # fmt: skip
    daemon.send(alice_answers, sender=ALICE, recipients=(reply_to(opened.ack),))
    processed(daemon, 2)

    answer = commands_top(text="Hello Alice, a technician comes today.")
    agent_sends(daemon, client_reply(OUTLOOK_EN, opened.notification, opened.reply_to,
                                     top=answer), opened.reply_to)  # fmt: skip
    [relayed] = mails_to(outbox, ALICE, "Re: [#1]")
    assert str(relayed.msg["To"]) == ALICE_FROM
