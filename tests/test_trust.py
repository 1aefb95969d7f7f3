"""Trust in e-mail: the attacks of issue 7, over real SMTP, with a real DNS server.

Each test is a stranger trying to read or change a customer's ticket with mail
whose headers they wrote: a forged bounce, a spoofed From with a subject tag,
a forged Authentication-Results, an agent's reply token used on another ticket.
Sender proof by DKIM runs against dnsmasq serving real keys (tests/dns_server.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import email
import email.message
import email.policy
import smtplib
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import dkim
import pytest
from sqlalchemy import select

from maildesk.clock import ManualClock
from maildesk.config import from_mapping
from maildesk.inbound.store import Envelope
from maildesk.models import Inbound, Outbox, Ticket
from maildesk.services import Services
from tests.conftest import RunningDaemon, make_mail, running_daemon, wait_for
from tests.dns_server import DkimKey, dns_server, make_key
from tests.helpers import (
    OUR_MTA,
    outbox_mail,
    outbox_rows,
    outbox_text,
    participants,
    ticket,
)
from tests.helpers import tickets as desk_tickets

AGENT = "agent@example.test"
ALICE = "alice@customer.test"
MALLORY = "mallory@evil.test"
BOB = "Bob <bob@customer.test>"
# Our MTA's verdict on a customer.test signature (delivered from its address, 127.0.0.1).
STAMPED = f"Authentication-Results: {OUR_MTA}; dkim=pass header.d=customer.test\r\n".encode()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, DkimKey]:
    folder = tmp_path_factory.mktemp("keys")
    domains = ("customer.test", "evil.test", "evil.uk.com", "example.test", "partner.test")
    return {domain: make_key(folder, domain) for domain in domains}


@pytest.fixture(scope="module")
def dns(keys: dict[str, DkimKey]) -> Iterator[str]:
    records = {key.record_name: key.record for key in keys.values()}
    # customer.test signs but asks nothing of receivers; bank.test rejects what fails.
    records["_dmarc.customer.test"] = "v=DMARC1; p=none"
    records["_dmarc.bank.test"] = "v=DMARC1; p=reject"
    # The desk's own domain asks receivers to quarantine unaligned mail, as a Microsoft
    # 365 tenant that signs as *.onmicrosoft.com and passes DMARC by SPF does.
    records["_dmarc.example.test"] = "v=DMARC1; p=quarantine"
    with dns_server(records) as address:
        yield address


@pytest.fixture
def desk(
    config_values: dict[str, Any], tmp_path: Path, clock: ManualClock, dns: str
) -> Iterator[RunningDaemon]:
    with running_desk(config_values, tmp_path, clock, dns) as daemon:
        yield daemon


@contextlib.contextmanager
def running_desk(
    config_values: dict[str, Any], tmp_path: Path, clock: ManualClock, dns: str
) -> Iterator[RunningDaemon]:
    config_values["agents"]["addresses"] = [AGENT]
    config_values["trust"] = {
        "verify_dkim": True,
        "dns_servers": [dns],
        "authserv_ids": ["mx.example.test"],
        # Our MTA relays from 127.0.0.1; a stranger connects from elsewhere (127.0.0.2).
        "mta_hosts": ["127.0.0.1/32"],
    }
    with running_daemon(from_mapping(config_values, base_dir=tmp_path), clock) as daemon:
        yield daemon


def send(
    desk: RunningDaemon,
    raw: bytes,
    mail_from: str = ALICE,
    rcpt: str = "support@example.test",
    source_ip: str = "127.0.0.2",
) -> None:
    """Deliver over SMTP from `source_ip`, then wait until the desk processed it."""
    smtp = desk.services.settings.smtp
    before = _processed(desk.services)
    with smtplib.SMTP(smtp.host, smtp.port, timeout=10, source_address=(source_ip, 0)) as client:
        client.sendmail(mail_from, [rcpt], raw)
    wait_for(lambda: _processed(desk.services) > before, 15, "the message processed")


def _processed(services: Services) -> int:
    with services.db.transaction() as session:
        rows = session.scalars(select(Inbound.state)).all()
        return sum(1 for state in rows if state != "pending")


def sent_to(services: Services, address: str) -> list[Outbox]:
    return [row for row in outbox_rows(services) if address in row.recipients]


def inbound_state(services: Services) -> list[tuple[str, str]]:
    with services.db.transaction() as session:
        return [(r.state, r.reason) for r in session.scalars(select(Inbound).order_by(Inbound.id))]


def alice_opens_a_ticket(desk: RunningDaemon) -> Outbox:
    """Alice writes (no DKIM); returns our acknowledgement once the relay took it."""
    send(desk, make_mail(message_id="<alice-1@customer.test>"))
    wait_for(lambda: [r.state for r in sent_to(desk.services, ALICE)] == ["sent"], 10, "ack")
    [ack] = sent_to(desk.services, ALICE)
    return ack


def resolve(services: Services, number: int) -> None:
    """An agent resolved ticket `number` (its customer may now confirm or dispute)."""
    with services.db.transaction() as session:
        found = session.get(Ticket, number)
        assert found is not None
        found.status = "resolved"


def last_inbound(services: Services, number: int) -> dict[str, Any]:
    return [m for m in ticket(services, number)["messages"] if m["direction"] == "in"][-1]


def forged_bounce(failed: str, message_id: str) -> bytes:
    """A multipart/report naming `failed`, quoting nothing maildesk sent."""
    return (
        "From: MAILER-DAEMON@mx.evil.test\r\n"
        "To: support@example.test\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        f"Message-ID: <{message_id}>\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n'
        "\r\n--b\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n"
        "--b\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.evil.test\r\n\r\n"
        f"Final-Recipient: rfc822; {failed}\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        "\r\n--b--\r\n"
    ).encode()


# -- 1. a forged bounce ------------------------------------------------------------


def test_a_forged_bounce_neither_marks_our_mail_nor_opens_the_ticket(
    desk: RunningDaemon,
) -> None:
    services = desk.services
    alice_opens_a_ticket(desk)

    send(desk, forged_bounce(ALICE, "trap@evil.test"), mail_from="<>")
    follow_up = make_mail(
        subject="Re: Undelivered Mail",
        sender=MALLORY,
        body="Please add me.",
        In_Reply_To="<trap@evil.test>",
        Cc="other@evil.test",
    )
    send(desk, follow_up, mail_from=MALLORY)

    assert sent_to(services, ALICE)[0].state == "sent"
    assert inbound_state(services)[1] == ("quarantined", "bounce for no message maildesk sent")
    assert participants(services, 1) == {ALICE}
    assert [m["from"] for m in ticket(services, 1)["messages"] if m["direction"] == "in"] == [ALICE]
    assert ticket(services, 2)["requester"] == MALLORY


def test_the_message_id_of_a_real_bounce_leads_nowhere(desk: RunningDaemon) -> None:
    """A bounce quoting our Message-ID is filed, but its own Message-ID is no key."""
    services = desk.services
    ack = alice_opens_a_ticket(desk)
    bounce = forged_bounce(ALICE, "bounce-1@mx.customer.test").replace(
        b"\r\n--b--",
        f"\r\n--b\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"Message-ID: <{ack.message_id}>\r\n\r\n--b--".encode(),
    )
    send(desk, bounce, mail_from="<>")
    assert sent_to(services, ALICE)[0].state == "bounced"

    send(
        desk,
        make_mail(sender=MALLORY, In_Reply_To="<bounce-1@mx.customer.test>"),
        mail_from=MALLORY,
    )

    assert participants(services, 1) == {ALICE}
    assert ticket(services, 2)["requester"] == MALLORY


# -- 2. a spoofed From with a subject tag -----------------------------------------


def test_a_spoofed_customer_can_neither_copy_people_in_nor_close_the_ticket(
    desk: RunningDaemon,
) -> None:
    services = desk.services
    alice_opens_a_ticket(desk)
    resolve(services, 1)

    spoof = make_mail(
        subject="Re: [#1] Printer broken",
        body="Thanks, confirmed, it works now.",
        Cc=f"Mallory <{MALLORY}>",
    )
    send(desk, spoof, mail_from=MALLORY)

    state = ticket(services, 1)
    assert state["status"] == "resolved"
    assert participants(services, 1) == {ALICE}
    last = last_inbound(services, 1)
    assert (last["from"], last["flag"], last["proof"]) == (ALICE, "unverified", "")
    # The agents hear of it, marked; Mallory hears nothing.
    [notice] = sent_to(services, AGENT)[-1:]
    assert b"Unverified mail in the ticket" in notice.raw
    assert sent_to(services, MALLORY) == []


def test_a_spoofed_customer_cannot_approve_paid_work(desk: RunningDaemon) -> None:
    services = desk.services
    alice_opens_a_ticket(desk)
    with services.db.transaction() as session:
        found = session.get(Ticket, 1)
        assert found is not None
        found.paid_state, found.paid_round = "pending", 1

    send(desk, make_mail(subject="Re: [#1] Printer broken", body="APPROVE"), mail_from=MALLORY)

    assert ticket(services, 1)["paid"] == "pending"


def test_a_dkim_proven_customer_copies_a_colleague_in(
    desk: RunningDaemon, keys: dict[str, DkimKey]
) -> None:
    services = desk.services
    signed = keys["customer.test"].sign(make_mail(cc="Bob <bob@customer.test>"))

    send(desk, signed)

    assert participants(services, 1) == {ALICE, "bob@customer.test"}
    assert ticket(services, 1)["messages"][0]["proof"] == "dkim"


ORIGINAL = "<printer-7@customer.test>"
BOB_ELSEWHERE = "bob@partner.test"


def her_original(keys: dict[str, DkimKey], signed: bool = True) -> bytes:
    """Alice writes to us and copies Bob, who works elsewhere."""
    mail = make_mail(message_id=ORIGINAL, cc=f"Bob <{BOB_ELSEWHERE}>")
    return keys["customer.test"].sign(mail) if signed else mail


def his_reply_all(keys: dict[str, DkimKey], to: str = ALICE, cc: str = "") -> bytes:
    """Bob answers everyone from his signed mailbox, before Alice's mail reaches us."""
    reply = make_mail(subject="Re: Printer broken", sender=f"Bob <{BOB_ELSEWHERE}>", to=to,
                      cc=cc or "support@example.test", body="Ours prints blank pages too.",
                      In_Reply_To=ORIGINAL, References=ORIGINAL)  # fmt: skip
    return keys["partner.test"].sign(reply)


