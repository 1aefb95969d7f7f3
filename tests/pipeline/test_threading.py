"""Threading: which ticket a message joins, by which rule, and who may join."""

from __future__ import annotations

import email
import email.policy
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from maildesk.clock import ManualClock
from maildesk.config import from_mapping
from maildesk.message import parse
from maildesk.models import Participant, Person, Ticket
from maildesk.services import Services, build
from maildesk.tickets.agents import Agents
from tests.conftest import make_mail
from tests.helpers import (
    OUR_MTA,
    outbox_mail,
    outbox_rows,
    receive,
    ticket,
    tickets,
    verified_by_our_mta,
)


def ack_headers(services: Services, index: int = 0) -> email.message.EmailMessage:
    raw = outbox_rows(services)[index].raw
    return email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[return-value]


def test_new_mail_opens_a_ticket_and_queues_an_acknowledgement(services: Services) -> None:
    receive(services, make_mail(message_id="<first@customer.test>"))

    [only] = tickets(services)
    assert only["number"] == 1
    assert only["status"] == "new"
    assert only["requester"] == "alice@customer.test"
    assert only["message_count"] == 2  # the customer's mail and our acknowledgement
    ack = ack_headers(services)
    assert ack["To"].addresses[0].addr_spec == "alice@customer.test"
    assert ack["In-Reply-To"] == "<first@customer.test>"
    assert "[#1]" in ack["Subject"]
    assert ack["Auto-Submitted"] == "auto-replied"
    assert ack["X-Auto-Response-Suppress"] == "OOF, AutoReply"
    # For help desks that read X-Loop, not Auto-Submitted: automatic, and ours.
    assert ack.get_all("X-Loop") == ["support@example.test"]
    assert ticket(services, 1)["messages"][0]["thread_rule"] == "new"


def test_reply_to_the_acknowledgement_joins_the_ticket(services: Services) -> None:
    receive(services, make_mail(message_id="<first@customer.test>"))
    ack = ack_headers(services)

    receive(
        services,
        make_mail(
            subject="Re: " + ack["Subject"],
            body="It is a LaserJet 4.",
            In_Reply_To=ack["Message-ID"],
            References=f"<first@customer.test> {ack['Message-ID']}",
        ),
    )

    assert len(tickets(services)) == 1
    last = ticket(services, 1)["messages"][-1]
    assert last["body_text"].strip() == "It is a LaserJet 4."
    assert last["thread_rule"] == "references"


def test_reply_token_threads_when_the_client_drops_headers(services: Services) -> None:
    receive(services, make_mail())
    reply_to = ack_headers(services)["Reply-To"].addresses[0].addr_spec
    assert reply_to.startswith("support+t1.")

    receive(services, make_mail(subject="no tag here", to=reply_to), rcpt_to=(reply_to,))

    assert len(tickets(services)) == 1
    assert ticket(services, 1)["messages"][-1]["thread_rule"] == "reply_token"


def test_forged_reply_token_opens_a_new_ticket(services: Services) -> None:
    receive(services, make_mail())
    forged = "support+t1.aaaaaaaaaa@example.test"

    receive(services, make_mail(sender="mallory@evil.test", to=forged), rcpt_to=(forged,))

    assert len(tickets(services)) == 2


def test_subject_tag_only_from_participants(services: Services) -> None:
    receive(services, make_mail())
    ack = ack_headers(services)
    # Answering our mail proves Alice, so the colleague she copies becomes a participant.
    receive(
        services,
        make_mail(
            subject="Re: " + ack["Subject"],
            cc="Bob <bob@customer.test>",
            In_Reply_To=ack["Message-ID"],
        ),
    )

    receive(services, make_mail(subject="Re: [#1] more", sender="mallory@evil.test"))
    receive(services, make_mail(subject="Re: [#1] from bob", sender="bob@customer.test"))

    numbers = {t["number"]: t for t in tickets(services)}
    assert numbers[2]["requester"] == "mallory@evil.test"
    last = ticket(services, 1)["messages"][-1]
    assert (last["from"], last["thread_rule"]) == ("bob@customer.test", "subject_tag")
    # A participant's reply never makes them the requester.
    assert numbers[1]["requester"] == "alice@customer.test"


