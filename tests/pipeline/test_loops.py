"""Loop and bounce safety (RFC 3834, RFC 3464): automatic mail is kept, never answered.

Every message here is recorded in a ticket (nothing is lost), but only mail a
person wrote gets the automatic acknowledgement. A bounce of one of our own
messages is filed in the ticket of the message it bounces and marks that
outbox row `bounced`. (Agents may still be told about a new ticket: that mail
goes to us, not back to the sender, and is no loop.)
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from maildesk.clock import ManualClock
from maildesk.models import Outbox, Ticket
from maildesk.outbound import caps
from maildesk.services import Services
from maildesk.tickets.lifecycle import Lifecycle
from tests.conftest import eml, make_mail
from tests.helpers import inbound_row, outbox_rows, receive, ticket, tickets

ALICE = "alice@customer.test"


def send_outbox(services: Services) -> int:
    """Run the outbox sender once (to the test's Maildir); returns how many it handled."""
    sender = services.sender()
    try:
        return sender.send_due()
    finally:
        sender.transport.close()


def acks(services: Services) -> list[Outbox]:
    return [row for row in outbox_rows(services) if row.kind == "acknowledgement"]


def mail_to(services: Services, address: str) -> list[Outbox]:
    """Everything maildesk queued for `address`: what would start a loop."""
    return [row for row in outbox_rows(services) if address in row.recipients]


def inbound_messages(services: Services, number: int) -> list[dict[str, Any]]:
    return [m for m in ticket(services, number)["messages"] if m["direction"] == "in"]


def acknowledged(services: Services) -> str:
    """Alice writes in and maildesk sends its acknowledgement; returns that Message-ID."""
    receive(services, make_mail(message_id="<first@customer.test>"))
    [ack] = acks(services)
    assert send_outbox(services) >= 1
    assert all(row.state == "sent" for row in outbox_rows(services))
    return ack.message_id


# -- automatic, bulk and list mail -----------------------------------------------------------

OUT_OF_OFFICE_FOR_SPAM = eml("out-of-office-auto-submitted.eml").replace(
    b"{ORIGINAL_ID}", b"4711.spam@bulk.evil.test"
)

AUTOMATIC = {
    # Backscatter: a vacation reply to spam that forged our address; it names no mail of ours.
    "auto-submitted-out-of-office": (OUT_OF_OFFICE_FOR_SPAM, "bob@customer.test"),
    "precedence-bulk": (eml("precedence-bulk.eml"), "bounces+1234567@em.vendor.test"),
    "precedence-junk": (make_mail(Precedence="junk"), ALICE),
    "precedence-list": (make_mail(Precedence="list"), ALICE),
    # Vacation programs and help desks that write no Auto-Submitted (RFC 3834) say so
    # otherwise; each answered the other at the caps' pace, forever.
    "precedence-auto-reply": (make_mail(Precedence="auto_reply"), ALICE),
    "x-autoreply": (make_mail(X_Autoreply="yes"), ALICE),
    "x-autorespond": (make_mail(X_Autorespond="Out of office"), ALICE),
    "x-loop-of-another-desk": (make_mail(X_Loop="support@other-desk.test"), ALICE),
    "mailing-list-id": (eml("mailing-list-post.eml"), "printers-users-bounces@lists.vendor.test"),
    # A bulk sender's newsletter: RFC 2369/8058 List-Unsubscribe, but no Precedence, no List-Id.
    "list-unsubscribe-newsletter": (
        eml("newsletter-list-unsubscribe.eml"),
        "0102019a3c5e7f10-6b1d2c3e@eu-west-1.amazonses.com",
    ),
    "null-envelope-sender": (make_mail(), "<>"),
    "from-mailer-daemon": (
        make_mail(
            sender="Mail Delivery System <MAILER-DAEMON@mx.customer.test>",
            subject="Mail server maintenance on Saturday",
            body="mx.customer.test will be offline on Saturday 10 January, 06:00-08:00.",
        ),
        "root@mx.customer.test",
    ),
    "from-postmaster": (
        make_mail(
            sender="Postmaster <postmaster@customer.test>",
            subject="Your server uses an invalid HELO name",
            body="Please fix the HELO name of 192.0.2.25, we will start rejecting it.",
        ),
        "postmaster@customer.test",
    ),
}


@pytest.mark.parametrize("case", sorted(AUTOMATIC))
def test_automatic_mail_opens_a_ticket_without_acknowledgement(
    services: Services, case: str
) -> None:
    raw, mail_from = AUTOMATIC[case]

    spool_id = receive(services, raw, mail_from=mail_from)

    assert inbound_row(services, spool_id).state == "done"
    [only] = tickets(services)  # recorded: an agent sees it ...
    [message] = inbound_messages(services, only["number"])
    assert message["kind"] == "auto"
    assert message["body_text"]
    assert acks(services) == []  # ... but nobody is answered
    assert mail_to(services, message["from"]) == []
    assert mail_to(services, mail_from) == []


def test_out_of_office_answering_our_acknowledgement_joins_the_ticket_silently(
    services: Services,
) -> None:
    ack_id = acknowledged(services)
    raw = eml("out-of-office-auto-submitted.eml").replace(b"{ORIGINAL_ID}", ack_id.encode())
    queued = len(outbox_rows(services))

    receive(services, raw, mail_from="bob@customer.test")

    assert len(tickets(services)) == 1
    last = inbound_messages(services, 1)[-1]
    assert (last["from"], last["kind"], last["thread_rule"]) == (
        "bob@customer.test",
        "auto",
        "references",
    )
    assert len(outbox_rows(services)) == queued  # nothing queued, for anyone
    assert send_outbox(services) == 0


@pytest.mark.parametrize("value", ["no", "No", "no (sent by a person)"])
def test_auto_submitted_no_is_a_person_and_is_acknowledged(services: Services, value: str) -> None:
    receive(services, make_mail(Auto_Submitted=value))

    [ack] = acks(services)
    assert ack.recipients == [ALICE]
    assert [m["kind"] for m in inbound_messages(services, 1)] == ["customer"]


def test_out_of_office_reply_to_the_closed_notice_does_not_reopen_the_ticket(
    services: Services,
) -> None:
    acknowledged(services)
    with services.db.transaction() as session:
        closed = session.get(Ticket, 1)
        assert closed is not None
        Lifecycle(session, services.clock.now()).change(
            closed, "status", "closed", "agent@example.test", "web"
        )
        services.notices.status_notice(session, closed)
    [notice] = [row for row in outbox_rows(services) if row.kind == "closed"]
    raw = eml("out-of-office-auto-submitted.eml").replace(
        b"{ORIGINAL_ID}", notice.message_id.encode()
    )
    queued = len(outbox_rows(services))

    receive(services, raw, mail_from="bob@customer.test")

    assert inbound_messages(services, 1)[-1]["kind"] == "auto"  # filed in the ticket ...
    assert len(outbox_rows(services)) == queued
    assert ticket(services, 1)["status"] == "closed"  # ... which stays closed


# -- bounces -----------------------------------------------------------------------------------

BOUNCES = [
    "bounce-postfix-dsn.eml",
    "bounce-exim-plain.eml",
    "bounce-qmail.eml",
    "bounce-exchange-ndr.eml",
]
# RFC 5321 wants "<>" on a bounce, but some MTAs (and forwarders) put an address there.
ENVELOPES = {"null": "<>", "not-null": "postmaster@mx.customer.test"}


@pytest.mark.parametrize("envelope", sorted(ENVELOPES))
@pytest.mark.parametrize("fixture", BOUNCES)
def test_bounce_of_our_acknowledgement_is_filed_and_never_answered(
    services: Services, fixture: str, envelope: str
) -> None:
    ack_id = acknowledged(services)
    raw = eml(fixture).replace(b"{ORIGINAL_ID}", ack_id.encode())
    before = [row.id for row in outbox_rows(services)]

    spool_id = receive(services, raw, mail_from=ENVELOPES[envelope])

    assert inbound_row(services, spool_id).state == "done"
    assert len(tickets(services)) == 1
    messages = inbound_messages(services, 1)
    assert [m["kind"] for m in messages] == ["customer", "bounce"]
    assert ALICE in messages[-1]["body_text"]
    assert [row.id for row in outbox_rows(services)] == before  # nothing queued in reply
    [ack] = acks(services)
    assert ack.message_id == ack_id
    assert ack.state == "bounced"
    assert ALICE in ack.last_error
    assert send_outbox(services) == 0


def test_bounce_that_quotes_nothing_of_ours_is_not_filed_by_the_failed_address(
    services: Services,
) -> None:
    """Anyone can name a customer's address as "failed": only our Message-ID proves a bounce.

    Filed by address, a forged report marked the customer's mail bounced and put
    a Message-ID of the forger's choosing into the customer's ticket.
    """
    ack_id = acknowledged(services)
    dsn = eml("bounce-postfix-dsn.eml")
    cut = dsn.index(b"--4dK7vQ2Wm9z1xyZ.1767603603/mx.customer.test\nContent-Description: Undel")
    raw = dsn[:cut] + b"--4dK7vQ2Wm9z1xyZ.1767603603/mx.customer.test--\n"
    assert b"Message-ID" not in raw.partition(b"\n\n")[2]

    spool_id = receive(services, raw, mail_from="<>")

    [ack] = acks(services)
    assert (ack.message_id, ack.state) == (ack_id, "sent")
    assert [m["kind"] for m in inbound_messages(services, 1)] == ["customer"]
    held = inbound_row(services, spool_id)
    assert (held.state, held.reason) == ("quarantined", "bounce for no message maildesk sent")


@pytest.mark.parametrize("fixture", BOUNCES)
def test_bounce_of_mail_maildesk_never_sent_is_quarantined(
    services: Services, fixture: str
) -> None:
    raw = eml(fixture).replace(b"{ORIGINAL_ID}", b"20260101.forged@example.test")

    spool_id = receive(services, raw, mail_from="<>")

    row = inbound_row(services, spool_id)
    assert row.state == "quarantined"
    assert "bounce" in row.reason
    assert "no message maildesk sent" in row.reason
    assert services.store.load(spool_id).raw == raw
    assert tickets(services) == []
    assert outbox_rows(services) == []  # not answered, and no agent is bothered by it


def test_customer_forwarding_a_bounce_they_got_is_a_customer_not_a_bounce(
    services: Services,
) -> None:
    """Alice's mail to us bounced and she forwards the bounce: she is asking for help."""
    spool_id = receive(services, eml("forwarded-bounce-from-customer.eml"))

    row = inbound_row(services, spool_id)
    assert (row.state, row.reason) == ("done", "")
    [only] = tickets(services)
    assert only["requester"] == ALICE
    [message] = inbound_messages(services, 1)
    assert message["kind"] == "customer"
    assert "printer on floor 2 prints only blank pages" in message["body_text"]
    [ack] = acks(services)
    assert ack.recipients == [ALICE]


def test_a_bounce_naming_mail_not_sent_yet_leaves_it_to_be_sent(services: Services) -> None:
    """Our ids are in the References of every later mail of the ticket, so anyone copied
    can name a row still waiting (and a real report can name one being retried): it was
    marked bounced, and never sent to anyone. The report is filed, the row goes out."""
    receive(services, make_mail(message_id="<waiting@customer.test>"))
    [ack] = acks(services)
    assert ack.state == "pending"
    dsn = eml("bounce-postfix-dsn.eml").replace(b"{ORIGINAL_ID}", ack.message_id.encode())

    receive(services, dsn, mail_from="<>")

    assert [m["kind"] for m in inbound_messages(services, 1)] == ["customer", "bounce"]
    assert send_outbox(services) == 1
    [ack] = acks(services)
    assert ack.state == "sent"


def test_delay_warning_is_filed_and_never_answered(services: Services) -> None:
    ack_id = acknowledged(services)
    raw = eml("bounce-postfix-delayed-dsn.eml").replace(b"{ORIGINAL_ID}", ack_id.encode())
    before = [row.id for row in outbox_rows(services)]

    spool_id = receive(services, raw, mail_from="<>")

    assert inbound_row(services, spool_id).state == "done"
    assert "WARNING ONLY" in inbound_messages(services, 1)[-1]["body_text"]
    assert [row.id for row in outbox_rows(services)] == before


def test_delay_warning_does_not_mark_the_acknowledgement_bounced(services: Services) -> None:
    """RFC 3464 `Action: delayed`: the MTA is still trying; the mail may yet arrive."""
    ack_id = acknowledged(services)
    raw = eml("bounce-postfix-delayed-dsn.eml").replace(b"{ORIGINAL_ID}", ack_id.encode())

    receive(services, raw, mail_from="<>")

    [ack] = acks(services)
    assert ack.state == "sent"


# -- the per-sender cap on automatic replies -----------------------------------------------------


def test_sixth_new_ticket_within_an_hour_gets_no_acknowledgement(
    services: Services, clock: ManualClock
) -> None:
    assert services.settings.limits.auto_replies_per_hour == 5
    for n in range(1, 7):
        receive(services, make_mail(subject=f"Problem {n}"))
        clock.advance(timedelta(minutes=5))

    assert len(tickets(services)) == 6  # every message has its ticket ...
    assert [row.ticket_id for row in mail_to(services, ALICE)] == [1, 2, 3, 4, 5]
    # ... but the sixth is not answered. The cap is per sender: Bob is still acknowledged.
    receive(services, make_mail(subject="Scanner broken", sender="bob@customer.test"))
    assert acks(services)[-1].recipients == ["bob@customer.test"]

    clock.advance(timedelta(hours=1))
    receive(services, make_mail(subject="Problem 7"))

    last = acks(services)[-1]
    assert (last.ticket_id, last.recipients) == (8, [ALICE])
    assert [row.ticket_id for row in mail_to(services, ALICE)] == [1, 2, 3, 4, 5, 8]


def test_sub_addresses_of_one_mailbox_share_its_cap(services: Services) -> None:
    """`alice+1@…` to `alice+7@…` all reach Alice's mailbox where sub-addresses exist:
    counted apart, a stranger writing From each in turn had us send Alice 5 an hour
    per tag. They share her cap now; another mailbox keeps its own."""
    for n in range(1, 8):
        receive(services, make_mail(subject=f"Problem {n}", sender=f"alice+{n}@customer.test"))
    receive(services, make_mail(subject="Scanner broken", sender="ALICE.B@customer.test"))

    assert len(tickets(services)) == 8
    assert [row.recipients for row in acks(services)] == [
        *([f"alice+{n}@customer.test"] for n in range(1, 6)),
        ["alice.b@customer.test"],
    ]


def test_every_spelling_of_one_gmail_mailbox_shares_its_cap(services: Services) -> None:
    """Gmail ignores dots, googlemail.com is gmail.com, and a `-` tag is a sub-address
    where the MTA is set up so: each spelling had a cap of its own, so a stranger had
    us send one mailbox five replies an hour per spelling."""
    spellings = [
        "alice.smith@gmail.com",
        "alicesmith@gmail.com",
        "a.l.i.c.e.s.m.i.t.h@gmail.com",
        "Alice.Smith+x@googlemail.com",
        "alicesmith-y@gmail.com",
        "alice.smith@GMAIL.COM",
        "al.icesmith@googlemail.com",
    ]
    for n, sender in enumerate(spellings):
        receive(services, make_mail(subject=f"Problem {n}", sender=sender))
    receive(services, make_mail(subject="Scanner broken", sender="bob.smith@gmail.com"))

    assert len(tickets(services)) == 8
    assert [row.recipients for row in acks(services)] == [
        *([sender.lower()] for sender in spellings[:5]),
        ["bob.smith@gmail.com"],
    ]


@pytest.mark.parametrize(
    "spelling",
    [
        "ALICE@customer.test",
        "alice+tag@customer.test",
        "alice-tag@customer.test",
        '"alice"@customer.test',
        "alice@customer.test.",
    ],
)
def test_the_cap_counts_spellings_of_a_mailbox_as_that_mailbox(spelling: str) -> None:
    assert caps.mailbox(spelling) == "alice@customer.test"
    assert caps.mailbox(spelling.replace("customer.test", "bücher.test")) == (
        "alice@xn--bcher-kva.test"
    )
    assert caps.mailbox("alice@xn--bcher-kva.test") == "alice@xn--bcher-kva.test"