def test_her_original_after_the_reply_all_of_someone_she_copied_makes_the_ticket_hers(
    desk: RunningDaemon, keys: dict[str, DkimKey]
) -> None:
    """Bob's reply opened ticket 1. Alice's own mail, which it answers, came later: she
    asked, so the ticket is hers. She gets the acknowledgement with the ticket's number,
    the agents' answers go to her, and Bob, whom she copied, stays in it. (It joined
    his ticket marked unverified; she heard nothing and the answers went to him.)"""
    services = desk.services
    send(desk, his_reply_all(keys), mail_from=BOB_ELSEWHERE)
    assert ticket(services, 1)["requester"] == BOB_ELSEWHERE

    send(desk, her_original(keys))

    opened = ticket(services, 1)
    assert len(desk_tickets(services)) == 1
    assert opened["requester"] == ALICE
    assert participants(services, 1) == {ALICE, BOB_ELSEWHERE}
    hers = last_inbound(services, 1)
    assert (hers["from"], hers["kind"], hers["proof"], hers["flag"]) == (
        ALICE, "customer", "dkim", "")  # fmt: skip
    [change] = [e for e in opened["events"] if e["field"] == "requester"]
    assert (change["old"], change["new"]) == (BOB_ELSEWHERE, ALICE)
    [ack] = [row for row in sent_to(services, ALICE) if row.kind == "acknowledgement"]
    assert "[#1]" in outbox_mail(ack)["Subject"]
    assert "/account/set-password" in outbox_text(ack)  # her first mail to us
    [notice] = sent_to(services, AGENT)[1:]
    assert "Requester changed" in outbox_mail(notice)["Subject"]