def test_proven_agent_may_use_the_subject_tag(
    config_values: dict[str, Any], tmp_path: Path, clock: ManualClock
) -> None:
    config_values["agents"] = {"addresses": ["agent@example.test"]}
    config_values["trust"]["authserv_ids"] = ["mx.example.test"]
    services = build(from_mapping(config_values, base_dir=tmp_path), clock)
    services.prepare()
    receive(services, make_mail())
    receive(
        services,
        make_mail(
            subject="[#1] note",
            sender="agent@example.test",
            Authentication_Results="mx.example.test; dkim=pass header.d=example.test",
        ),
        mail_from="agent@example.test",
        source="deliver",
    )
    assert len(tickets(services)) == 1
    [note] = [m for m in ticket(services, 1)["messages"] if m["from"] == "agent@example.test"]
    assert note["thread_rule"] == "subject_tag"


def test_unproven_agent_address_may_not_use_the_subject_tag(services: Services) -> None:
    with services.db.transaction() as session:
        Agents(session).add("agent@example.test", "Agnes", services.clock.now())
    receive(services, make_mail())
    receive(services, make_mail(subject="[#1] note", sender="agent@example.test"))
    assert len(tickets(services)) == 2


def test_imported_reply_that_comes_before_its_original_joins_the_same_ticket(
    services: Services,
) -> None:
    reply = make_mail(
        subject="Re: Printer broken",
        sender="bob@customer.test",
        message_id="<reply@customer.test>",
        In_Reply_To="<original@customer.test>",
        References="<original@customer.test>",
    )
    original = make_mail(message_id="<original@customer.test>")

    receive(services, reply, source="import", notify=False)
    receive(services, original, source="import", notify=False)

    assert len(tickets(services)) == 1
    messages = [m for m in ticket(services, 1)["messages"] if m["direction"] == "in"]
    assert [m["message_id"] for m in messages] == ["reply@customer.test", "original@customer.test"]
    assert messages[1]["thread_rule"] == "references"


def test_the_same_message_twice_is_stored_once(services: Services) -> None:
    raw = make_mail(message_id="<twice@customer.test>")
    receive(services, raw, source="imap")
    receive(services, b"Received: from relay\r\n" + raw, source="smtp")

    assert len(tickets(services)) == 1
    assert ticket(services, 1)["message_count"] == 2  # one inbound, one acknowledgement
    assert len(outbox_rows(services)) == 1


def test_a_message_id_sent_ahead_by_someone_else_does_not_drop_the_real_mail(
    services: Services,
) -> None:
    """Eve, Cc'd on Alice's mail, sends one of her own with its Message-ID before
    Alice's reaches us (a flood in Alice's name delays it). Taken for a duplicate,
    Alice's mail was dropped unseen: no ticket, no acknowledgement."""
    eve = make_mail(sender="Eve <eve@evil.test>", body="eve's text",
                    message_id="<alice-1@customer.test>")  # fmt: skip
    receive(services, eve, mail_from="eve@evil.test")
    alice = make_mail(body="The real problem.", message_id="<alice-1@customer.test>")
    receive(services, alice)
    receive(services, alice, source="imap")  # the same mail of Alice's by a second route

    mine = [t for t in tickets(services) if t["requester"] == "alice@customer.test"]
    assert len(mine) == 1
    [message] = ticket(services, mine[0]["number"])["messages"][:1]
    assert message["body_text"].startswith("The real problem.")
    assert any(row.recipients == ["alice@customer.test"] for row in outbox_rows(services))
    assert len(tickets(services)) == 2