def test_an_unproven_original_leaves_the_ticket_with_whoever_opened_it(
    desk: RunningDaemon, keys: dict[str, DkimKey]
) -> None:
    """Anyone can write Alice's From on a mail with the id Bob answered: without proof
    it changes no one's ticket, and its text is marked for the agents."""
    services = desk.services
    send(desk, his_reply_all(keys), mail_from=BOB_ELSEWHERE)

    send(desk, her_original(keys, signed=False))

    assert ticket(services, 1)["requester"] == BOB_ELSEWHERE
    assert last_inbound(services, 1)["flag"] == "unverified"
    assert sent_to(services, ALICE) == []


def test_someone_the_reply_only_copied_cannot_claim_to_have_written_what_it_answered(
    desk: RunningDaemon, keys: dict[str, DkimKey]
) -> None:
    """Mallory, in the Cc of Bob's reply, signs a mail of her own under the id it
    answers (its author, to whom the reply was written, never wrote to us). She is
    not whom Bob answered: the ticket stays his."""
    services = desk.services
    send(desk, his_reply_all(keys, cc=f"support@example.test, {MALLORY}"),
         mail_from=BOB_ELSEWHERE)  # fmt: skip
    claim = make_mail(sender=MALLORY, message_id=ORIGINAL, cc=f"Bob <{BOB_ELSEWHERE}>")

    send(desk, keys["evil.test"].sign(claim), mail_from=MALLORY)

    assert ticket(services, 1)["requester"] == BOB_ELSEWHERE
    assert sent_to(services, MALLORY) == []


def test_an_altered_signed_mail_proves_nothing(
    desk: RunningDaemon, keys: dict[str, DkimKey]
) -> None:
    services = desk.services
    signed = keys["customer.test"].sign(make_mail(cc="Bob <bob@customer.test>"))

    send(desk, signed.replace(b"blank pages", b"black pages"))

    assert participants(services, 1) == {ALICE}
    assert ticket(services, 1)["messages"][0]["proof"] == ""
    # p=none: an unproven mail from customer.test is still answered.
    assert len(sent_to(services, ALICE)) == 1


def test_a_signed_mail_replayed_with_a_subject_and_cc_on_top_proves_nothing(
    desk: RunningDaemon, keys: dict[str, DkimKey]
) -> None:
    """Mallory has a signed mail Alice once sent him, and puts a Subject naming her
    ticket and a Cc of his own above her signed ones: the signature still verifies
    (DKIM covers the bottom-most instances), but we read the top ones."""
    services = desk.services
    alice_opens_a_ticket(desk)
    lunch = make_mail(subject="Lunch on Friday?", to=MALLORY, cc="Bob <bob@customer.test>")
    replayed = b"Subject: Re: [#1] Printer broken\r\nCc: Mallory <mallory@evil.test>\r\n" + keys[
        "customer.test"
    ].sign(lunch)

    send(desk, replayed, mail_from=MALLORY)

    assert (last_inbound(services, 1)["proof"], last_inbound(services, 1)["flag"]) == (
        "",
        "unverified",
    )
    assert participants(services, 1) == {ALICE}


def test_a_cc_her_signature_does_not_cover_copies_nobody_in(
    desk: RunningDaemon, keys: dict[str, DkimKey]
) -> None:
    """A signature that names no Cc (as Microsoft 365's) proves Alice's From, not
    whom her mail copies: a Cc added to it by whoever relays it joins nobody."""
    services = desk.services
    alice_opens_a_ticket(desk)
    reply = make_mail(subject="Re: [#1] Printer broken", body="It prints blank again.")
    signed = keys["customer.test"].sign(reply, headers=("from", "subject", "date", "message-id"))
    with_cc = signed.replace(b"\r\nSubject:", b"\r\nCc: Mallory <mallory@evil.test>\r\nSubject:")

    send(desk, with_cc, mail_from=MALLORY)

    assert last_inbound(services, 1)["proof"] == "dkim"  # her From is still proven
    assert participants(services, 1) == {ALICE}
    # Where her signature covers the Cc, the colleague she copies joins.
    covered = keys["customer.test"].sign(make_mail(subject="Re: [#1] Printer broken", cc=BOB))
    send(desk, covered)
    assert participants(services, 1) == {ALICE, "bob@customer.test"}


def test_a_thread_link_her_signature_does_not_cover_acts_on_no_ticket(
    desk: RunningDaemon, keys: dict[str, DkimKey]
) -> None:
    """Mallory has Alice's signed "Thanks, all solved!" (to him, signed as Microsoft 365
    signs: no In-Reply-To) and adds an In-Reply-To naming her first mail of ticket 1.
    The mail joins ticket 1, but as nobody's proven word: the ticket stays resolved."""
    services = desk.services
    alice_opens_a_ticket(desk)
    resolve(services, 1)
    thanks = make_mail(subject="Re: our lunch", to=MALLORY, body="Thanks, all solved!")
    signed = keys["customer.test"].sign(thanks, headers=("from", "subject", "date", "message-id"))
    linked = b"In-Reply-To: <alice-1@customer.test>\r\n" + signed

    send(desk, linked, mail_from=MALLORY)

    last = last_inbound(services, 1)
    assert (last["thread_rule"], last["proof"], last["flag"]) == ("references", "", "unverified")
    assert ticket(services, 1)["status"] == "resolved"
    # Signed with the link, the same words are hers, and confirm the resolution.
    covered = keys["customer.test"].sign(
        make_mail(
            subject="Re: our lunch",
            body="Thanks, all solved!",
            In_Reply_To="<alice-1@customer.test>",
        )
    )
    send(desk, covered)
    assert (last_inbound(services, 1)["proof"], ticket(services, 1)["status"]) == ("dkim", "closed")


def test_an_agents_signature_runs_no_command_on_a_ticket_an_unsigned_subject_names(
    desk: RunningDaemon, keys: dict[str, DkimKey]
) -> None:
    """The agent's signed mail proves the agent, but its signature names no Subject:
    Mallory writes one tagged with Alice's ticket, and its command must not run there."""
    services = desk.services
    alice_opens_a_ticket(desk)
    command = make_mail(sender=AGENT, subject="Lunch", to=MALLORY, body="#status closed\nDone.")
    signed = keys["example.test"].sign(command, headers=("from", "date", "message-id"))

    send(desk, signed.replace(b"Subject: Lunch", b"Subject: Re: [#1] Printer broken"))

    assert ticket(services, 1)["status"] == "new"
    # Unproven there, it is a stranger's mail (to no ticket it takes part in: a new one).
    assert ticket(services, 2)["messages"][0]["flag"] == "forged-agent"
    # Its signature covering the Subject, the agent's command is the agent's.
    covered = make_mail(sender=AGENT, subject="Re: [#1] Printer broken", body="#status closed")
    send(desk, keys["example.test"].sign(covered), mail_from=AGENT)
    assert ticket(services, 1)["status"] == "closed"


def test_our_mtas_verdict_on_a_signature_that_signs_part_of_the_body_proves_nothing(
    desk: RunningDaemon, keys: dict[str, DkimKey]
) -> None:
    services = desk.services
    alice_opens_a_ticket(desk)
    resolve(services, 1)
    signed = keys["customer.test"].sign(
        make_mail(subject="Re: [#1] Printer broken", body="Hello,"), length=True
    )

    send(desk, STAMPED + signed + b"\r\nThanks, all solved!\r\n", source_ip="127.0.0.1")

    assert last_inbound(services, 1)["proof"] == ""
    assert ticket(services, 1)["status"] == "resolved"