def test_a_message_id_sent_ahead_in_the_senders_name_does_not_drop_the_real_mail(
    services: Services,
) -> None:
    """Eve, Cc'd on Alice's mail, sends one with its Message-ID and Alice's From before
    Alice's reaches us. Same id, same sender: Alice's real mail was dropped as a
    duplicate, and Eve's text stood in the ticket in her name."""
    eve = make_mail(body="Please send the refund to IBAN XX00 0000.",
                    message_id="<alice-2@customer.test>")  # fmt: skip
    receive(services, eve, mail_from="eve@evil.test")
    alice = make_mail(body="The real problem.", message_id="<alice-2@customer.test>")
    receive(services, alice)
    receive(services, alice, source="imap")  # the same mail of Alice's by a second route

    texts = [
        m["body_text"]
        for t in tickets(services)
        for m in ticket(services, t["number"])["messages"]
        if m["direction"] == "in"
    ]
    assert sum(text.startswith("The real problem.") for text in texts) == 1
    assert sum(text.startswith("Please send the refund") for text in texts) == 1
    assert len(texts) == 2


def test_a_message_id_sent_ahead_leads_no_later_mail_to_the_strangers_ticket(
    services: Services,
) -> None:
    """Her mail no longer dropped, the id Eve sent ahead still led to Eve's ticket:
    Alice's follow-up to her own mail, and her colleague's reply-all, went there, and
    the agents answering them wrote to Eve. An id two senders used leads each one's
    own mail only: Alice's follow-up joins her ticket, Bob's reply-all neither."""
    eve = make_mail(sender="Eve <eve@evil.test>", subject="Hello", body="eve's text",
                    message_id="<alice-3@customer.test>")  # fmt: skip
    receive(services, eve, mail_from="eve@evil.test")
    alice = make_mail(body="My invoice is wrong.", message_id="<alice-3@customer.test>")
    receive(services, alice)
    answering = {"In_Reply_To": "<alice-3@customer.test>", "References": "<alice-3@customer.test>"}
    receive(services, make_mail(subject="Re: Printer broken", body="Contract 4711.",
                                message_id="<alice-4@customer.test>", **answering))  # fmt: skip
    bob = make_mail(sender="Bob <bob@customer.test>", subject="Re: Printer broken",
                    body="Same on floor 3.", message_id="<bob-1@customer.test>",
                    **answering)  # fmt: skip
    receive(services, bob, mail_from="bob@customer.test")

    [eves] = [t for t in tickets(services) if t["requester"] == "eve@evil.test"]
    texts = [m["body_text"].strip() for m in ticket(services, eves["number"])["messages"]]
    assert "eve's text" in texts
    assert not any(t.startswith(("Contract", "Same on")) for t in texts)
    # Alice's follow-up joined her ticket; whose mail Bob answered, nothing tells.
    requesters = sorted(t["requester"] for t in tickets(services))
    assert requesters == ["alice@customer.test", "bob@customer.test", "eve@evil.test"]
    [alices] = [t for t in tickets(services) if t["requester"] == "alice@customer.test"]
    texts = [m["body_text"].strip() for m in ticket(services, alices["number"])["messages"]]
    assert "My invoice is wrong." in texts and "Contract 4711." in texts


def test_an_id_taken_after_hers_leaves_her_follow_ups_in_her_ticket(
    services: Services,
) -> None:
    """Anyone Alice copied knows her Message-ID and can send mail with it after hers:
    her follow-ups answering only her own mail then opened a ticket of their own each.
    Each sender's mail still follows the id to that sender's own message."""
    first = "<alice-6@customer.test>"
    receive(services, make_mail(body="My invoice is wrong.", message_id=first))
    eve = make_mail(sender="Eve <eve@evil.test>", subject="Hello", body="eve's text",
                    message_id=first)  # fmt: skip
    receive(services, eve, mail_from="eve@evil.test")
    answering = {"In_Reply_To": first, "References": first}
    receive(services, make_mail(subject="Re: Printer broken", body="Contract 4711.",
                                **answering))  # fmt: skip
    receive(services, make_mail(sender="Eve <eve@evil.test>", subject="Re: Hello",
                                body="eve again", **answering),
            mail_from="eve@evil.test")  # fmt: skip

    assert sorted(t["requester"] for t in tickets(services)) == [
        "alice@customer.test",
        "eve@evil.test",
    ]
    for requester, texts in (
        ("alice@customer.test", {"My invoice is wrong.", "Contract 4711."}),
        ("eve@evil.test", {"eve's text", "eve again"}),
    ):
        [number] = [t["number"] for t in tickets(services) if t["requester"] == requester]
        stored = ticket(services, number)["messages"]
        assert {m["body_text"].strip() for m in stored if m["direction"] == "in"} == texts