def test_a_header_block_dkimpy_cannot_read_leaves_our_mtas_verdict_unproven(
    desk: RunningDaemon, keys: dict[str, DkimKey]
) -> None:
    """`X-Junk : y` (obsolete syntax an MTA may accept) is a block dkimpy refuses: what
    the signature covers, we cannot tell, so the verdict proves nothing here."""
    services = desk.services
    alice_opens_a_ticket(desk)
    reply = make_mail(subject="Re: [#1] Printer broken", body="more")
    head, _, body = (
        keys["customer.test"].sign(reply, headers=("from", "subject")).partition(b"\r\n\r\n")
    )
    forged = b"Cc: Mallory <mallory@evil.test>\r\n" + head + b"\r\nX-Junk : y\r\n\r\n" + body

    send(desk, STAMPED + forged, mail_from=MALLORY, source_ip="127.0.0.1")

    assert last_inbound(services, 1)["proof"] == ""
    assert participants(services, 1) == {ALICE}


def test_an_agent_answering_their_reply_address_is_the_agent_without_dkim(
    desk: RunningDaemon,
) -> None:
    """The agent's domain publishes p=quarantine and signs nothing aligned (it passes
    DMARC by SPF, which our own check does not do): our check finds no aligned DKIM,
    but that disowns nothing. Only our MTA's dmarc=fail does."""
    services = desk.services
    alice_opens_a_ticket(desk)
    [notification] = [m for m in sent_to(services, AGENT)][:1]
    reply_to = email.message_from_bytes(notification.raw, policy=email.policy.default)["Reply-To"]
    token = reply_to.addresses[0].addr_spec
    reply = make_mail(sender=AGENT, to=token, subject="Re: [#1] Printer broken", body="On it.")

    send(desk, reply, mail_from=AGENT, rcpt=token)

    assert last_inbound(services, 1)["flag"] == ""
    assert [r.kind for r in sent_to(services, ALICE)][-1] == "agent_reply"


def test_her_signed_subject_tag_proves_a_reply_whose_thread_link_is_unsigned(
    desk: RunningDaemon, keys: dict[str, DkimKey]
) -> None:
    """Alice (Microsoft 365: no In-Reply-To signed) answers her own first mail, with
    the ticket's tag in her signed Subject: that names the ticket as well, and her
    "solved" is hers."""
    services = desk.services
    alice_opens_a_ticket(desk)
    resolve(services, 1)
    mail = make_mail(subject="Re: [#1] Printer broken", body="Thanks, all solved!",
                     In_Reply_To="<alice-1@customer.test>")  # fmt: skip

    send(desk, keys["customer.test"].sign(mail, headers=("from", "subject", "date")))

    last = last_inbound(services, 1)
    assert (last["thread_rule"], last["proof"]) == ("references", "dkim")
    assert ticket(services, 1)["status"] == "closed"


def test_text_appended_past_a_signatures_body_length_proves_nothing(
    desk: RunningDaemon, keys: dict[str, DkimKey]
) -> None:
    """l= signs the first bytes of a body only: a "Thanks, solved" appended to a
    replayed mail of Alice's would otherwise close her ticket as her own word."""
    services = desk.services
    alice_opens_a_ticket(desk)
    resolve(services, 1)
    signed = keys["customer.test"].sign(
        make_mail(subject="Re: [#1] Printer broken", body="Hello,"), length=True
    )

    send(desk, signed + b"\r\nThanks, all solved!\r\n", mail_from=MALLORY)

    assert last_inbound(services, 1)["proof"] == ""
    assert ticket(services, 1)["status"] == "resolved"


def test_our_mtas_verdict_vouches_only_for_what_the_signature_covers(
    desk: RunningDaemon, keys: dict[str, DkimKey]
) -> None:
    """Our MTA says `dkim=pass` for customer.test; the signature it checked names no
    Cc, so the Cc on the mail is nobody's word. Two Subjects: nothing is proven."""
    services = desk.services
    alice_opens_a_ticket(desk)
    reply = make_mail(subject="Re: [#1] Printer broken", cc="Mallory <mallory@evil.test>")
    signed = keys["customer.test"].sign(reply, headers=("from", "subject", "date"))

    send(desk, STAMPED + signed, source_ip="127.0.0.1")

    assert last_inbound(services, 1)["proof"] == "mta-dkim"
    assert participants(services, 1) == {ALICE}

    twice = b"Subject: Re: [#1] Printer broken\r\n" + keys["customer.test"].sign(
        make_mail(subject="Lunch?", cc=BOB)
    )
    send(desk, STAMPED + twice, source_ip="127.0.0.1")

    assert last_inbound(services, 1)["proof"] == ""
    assert participants(services, 1) == {ALICE}