def test_a_lists_copy_of_her_mail_leaves_her_message_id_leading_to_her_ticket(
    services: Services,
) -> None:
    """The copy of Alice's mail through a list she copied (her From, her id, a footer
    added) is kept beside it, and is no contest: Bob's reply-all joins her ticket."""
    receive(services, make_mail(body="My invoice is wrong.", message_id="<alice-5@customer.test>"))
    copy = make_mail(body="My invoice is wrong.\n--\nteam mailing list",
                     message_id="<alice-5@customer.test>",
                     List_Id="<team.customer.test>")  # fmt: skip
    receive(services, copy)
    answering = {"In_Reply_To": "<alice-5@customer.test>", "References": "<alice-5@customer.test>"}
    bob = make_mail(sender="Bob <bob@customer.test>", subject="Re: Printer broken",
                    body="Same on floor 3.", message_id="<bob-2@customer.test>",
                    **answering)  # fmt: skip
    receive(services, bob, mail_from="bob@customer.test")

    assert {t["requester"] for t in tickets(services)} == {"alice@customer.test"}
    [bobs] = [m for m in ticket(services, 1)["messages"] if m["from"] == "bob@customer.test"]
    assert bobs["thread_rule"] == "references"


def test_mail_to_a_closed_ticket_reopens_it_within_reopen_days(
    services: Services, clock: ManualClock
) -> None:
    receive(services, make_mail())
    _close(services, 1)
    clock.advance(timedelta(days=13))

    reply_to = _reply_address(services)
    receive(services, make_mail(subject="Re: [#1] it broke again", to=reply_to))

    assert len(tickets(services)) == 1
    assert ticket(services, 1)["status"] == "accepted"


def test_mail_to_a_long_closed_ticket_opens_a_linked_new_one(
    services: Services, clock: ManualClock
) -> None:
    receive(services, make_mail())
    _close(services, 1)
    clock.advance(timedelta(days=15))

    reply_to = _reply_address(services)
    receive(services, make_mail(subject="Re: [#1] it broke again", to=reply_to))

    new = ticket(services, 2)
    assert new["previous"] == 1
    assert new["status"] == "new"
    assert ticket(services, 1)["status"] == "closed"
    # She is told the new ticket's number, as for any new ticket: she heard nothing.
    acks = [outbox_mail(r) for r in outbox_rows(services) if r.kind == "acknowledgement"]
    assert [str(m["Subject"]).split()[0] for m in acks] == ["[#1]", "[#2]"]


@pytest.mark.parametrize("days", [1, 30])
@pytest.mark.parametrize("answer", ["Thanks!", "Děkuji, funguje to.", "CONFIRM"])
def test_thanks_to_a_closed_ticket_is_filed_with_it_and_reopens_nothing(
    services: Services, clock: ManualClock, days: int, answer: str
) -> None:
    """Customers answer the "closed" notice with thanks: that is no new problem. It
    reopened the ticket (or, after reopen_days, opened a new one) for an agent to
    close again."""
    receive(services, make_mail())
    _close(services, 1)
    clock.advance(timedelta(days=days))

    reply_to = _reply_address(services)
    receive(services, make_mail(subject="Re: [#1] closed", to=reply_to, body=answer))

    assert len(tickets(services)) == 1
    closed = ticket(services, 1)
    assert closed["status"] == "closed"
    assert closed["messages"][-1]["body_text"].startswith(answer)


def test_thanks_with_a_new_problem_reopens_the_closed_ticket(
    services: Services, clock: ManualClock
) -> None:
    receive(services, make_mail())
    _close(services, 1)
    clock.advance(timedelta(days=2))

    reply_to = _reply_address(services)
    body = "Thanks, but it still prints blank pages."
    receive(services, make_mail(subject="Re: [#1] closed", to=reply_to, body=body))

    assert ticket(services, 1)["status"] == "accepted"


def _reply_address(services: Services) -> str:
    """The signed Reply-To of our acknowledgement: what a customer's client answers to."""
    return str(ack_headers(services)["Reply-To"].addresses[0].addr_spec)


def _close(services: Services, number: int) -> None:
    with services.db.transaction() as session:
        found = session.get(Ticket, number)
        assert found is not None
        found.status = "closed"
        found.closed_at = services.clock.now()


def test_a_customers_cc_makes_at_most_the_capped_number_of_participants(
    services: Services,
) -> None:
    """A proven customer who copies hundreds of addresses would make every one of them
    a recipient of every answer (and a person row each): the cap stops that."""
    receive(services, make_mail())
    ack = ack_headers(services)
    copied = [f"c{n}@customer.test" for n in range(30)]
    receive(
        services,
        make_mail(
            subject="Re: " + ack["Subject"],
            cc=", ".join(copied),
            In_Reply_To=ack["Message-ID"],
        ),
    )
    limit = services.settings.limits.participants_per_ticket
    with services.db.reading() as session:
        joined = set(
            session.scalars(
                select(Person.email)
                .join(Participant, Participant.person_id == Person.id)
                .where(Participant.ticket_id == 1)
            )
        )
    assert len(joined) == limit == 20
    assert joined == {"alice@customer.test", *copied[: limit - 1]}
    # One left out is a stranger to the ticket: the subject tag does not let them in.
    receive(services, make_mail(subject="Re: [#1] me too", sender=copied[-1]))
    assert ticket(services, 1)["messages"][-1]["from"] != copied[-1]


def test_a_reply_naming_thousands_of_parents_threads_by_its_first_few(
    services: Services,
) -> None:
    """A stranger fills eight In-Reply-To fields with 9,600 Message-IDs (the guard's
    caps allow about that many of these, three times as many shorter ones): each would
    be a bound parameter of the threading lookups, and each count a statement compiled
    and kept. Only the first ten are read; the parent
    named first still threads the reply."""
    receive(services, make_mail(message_id="<parent@customer.test>"))
    fields = b"".join(
        b"In-Reply-To: "
        + b"\r\n ".join(b"<s%d.%d@stranger.test>" % (field, n) for n in range(1200))
        + b"\r\n"
        for field in range(8)
    )
    raw = make_mail(subject="Re: Printer broken", message_id="<reply@customer.test>")
    raw = raw.replace(
        b"Subject:", b"In-Reply-To: <parent@customer.test>\r\n" + fields + b"Subject:", 1
    )
    parsed = parse(raw)
    assert len(parsed.thread_ids) == 10
    assert parsed.thread_ids[0] == "parent@customer.test"

    receive(services, raw)

    [only] = tickets(services)
    assert only["message_count"] == 3  # the mail, our acknowledgement, the reply