def test_a_neighbours_signature_does_not_prove_a_customer(
    desk: RunningDaemon, keys: dict[str, DkimKey]
) -> None:
    """Mallory bought evil.uk.com, beside Bob's firm.uk.com (CentralNic sells names under
    uk.com), and signs as Bob with it: maildesk's own check proves evil.uk.com only."""
    services = desk.services
    bob, mallory = "bob@firm.uk.com", "mallory@evil.uk.com"
    send(desk, make_mail(sender=bob, message_id="<bob-1@firm.uk.com>"), mail_from=bob)

    forged = keys["evil.uk.com"].sign(
        make_mail(
            subject="Re: [#1] Printer broken",
            sender=bob,
            body="Please copy in my colleague.",
            Cc=f"Mallory <{mallory}>",
        )
    )
    send(desk, forged, mail_from=mallory)

    assert participants(services, 1) == {bob}
    last = last_inbound(services, 1)
    assert (last["from"], last["flag"], last["proof"]) == (bob, "unverified", "")
    assert sent_to(services, mallory) == []


@pytest.mark.parametrize("body_canonicalization", [b"simple", b"relaxed"])
def test_a_large_signed_mail_is_proven_and_a_changed_byte_of_its_attachment_is_not(
    desk: RunningDaemon, keys: dict[str, DkimKey], body_canonicalization: bytes
) -> None:
    """The body hash of a large mail is computed in slices (maildesk/dkimbody.py)."""
    services = desk.services
    key = keys["customer.test"]
    mail = email.message.EmailMessage()
    mail["From"] = ALICE
    mail["To"] = "support@example.test"
    mail["Subject"] = "Scans"
    mail["Message-ID"] = "<scans-1@customer.test>"
    # Trailing whitespace and blank lines at the end: what the two forms treat apart.
    mail.set_content("Here are the scans.  \n\t\n\n\n")
    scans = bytes(range(256)) * (3 * 4096)  # 3 MB
    mail.add_attachment(scans, "application", "pdf", filename="scans.pdf")
    raw = mail.as_bytes().replace(b"\n", b"\r\n")
    signature = dkim.sign(
        raw,
        key.selector.encode(),
        key.domain.encode(),
        key.private_pem,
        canonicalize=(b"relaxed", body_canonicalization),
    )
    signed = signature + raw
    middle = signed.index(b"AAECAwQF", len(signed) // 2)  # a base64 line of the scans
    altered = signed[:middle] + b"B" + signed[middle + 1 :]

    send(desk, signed)
    send(desk, altered.replace(b"<scans-1@", b"<scans-2@"))

    assert [t["messages"][0]["proof"] for t in (ticket(services, 1), ticket(services, 2))] == [
        "dkim",
        "",
    ]
    [attachment] = ticket(services, 1)["messages"][0]["attachments"]
    assert attachment["size"] == len(scans)


def test_mail_failing_dmarc_is_recorded_but_never_answered(desk: RunningDaemon) -> None:
    services = desk.services
    spoof = make_mail(sender="Bank <ceo@bank.test>", subject="Urgent invoice")

    send(desk, spoof, mail_from="ceo@bank.test")

    assert ticket(services, 1)["requester"] == "ceo@bank.test"
    assert sent_to(services, "ceo@bank.test") == []


def test_an_import_with_notify_still_never_answers_mail_failing_dmarc(
    desk: RunningDaemon,
) -> None:
    """Imports skip the DNS checks only where the operator's word is all that counts."""
    services = desk.services
    spoof = make_mail(sender="Bank <ceo@bank.test>", message_id="<spoof@bank.test>")
    honest = make_mail(message_id="<honest@customer.test>")

    for raw, sender in ((spoof, "ceo@bank.test"), (honest, ALICE)):
        services.store.put(raw, Envelope("import", sender, ("support@example.test",), True))
    wait_for(lambda: _processed(services) == 2, 15, "both imported messages processed")

    assert ticket(services, 1)["messages"][0]["proof"] == "import"
    assert sent_to(services, "ceo@bank.test") == []
    wait_for(lambda: len(sent_to(services, ALICE)) == 1, 10, "the honest mail's acknowledgement")


def test_a_customer_who_only_answers_our_mail_needs_no_setup(desk: RunningDaemon) -> None:
    """No DKIM, no account: replying to our acknowledgement proves enough to resolve."""
    services = desk.services
    ack = alice_opens_a_ticket(desk)
    resolve(services, 1)
    send(
        desk,
        make_mail(
            subject="Re: [#1] Printer broken",
            body="Thanks, it works.",
            In_Reply_To=f"<{ack.message_id}>",
            Cc="Bob <bob@customer.test>",
        ),
    )

    state = ticket(services, 1)
    assert state["status"] == "closed"
    assert participants(services, 1) == {ALICE, "bob@customer.test"}
    assert last_inbound(services, 1)["proof"] == "message_id"


# -- 3. a forged Authentication-Results --------------------------------------------


def agent_command(auth_results: str) -> bytes:
    return make_mail(
        subject="Re: [#1] Printer broken",
        sender=f"Agnes <{AGENT}>",
        body="#status resolved\nPlease log in at https://evil.test/reset to fix it.",
        In_Reply_To="<alice-1@customer.test>",
        Authentication_Results=auth_results,
    )


def test_forged_authentication_results_sent_straight_to_the_listener_prove_nothing(
    desk: RunningDaemon,
) -> None:
    services = desk.services
    alice_opens_a_ticket(desk)

    forged = agent_command("mx.example.test; dkim=pass header.d=example.test")
    send(desk, forged, mail_from=AGENT, source_ip="127.0.0.2")

    state = ticket(services, 1)
    assert state["status"] == "new"
    assert last_inbound(services, 1)["flag"] == "forged-agent"
    assert [b"evil.test/reset" in row.raw for row in sent_to(services, ALICE)] == [False]


def test_the_same_results_relayed_by_our_mta_prove_the_agent(desk: RunningDaemon) -> None:
    services = desk.services
    alice_opens_a_ticket(desk)

    stamped = agent_command("mx.example.test; dkim=pass header.d=example.test")
    send(desk, stamped, mail_from=AGENT, source_ip="127.0.0.1")

    assert ticket(services, 1)["status"] == "resolved"


# -- 7. an agent's reply token on another ticket ----------------------------------


def test_an_agent_reply_token_acts_only_on_its_own_ticket(desk: RunningDaemon) -> None:
    services = desk.services
    send(desk, make_mail(message_id="<t1@customer.test>", subject="First"))
    send(desk, make_mail(message_id="<t2@customer.test>", subject="Second"))
    notice = next(row for row in sent_to(services, AGENT) if b"Second" in row.raw)
    token_of_2 = next(r for r in _reply_to(notice.raw) if "+t2a" in r)

    attack = make_mail(
        subject="Re: First",
        sender=AGENT,
        to=token_of_2,
        body="#priority low\n#status closed",
        In_Reply_To="<t1@customer.test>",
    )
    send(desk, attack, mail_from=AGENT, rcpt=token_of_2)

    # Commands only, unproven for ticket 1: a console request (pipeline/console.py). It
    # changes nothing; the agent's own mailbox is asked to confirm it.
    confirm = wait_for(
        lambda: [r for r in sent_to(services, AGENT) if r.kind == "agent_confirm"],
        what="the confirmation mail",
    )
    assert b"#priority low" in confirm[0].raw
    first = ticket(services, 1)
    assert (first["status"], first["priority"]) == ("new", "normal")
    assert first["events"] == []


def _reply_to(raw: bytes) -> list[str]:
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    return [a.addr_spec for a in parsed["Reply-To"].addresses]  # type: ignore[attr-defined]


# -- a sender's slow DNS -----------------------------------------------------------


def test_a_silent_dns_server_costs_one_timeout_per_message_not_one_per_lookup(
    keys: dict[str, DkimKey],
) -> None:
    """Five signatures whose keys sit behind a DNS that never answers: one deadline for all."""
    import socket
    import threading

    import dns.message

    from maildesk.config import TrustSettings
    from maildesk.mailauth import MailAuth

    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    asked: list[str] = []

    def swallow() -> None:  # reads every query and answers none
        while True:
            try:
                wire, _ = silent.recvfrom(4096)
            except OSError:
                return
            asked.append(str(dns.message.from_wire(wire).question[0].name))

    threading.Thread(target=swallow, daemon=True).start()
    raw = make_mail()
    for selector in ("s0", "s1", "s2", "s3", "s4"):  # five real signatures, five key names
        raw = dataclasses.replace(keys["customer.test"], selector=selector).sign(raw)
    port = silent.getsockname()[1]
    auth = MailAuth(TrustSettings(dns_servers=(f"127.0.0.1:{port}",), dns_timeout=0.5))
    try:
        result = auth.check(raw, ALICE, (), via_our_mta=False)
    finally:
        silent.close()

    assert not result.proven and not result.dmarc_failed
    # One name was asked (perhaps more than once); the other lookups had no time left.
    assert len(set(asked)) == 1, asked
    assert asked[0].endswith("._domainkey.customer.test.")


def test_a_forged_flood_in_a_customers_name_does_not_quiet_her_signed_mail(
    desk: RunningDaemon, keys: dict[str, DkimKey]
) -> None:
    """Past 10 new tickets in an hour a sender's are filed quietly (pipeline/quiet.py).
    Mallory sends 11 unsigned mails From Alice: the agents are told once. Alice's own
    mail, signed by customer.test, is counted apart and still reaches the agents."""
    services = desk.services
    for n in range(1, 12):
        send(desk, make_mail(subject=f"Urgent {n}"), mail_from=MALLORY)
    to_agent = [(row.kind, row.ticket_id) for row in sent_to(services, AGENT)]
    assert to_agent == [("agent_notification", n) for n in range(1, 11)] + [("agent_quiet", 11)]

    send(desk, keys["customer.test"].sign(make_mail(subject="Printer broken")))
    send(desk, make_mail(subject="Urgent 12"), mail_from=MALLORY)

    to_agent = [(row.kind, row.ticket_id) for row in sent_to(services, AGENT)]
    assert to_agent[11:] == [("agent_notification", 12)]  # Alice's; not Mallory's 13th
    assert ticket(services, 12)["messages"][0]["proof"] == "dkim"


def test_forged_mail_in_a_customers_name_does_not_use_up_her_acknowledgements(
    desk: RunningDaemon, keys: dict[str, DkimKey]
) -> None:
    """A mailbox gets at most 5 acknowledgements an hour (`[limits] auto_replies_per_hour`).
    Unproven mail and mail that proves its From are counted apart, as for the agents'
    notices: Mallory's 5 unsigned mails From Alice used up her hour, and her own signed
    request after them was opened without its acknowledgement (its number, its reply
    address). A 6th forged one still gets none."""
    services = desk.services
    for n in range(1, 6):
        send(desk, make_mail(subject=f"Urgent {n}"), mail_from=MALLORY)
    assert [row.ticket_id for row in acks_to(services, ALICE)] == [1, 2, 3, 4, 5]

    send(desk, keys["customer.test"].sign(make_mail(subject="Printer broken")))
    send(desk, make_mail(subject="Urgent 6"), mail_from=MALLORY)

    assert ticket(services, 6)["messages"][0]["proof"] == "dkim"
    assert [row.ticket_id for row in acks_to(services, ALICE)] == [1, 2, 3, 4, 5, 6]


def acks_to(services: Services, address: str) -> list[Outbox]:
    return [row for row in sent_to(services, address) if row.kind == "acknowledgement"]


def test_forged_senders_and_one_signing_domain_leave_the_others_their_acknowledgements(
    config_values: dict[str, Any], tmp_path: Path, clock: ManualClock, dns: str,
    keys: dict[str, DkimKey],
) -> None:  # fmt: skip
    """The desk sends at most `auto_replies_per_hour_total` automatic replies an hour
    (8 here). Mallory wrote 8 unsigned mails From 8 forged senders, which used it all
    up: Alice's signed request, and every other customer's, was opened without its
    acknowledgement for the rest of the hour. Now unproven mail may use half of the
    total (`auto_replies_unproven_percent`), and mail proven for one domain a quarter
    (`auto_replies_domain_percent`): Mallory signing with his own evil.test, from
    mailboxes and subdomains of it, gets 2, and Bob at partner.test is still answered.
    Every mail is still its ticket, and an hour later unproven mail is answered again."""
    config_values["limits"]["auto_replies_per_hour_total"] = 8
    with running_desk(config_values, tmp_path, clock, dns) as desk:
        services = desk.services
        forged = [f"victim{n}@forged{n}.test" for n in range(8)]
        for sender in forged:
            send(desk, make_mail(sender=sender), mail_from=sender)
        send(desk, keys["customer.test"].sign(make_mail(subject="Printer broken")))
        own = ["m1@evil.test", "m2@evil.test", "m3@x1.evil.test", "m4@x2.evil.test"]
        for sender in own:
            send(desk, keys["evil.test"].sign(make_mail(sender=sender)), mail_from=sender)
        bob = "bob@partner.test"
        send(desk, keys["partner.test"].sign(make_mail(sender=bob)), mail_from=bob)

        answered = [row.recipients[0] for row in outbox_rows(services)
                    if row.kind == "acknowledgement"]  # fmt: skip
        assert answered == [*forged[:4], ALICE, *own[:2], bob]
        assert len(desk_tickets(services)) == 8 + 1 + 4 + 1
        assert ticket(services, 9)["messages"][0]["proof"] == "dkim"

        clock.advance(timedelta(hours=1, minutes=1))
        send(desk, make_mail(sender="late@forged.test"), mail_from="late@forged.test")
        assert acks_to(services, "late@forged.test")


def test_her_own_signed_flood_after_a_forged_one_is_still_told_to_the_agents(
    desk: RunningDaemon, keys: dict[str, DkimKey]
) -> None:
    """The agents are told once an hour per sender *and proof*: after Mallory's unsigned
    flood From Alice was told (ticket 11), a loop of Alice's own signed mail gets its own
    "Filed quietly" notice, saying it proved its sender, and is not filed unsaid."""
    services = desk.services
    for n in range(1, 12):
        send(desk, make_mail(subject=f"Urgent {n}"), mail_from=MALLORY)
    for n in range(1, 12):
        send(desk, keys["customer.test"].sign(make_mail(subject=f"Out of office {n}")))

    quiet = [row for row in sent_to(services, AGENT) if row.kind == "agent_quiet"]
    assert [row.ticket_id for row in quiet] == [11, 22]
    texts = [outbox_text(row) for row in quiet]
    assert "Their mail did not prove its sender" in texts[0]
    assert "Their mail proved its sender (DKIM/DMARC passed)." in texts[1]