def test_a_stranger_cannot_lay_a_trap_for_a_message_id_he_expects(services: Services) -> None:
    """A reply stored before its original leads the original, when it comes, into the
    reply's ticket. Mallory wrote to his own ticket's reply address (his proof, for
    his ticket) with `In-Reply-To:` the id he expected the CEO's next mail to carry:
    her mail joined his ticket, she got no acknowledgement, and the agents' answers
    to her went to him. Only her own ticket, or the reply of someone she wrote to,
    takes her mail now."""
    receive(services, make_mail(subject="Hello", sender="mallory@evil.test"),
            mail_from="mallory@evil.test")  # fmt: skip
    secret = _reply_address(services)
    trap = make_mail(subject="Re: Hello", sender="mallory@evil.test", to=secret,
                     In_Reply_To="<payroll-2026-05@victim.test>")  # fmt: skip
    receive(services, trap, mail_from="mallory@evil.test", rcpt_to=(secret,))
    assert len(ticket(services, 1)["messages"]) == 3  # his, our acknowledgement, the trap

    receive(services, make_mail(subject="Payroll export fails", sender="ceo@victim.test",
                                message_id="<payroll-2026-05@victim.test>"),
            mail_from="ceo@victim.test")  # fmt: skip

    assert [t["requester"] for t in tickets(services)] == ["mallory@evil.test", "ceo@victim.test"]
    assert "ceo@victim.test" in [row.recipients[0] for row in outbox_rows(services)]


def test_a_colleagues_reply_all_that_comes_first_still_leads_the_original(
    config_values: dict[str, Any], tmp_path: Path, clock: ManualClock
) -> None:
    """Bob, copied on Alice's mail, answers everyone from his signed mailbox; his reply
    arrives first. Alice wrote to him: her mail joins the ticket his reply opened."""
    config_values["trust"]["authserv_ids"] = [OUR_MTA]
    services = build(from_mapping(config_values, base_dir=tmp_path), clock)
    services.prepare()
    reply = make_mail(subject="Re: Printer broken", sender="bob@customer.test",
                      body="Same on floor 3.", In_Reply_To="<alice-7@customer.test>",
                      References="<alice-7@customer.test>",
                      Authentication_Results=verified_by_our_mta("customer.test"))  # fmt: skip
    receive(services, reply, mail_from="bob@customer.test", source="deliver")
    receive(services, make_mail(message_id="<alice-7@customer.test>", Cc="bob@customer.test"))

    assert len(tickets(services)) == 1
    [alices] = [m for m in ticket(services, 1)["messages"] if m["from"] == "alice@customer.test"]
    assert alices["thread_rule"] == "references"


ORIGINAL_9 = "<alice-orig-9@customer.test>"


@pytest.mark.parametrize("traps", [0, 20])
def test_her_own_early_follow_up_leads_her_original_whatever_strangers_wrote(
    services: Services, traps: int
) -> None:
    """Mallory writes `In-Reply-To: <the id he expects>` to his own ticket's reply address
    (proof: reply_token), twenty times. Alice's follow-up then arrives before her
    original (a slow relay), opening her ticket. Her original joins her ticket, as it
    does without Mallory's mail: his traps were filtered out after a LIMIT of 20 rows
    had cut hers off."""
    receive(services, make_mail(subject="Hello", sender="mallory@evil.test"),
            mail_from="mallory@evil.test")  # fmt: skip
    secret = _reply_address(services)
    for n in range(traps):
        trap = make_mail(subject="Re: Hello", sender="mallory@evil.test", to=secret,
                         body=f"trap {n}", message_id=f"<trap-{n}@evil.test>",
                         In_Reply_To=ORIGINAL_9)  # fmt: skip
        receive(services, trap, mail_from="mallory@evil.test", rcpt_to=(secret,))
    assert len(ticket(services, 1)["messages"]) == 2 + traps

    follow_up = make_mail(subject="Re: Printer broken", body="Contract 4711.",
                          message_id="<alice-follow-9@customer.test>",
                          In_Reply_To=ORIGINAL_9, References=ORIGINAL_9)  # fmt: skip
    receive(services, follow_up)
    receive(services, make_mail(subject="Printer broken", body="It jams.",
                                message_id=ORIGINAL_9))  # fmt: skip

    alices = [t for t in tickets(services) if t["requester"] == "alice@customer.test"]
    assert len(alices) == 1, alices  # her original joined the ticket her follow-up opened
