"""Agents by mail: recognizing them safely, relaying replies, commands, the lifecycle."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage
from typing import Any

import pytest

from maildesk.models import Outbox
from maildesk.services import Services
from maildesk.tickets.agents import Agents
from maildesk.tickets.service import Tickets
from tests.conftest import make_mail
from tests.helpers import inbound_row, outbox_rows, participants, receive, ticket

AGENT = "agent@example.test"


def parsed(row: Outbox) -> EmailMessage:
    return email.message_from_bytes(row.raw, policy=email.policy.default)  # type: ignore[return-value]


def to_agent(services: Services) -> list[EmailMessage]:
    return [parsed(r) for r in outbox_rows(services) if r.recipients == [AGENT]]


def to_customer(services: Services, address: str = "alice@customer.test") -> list[EmailMessage]:
    return [parsed(r) for r in outbox_rows(services) if address in r.recipients]


def body(msg: EmailMessage) -> str:
    part = msg.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


def agent_reply(services: Services, notification: EmailMessage, text: str, **headers: str) -> int:
    """The agent answers a notification from their mail client (Reply-To and In-Reply-To kept)."""
    reply_to = notification["Reply-To"].addresses[0].addr_spec
    raw = make_mail(
        subject=f"Re: {notification['Subject']}",
        sender="Agnes Agent <agent@example.test>",
        to=reply_to,
        body=text,
        In_Reply_To=notification["Message-ID"],
        References=notification["Message-ID"],
        **headers,
    )
    return receive(services, raw, mail_from=AGENT, rcpt_to=(reply_to,))


@pytest.fixture
def config_values(config_values: dict[str, Any]) -> dict[str, Any]:
    config_values["agents"]["addresses"] = [AGENT]
    return config_values


@pytest.fixture
def opened(services: Services) -> EmailMessage:
    """Alice opened ticket 1; returns the agent's notification of it."""
    receive(services, make_mail(message_id="<alice1@customer.test>"))
    [notification] = to_agent(services)
    return notification


def test_new_ticket_notifies_the_agent_with_the_customers_text(
    services: Services, opened: EmailMessage
) -> None:
    assert "[#1]" in opened["Subject"]
    assert "prints only blank pages" in body(opened)
    assert "Status: New | Type: - | Priority: normal" in body(opened)
    reply_to = opened["Reply-To"].addresses[0].addr_spec
    assert reply_to.startswith("support+t1a")
    # An agent's out-of-office must not answer it (Exchange ignores Auto-Submitted).
    assert opened["X-Auto-Response-Suppress"] == "OOF, AutoReply"
    assert opened["X-Loop"] == "support@example.test"


def test_agent_reply_is_relayed_from_the_support_address(
    services: Services, opened: EmailMessage
) -> None:
    agent_reply(services, opened, "Please restart the printer.\n\n> quoted notification text\n")

    [ack, relay] = to_customer(services)
    assert relay["From"].addresses[0].addr_spec == "support@example.test"
    assert relay["From"].addresses[0].display_name == "Agnes Agent (Example Support)"
    assert AGENT not in relay.as_string()
    assert "Please restart the printer." in body(relay)
    assert "quoted notification text" not in body(relay)
    assert relay["In-Reply-To"] == ack["Message-ID"]
    state = ticket(services, 1)
    assert state["status"] == "waiting_customer"  # a reply without #status
    assert state["owner"] == AGENT  # the first agent to act owns it


def test_forged_agent_sender_is_a_customer_message(
    services: Services, opened: EmailMessage
) -> None:
    forged = make_mail(
        subject="Re: [#1] Printer broken",
        sender="agent@example.test",
        body="#status closed\nDone, bye.",
        In_Reply_To="<alice1@customer.test>",
    )
    receive(services, forged, mail_from=AGENT)

    state = ticket(services, 1)
    assert state["status"] == "new"  # no command ran
    last = state["messages"][-1]
    assert (last["kind"], last["flag"]) == ("participant", "forged-agent")
    assert len(to_customer(services)) == 1  # only the acknowledgement: nothing relayed
    warning = to_agent(services)[-1]
    assert "Unverified mail from an agent address" in warning["Subject"]


def test_agent_with_dkim_pass_from_trusted_host_is_recognized(
    config_values: dict[str, Any], tmp_path: Any, clock: Any
) -> None:
    from maildesk.config import from_mapping
    from maildesk.services import build

    config_values["trust"]["authserv_ids"] = ["mx.example.test"]
    services = build(from_mapping(config_values, base_dir=tmp_path), clock)
    services.prepare()
    receive(services, make_mail(message_id="<alice1@customer.test>"))
    mail = make_mail(
        subject="Re: [#1] Printer broken",
        sender="agent@example.test",
        body="#status resolved\nFixed the driver.",
        In_Reply_To="<alice1@customer.test>",
        Authentication_Results="mx.example.test; dkim=pass header.d=example.test",
    )
    # Piped in by the MTA (`maildesk deliver`): its header is the MTA's own.
    receive(services, mail, mail_from=AGENT, source="deliver")
    assert ticket(services, 1)["status"] == "resolved"


def test_authentication_results_from_an_untrusted_host_prove_nothing(
    services: Services, opened: EmailMessage
) -> None:
    mail = make_mail(
        subject="Re: [#1] Printer broken",
        sender="agent@example.test",
        body="#status resolved\nFixed.",
        In_Reply_To="<alice1@customer.test>",
        Authentication_Results="evil.test; dkim=pass header.d=example.test",
    )
    receive(services, mail, mail_from=AGENT)
    assert ticket(services, 1)["status"] == "new"


def behind_our_mta(
    config_values: dict[str, Any], tmp_path: Any, clock: Any, agent: str = AGENT
) -> Services:
    """A desk that believes the Authentication-Results of mx.example.test, with ticket 1."""
    from maildesk.config import from_mapping
    from maildesk.services import build

    config_values["agents"]["addresses"] = [agent]
    config_values["trust"]["authserv_ids"] = ["mx.example.test"]
    services = build(from_mapping(config_values, base_dir=tmp_path), clock)
    services.prepare()
    receive(services, make_mail(message_id="<alice1@customer.test>"))
    return services


FAILED_DMARC = "mx.example.test; dkim=none; dmarc=fail (p=reject) header.from=example.test"


def test_a_forwarded_reply_address_does_not_make_a_disowned_from_the_agent(
    config_values: dict[str, Any], tmp_path: Any, clock: Any
) -> None:
    """Mallory got the agent's notification forwarded (its Reply-To with it) and writes
    From the agent to that address; our MTA says example.test disowns the From. The
    address is a bearer secret, but a From its own domain disowns is not the agent."""
    services = behind_our_mta(config_values, tmp_path, clock)
    [notification] = to_agent(services)
    token = notification["Reply-To"].addresses[0].addr_spec
    forged = make_mail(
        subject="Re: [#1] Printer broken",
        sender=AGENT,
        to=token,
        body="#cc mallory@evil.test\nPlease send the invoice to my colleague.",
        Authentication_Results=FAILED_DMARC,
    )
    receive(services, forged, mail_from="mallory@evil.test", rcpt_to=(token,), source="deliver")

    state = ticket(services, 1)
    assert state["messages"][-1]["flag"] == "forged-agent"
    assert participants(services, 1) == {"alice@customer.test"}
    assert len(to_customer(services)) == 1  # the acknowledgement: nothing was relayed


def test_a_disowned_from_confirms_no_console_request(
    config_values: dict[str, Any], tmp_path: Any, clock: Any
) -> None:
    """A forged `#cc` waits for the agent's mailbox to confirm; Mallory, given that
    confirmation (forwarded: "did you send this?"), answers Yes From the agent."""
    services = behind_our_mta(config_values, tmp_path, clock)
    request = make_mail(subject="[#1] Printer broken", sender=AGENT, body="#cc mallory@evil.test",
                        Authentication_Results=FAILED_DMARC)  # fmt: skip
    receive(services, request, mail_from="mallory@evil.test", source="deliver")
    confirmation = to_agent(services)[-1]
    address = confirmation["Reply-To"].addresses[0].addr_spec
    yes = make_mail(subject=f"Re: {confirmation['Subject']}", sender=AGENT, to=address,
                    body="Yes", Authentication_Results=FAILED_DMARC)  # fmt: skip
    receive(services, yes, mail_from="mallory@evil.test", rcpt_to=(address,), source="deliver")

    assert participants(services, 1) == {"alice@customer.test"}


def test_a_quiet_import_files_an_agents_reply_and_runs_nothing_in_it(
    services: Services, opened: EmailMessage
) -> None:
    """`maildesk import` without --notify sends no mail: an archived agent reply, with its
    signed reply address, is the ticket's history, not an order to relay and resolve."""
    token = opened["Reply-To"].addresses[0].addr_spec
    archived = make_mail(
        subject=f"Re: {opened['Subject']}",
        sender=f"Agnes Agent <{AGENT}>",
        to=token,
        body="#status resolved\nHello Alice, this is done.",
    )
    before = len(outbox_rows(services))
    receive(services, archived, mail_from=AGENT, rcpt_to=(token,), source="import", notify=False)

    assert outbox_rows(services)[before:] == []
    state = ticket(services, 1)
    assert state["status"] == "new"
    last = state["messages"][-1]
    assert (last["from"], last["kind"], last["body_text"]) == (
        AGENT,
        "agent",
        "Hello Alice, this is done.",
    )
    # An archived console request is answered by no one (unproven here: no token, no
    # DKIM, so it is filed as any mail from an agent's address without proof is).
    listing = make_mail(subject="#list", sender=AGENT, body="#list")
    receive(services, listing, mail_from=AGENT, source="import", notify=False)
    assert outbox_rows(services)[before:] == []
    assert ticket(services, 2)["messages"][0]["flag"] == "forged-agent"


def test_a_neighbours_signature_stamped_by_our_mta_does_not_prove_an_agent(
    config_values: dict[str, Any], tmp_path: Any, clock: Any
) -> None:
    """Mallory owns evil.uk.com, beside the agent's firm.uk.com (CentralNic sells names
    under uk.com). Our MTA truthfully stamps her signature and the failed DMARC."""
    services = behind_our_mta(config_values, tmp_path, clock, agent="agnes@firm.uk.com")
    forged = make_mail(
        subject="Re: [#1] Printer broken",
        sender="agnes@firm.uk.com",
        body="#status closed\nDone.",
        In_Reply_To="<alice1@customer.test>",
        Authentication_Results=(
            "mx.example.test; dkim=pass header.d=evil.uk.com header.s=s1; "
            "dmarc=fail (p=reject dis=none) header.from=firm.uk.com"
        ),
    )
    receive(services, forged, mail_from="mallory@evil.uk.com", source="deliver")

    state = ticket(services, 1)
    assert state["status"] == "new"
    last = state["messages"][-1]
    assert (last["flag"], last["proof"]) == ("forged-agent", "")


def test_a_neighbours_signature_stamped_by_our_mta_does_not_prove_a_customer(
    config_values: dict[str, Any], tmp_path: Any, clock: Any
) -> None:
    """Bob's ticket; Mallory (evil.uk.com) writes as Bob and copies herself in."""
    services = behind_our_mta(config_values, tmp_path, clock)
    bob = "bob@firm.uk.com"
    receive(services, make_mail(sender=bob, subject="VPN down"), mail_from=bob)
    forged = make_mail(
        subject="Re: [#2] VPN down",
        sender=bob,
        Cc="mallory@evil.uk.com",
        body="Please also copy my colleague.",
        Authentication_Results="mx.example.test; dkim=pass header.d=evil.uk.com",
    )
    receive(services, forged, mail_from="mallory@evil.uk.com", source="deliver")

    last = ticket(services, 2)["messages"][-1]
    assert (last["from"], last["flag"], last["proof"]) == (bob, "unverified", "")
    with services.db.transaction() as session:
        assert not Tickets(session).is_participant(2, "mallory@evil.uk.com")
    assert [r for r in outbox_rows(services) if "mallory@evil.uk.com" in r.recipients] == []


@pytest.mark.parametrize(
    "results",
    [
        # rspamd-like: the SPF comment names the sender's quoted envelope address.
        'spf=pass (mx.example.test: domain of "dkim=pass header.d=example.test"@evil.test '
        "designates 192.0.2.1 as permitted sender) smtp.mailfrom=evil.test",
        # The same address as the property's value, with a ';' inside its quotes.
        'spf=pass smtp.mailfrom="x;dkim=pass header.d=example.test"@evil.test',
    ],
)
def test_a_pass_the_sender_wrote_into_our_mtas_header_does_not_prove_an_agent(
    config_values: dict[str, Any], tmp_path: Any, clock: Any, results: str
) -> None:
    """Our MTA copies the MAIL FROM a stranger chose into its header; it is no result."""
    services = behind_our_mta(config_values, tmp_path, clock)
    forged = make_mail(
        subject="Re: [#1] Printer broken",
        sender=AGENT,
        body="#status closed\nDone.",
        In_Reply_To="<alice1@customer.test>",
        Authentication_Results=f"mx.example.test; dkim=none; {results}",
    )
    receive(
        services, forged, mail_from='"dkim=pass header.d=example.test"@evil.test', source="deliver"
    )

    state = ticket(services, 1)
    assert state["status"] == "new"
    last = state["messages"][-1]
    assert (last["flag"], last["proof"]) == ("forged-agent", "")


@pytest.mark.parametrize(
    ("command", "field", "value"),
    [
        ("#status resolved", "status", "resolved"),
        ("#type bug", "type", "bug"),
        ("#priority low", "priority", "low"),
        ("#assign me", "owner", AGENT),
    ],
)
def test_each_command_changes_the_ticket_and_is_not_relayed(
    services: Services, opened: EmailMessage, command: str, field: str, value: str
) -> None:
    agent_reply(services, opened, f"{command}\nHello Alice, see you.")

    state = ticket(services, 1)
    assert state[field] == value
    relay = to_customer(services)[-1]
    assert "#" not in body(relay).split("Hello Alice")[0]
    assert command not in body(relay)
    events = [e for e in state["events"] if e["field"] == field]
    assert events[-1]["new"] == value
    assert events[-1]["actor"] == AGENT
    assert events[-1]["via"] == "command"


def test_unknown_command_gets_the_agent_an_error_and_the_customer_nothing(
    services: Services, opened: EmailMessage
) -> None:
    agent_reply(services, opened, "#stauts resolved\nAll fixed.")

    assert len(to_customer(services)) == 1  # the acknowledgement only
    error = to_agent(services)[-1]
    assert "Not sent" in error["Subject"]
    assert "#stauts resolved: unknown command" in body(error)
    assert ticket(services, 1)["status"] == "new"


@pytest.mark.parametrize("copied", ["bob@cust..test", "jörg@customer.test"])
def test_an_address_we_cannot_write_to_joins_no_ticket(
    services: Services, opened: EmailMessage, copied: str
) -> None:
    """Alice's verified reply Cc'd an address the inbound parser took and the outbound
    composer refuses: as a participant it failed every later answer of the ticket
    (the agent's reply quarantined after three tries, Alice never answered)."""
    ack = to_customer(services)[0]
    reply_to = ack["Reply-To"].addresses[0].addr_spec
    raw = (f"From: alice@customer.test\r\nTo: {reply_to}\r\nCc: {copied}\r\n"
           f"Subject: Re: {ack['Subject']}\r\nIn-Reply-To: {ack['Message-ID']}\r\n"
           "Message-ID: <cc@customer.test>\r\n\r\nMy colleague should know.\r\n")  # fmt: skip
    receive(services, raw.encode(), rcpt_to=(reply_to,))
    agent_reply(services, to_agent(services)[-1], "We are on it.")

    relayed = [r for r in outbox_rows(services) if r.kind == "agent_reply"]
    assert [r.recipients for r in relayed] == [["alice@customer.test"]]
    assert "We are on it." in body(parsed(relayed[0]))


def test_cc_of_an_address_we_cannot_write_to_is_an_error(
    services: Services, opened: EmailMessage
) -> None:
    agent_reply(services, opened, "#cc jörg@customer.test\nCopying Jörg in.")
    error = to_agent(services)[-1]
    assert "Not sent" in error["Subject"]
    assert "#cc jörg@customer.test" in body(error)
    assert len(to_customer(services)) == 1  # the acknowledgement only


def test_mail_from_an_address_we_cannot_write_to_is_quarantined_at_once(
    services: Services,
) -> None:
    raw = (
        "From: Jörg <jörg@customer.test>\r\nTo: support@example.test\r\n"
        "Subject: hi\r\n\r\nHello\r\n"
    ).encode()
    spool_id = receive(services, raw, mail_from="jörg@customer.test")
    row = inbound_row(services, spool_id)
    assert (row.state, row.attempts) == ("quarantined", 1)
    assert "no address maildesk can write to" in (row.reason or "")


def test_invalid_value_is_refused(services: Services, opened: EmailMessage) -> None:
    agent_reply(services, opened, "#priority urgent\nOn it.")
    assert "must be one of critical, normal, low" in body(to_agent(services)[-1])
    assert ticket(services, 1)["priority"] == "normal"


def test_note_stays_internal_even_when_quoted_later(
    services: Services, opened: EmailMessage
) -> None:
    agent_reply(services, opened, "#note\nCustomer owes us two invoices, be careful.")
    assert len(to_customer(services)) == 1
    # Later the agent answers and their client left the note in the text.
    agent_reply(services, opened, "We are on it.\nCustomer owes us two invoices, be careful.\n")
    relay = to_customer(services)[-1]
    assert "We are on it." in body(relay)
    assert "invoices" not in body(relay)


def test_customer_reply_to_waiting_moves_it_to_accepted(
    services: Services, opened: EmailMessage
) -> None:
    agent_reply(services, opened, "Which model is it?")
    relay = to_customer(services)[-1]
    receive(
        services,
        make_mail(
            subject=f"Re: {relay['Subject']}", body="A LaserJet 4.", In_Reply_To=relay["Message-ID"]
        ),
    )
    assert ticket(services, 1)["status"] == "accepted"
    assert "A LaserJet 4." in body(to_agent(services)[-1])  # the owner is told


@pytest.mark.parametrize(
    ("answer", "status"),
    [
        ("Thanks!", "closed"),
        ("Děkuji", "closed"),
        ("CONFIRM", "closed"),
        ("Thanks, but it still prints blank pages.", "accepted"),
    ],
)
def test_customer_answer_to_resolved(
    services: Services, opened: EmailMessage, answer: str, status: str
) -> None:
    agent_reply(services, opened, "#status resolved\nNew driver installed.")
    relay = to_customer(services)[-1]
    receive(
        services,
        make_mail(subject=f"Re: {relay['Subject']}", body=answer, In_Reply_To=relay["Message-ID"]),
    )
    assert ticket(services, 1)["status"] == status


def test_paid_modification_waits_for_the_customers_approval(
    services: Services, opened: EmailMessage
) -> None:
    agent_reply(services, opened, "#type modification\n#paid 4 hours, 6 000 CZK\nWe can do it.")

    notice = to_customer(services)[-1]
    text = body(notice)
    assert "6 000 CZK" in text and "APPROVE" in text and "/paid?token=" in text
    assert ticket(services, 1)["status"] == "waiting_customer"
    assert ticket(services, 1)["paid"] == "pending"

    receive(
        services,
        make_mail(
            subject=f"Re: {notice['Subject']}",
            body="APPROVE\nGo ahead.",
            In_Reply_To=notice["Message-ID"],
        ),
    )
    state = ticket(services, 1)
    assert (state["paid"], state["status"]) == ("approved", "accepted")
    assert "APPROVED the paid work" in to_agent(services)[-1]["Subject"]


def test_only_the_requester_approves_paid_work(services: Services, opened: EmailMessage) -> None:
    """Mallory, copied in by the agent, answers an earlier mail of the ticket with APPROVE:
    that approved 40,000 EUR she was never asked about (the notice went to Alice)."""
    agent_reply(services, opened, "#cc mallory@elsewhere.test\nI copied in our partner.")
    relayed = [m for m in to_customer(services, "mallory@elsewhere.test")][-1]
    agent_reply(services, to_agent(services)[0], "#type modification\n#paid 40,000 EUR")
    assert ticket(services, 1)["paid"] == "pending"

    approval = make_mail(subject=f"Re: {relayed['Subject']}", sender="mallory@elsewhere.test",
                         to=relayed["Reply-To"].addresses[0].addr_spec, body="APPROVE",
                         In_Reply_To=relayed["Message-ID"])  # fmt: skip
    receive(services, approval, mail_from="mallory@elsewhere.test")

    state = ticket(services, 1)
    assert (state["paid"], state["status"]) == ("pending", "waiting_customer")
    assert state["messages"][-1]["flag"] == ""  # her reply is in the ticket, verified
    assert "Customer replied" in to_agent(services)[-1]["Subject"]


def test_paid_on_a_bug_is_refused(services: Services, opened: EmailMessage) -> None:
    agent_reply(services, opened, "#type bug\n#paid 100 CZK")
    assert "only a modification can be paid" in body(to_agent(services)[-1])
    assert ticket(services, 1)["paid"] is None


def test_critical_priority_alerts_every_agent(
    config_values: dict[str, Any], tmp_path: Any, clock: Any
) -> None:
    from maildesk.config import from_mapping
    from maildesk.services import build

    config_values["agents"]["addresses"] = [AGENT, "second@example.test"]
    services = build(from_mapping(config_values, base_dir=tmp_path), clock)
    services.prepare()
    receive(services, make_mail())
    first = next(m for m in (parsed(r) for r in outbox_rows(services)) if m["To"] == AGENT)
    agent_reply(services, first, "#priority critical\nLooking at it right now.")

    alerts = [r for r in outbox_rows(services) if "CRITICAL" in parsed(r)["Subject"]]
    assert sorted(r.recipients[0] for r in alerts) == [AGENT, "second@example.test"]


def test_phone_intake_opens_a_ticket_for_the_customer(
    config_values: dict[str, Any], tmp_path: Any, clock: Any
) -> None:
    from maildesk.config import from_mapping
    from maildesk.services import build

    config_values["trust"]["authserv_ids"] = ["mx.example.test"]
    services = build(from_mapping(config_values, base_dir=tmp_path), clock)
    services.prepare()
    intake = make_mail(
        subject="Server down",
        sender="agent@example.test",
        body="#customer bob@customer.test\n#priority critical\nBob called: the server is down.",
        Authentication_Results="mx.example.test; dmarc=pass header.from=example.test",
    )
    receive(services, intake, mail_from=AGENT, source="deliver")

    state = ticket(services, 1)
    assert (state["requester"], state["priority"], state["status"]) == (
        "bob@customer.test",
        "critical",
        "accepted",
    )
    [ack] = to_customer(services, "bob@customer.test")
    assert "[#1] Server down" in ack["Subject"]


def test_an_unproven_phone_intake_opens_no_ticket_for_the_customer_and_warns(
    services: Services,
) -> None:
    """`#customer` from an agent's address that nothing proves (no DKIM, no MTA verdict)
    runs no command: the mail opens a ticket of that address, and the agents are
    warned that it came unproven, not told of an ordinary new ticket."""
    intake = make_mail(
        subject="Server down",
        sender="agent@example.test",
        body="#customer bob@customer.test\nBob called: the server is down.",
    )
    receive(services, intake, mail_from=AGENT)

    state = ticket(services, 1)
    assert (state["requester"], state["messages"][0]["flag"]) == (AGENT, "forged-agent")
    assert to_customer(services, "bob@customer.test") == []
    [warning] = to_agent(services)
    assert "Unverified mail from an agent address" in warning["Subject"]
    assert "no command in it was run" in body(warning)


def test_a_quoted_set_password_link_never_reaches_the_agents(
    services: Services, opened: EmailMessage
) -> None:
    [ack] = to_customer(services)
    link = next(line for line in body(ack).splitlines() if "set-password?token=" in line)
    receive(
        services,
        make_mail(
            subject=f"Re: {ack['Subject']}",
            body=f"One more thing. Is this link safe? {link}\n",
            In_Reply_To=ack["Message-ID"],
        ),
    )
    notification = to_agent(services)[-1]
    assert "One more thing." in body(notification)
    assert link.split("token=")[1] not in body(notification)


@pytest.mark.parametrize(
    ("command", "template"),
    [
        ("#status waiting_customer", "waiting_customer"),
        ("#status resolved", "resolved"),
        ("#status closed", "closed"),
        ("#status new", "status_changed"),
    ],
)
def test_a_status_command_alone_tells_the_customer(
    services: Services, opened: EmailMessage, command: str, template: str
) -> None:
    agent_reply(services, opened, command)
    kinds = [r.kind for r in outbox_rows(services) if r.recipients == ["alice@customer.test"]]
    assert kinds == ["acknowledgement", template]


def former_agent_reply(services: Services, notification: EmailMessage, **headers: str) -> None:
    """Someone who holds an agent's notification, but is no agent now, answers it."""
    reply_to = notification["Reply-To"].addresses[0].addr_spec
    raw = make_mail(subject=f"Re: {notification['Subject']}", sender="Agnes <agent@example.test>",
                    to=reply_to, body="Please also send the answers to my friend.",
                    In_Reply_To=notification["Message-ID"], **headers)  # fmt: skip
    receive(services, raw, mail_from=AGENT, rcpt_to=(reply_to,))


@pytest.mark.parametrize("kept", ["reply_token", "message_id"])
def test_an_agents_notification_proves_nothing_once_its_agent_is_gone(
    services: Services, opened: EmailMessage, kept: str
) -> None:
    """A removed agent (or a friend an agent forwarded a notification to) still holds
    its signed Reply-To and Message-ID. Both were taken for a customer's secret: the
    mail counted as verified and its Cc became a participant, who got every answer."""
    with services.db.transaction() as session:
        assert Agents(session).remove(AGENT)
    if kept == "message_id":  # the client kept only the threading headers
        del opened["Reply-To"]
        opened["Reply-To"] = "support@example.test"

    former_agent_reply(services, opened, Cc="friend@evil.test")

    found = ticket(services, 1)
    assert found["messages"][-1]["flag"] == "unverified"
    with services.db.transaction() as session:
        Agents(session).add("bob@example.test", "Bob", services.clock.now())
    receive(services, make_mail(subject="Re: Printer broken", body="Any news?",
                                In_Reply_To="<alice1@customer.test>"))  # fmt: skip
    told = [parsed(r) for r in outbox_rows(services) if r.recipients == ["bob@example.test"]]
    reply_to = told[-1]["Reply-To"].addresses[0].addr_spec
    answer = make_mail(subject=f"Re: {told[-1]['Subject']}", sender="bob@example.test",
                       to=reply_to, body="A new driver is on its way.",
                       In_Reply_To=told[-1]["Message-ID"])  # fmt: skip
    receive(services, answer, mail_from="bob@example.test", rcpt_to=(reply_to,))

    relayed = outbox_rows(services)[-1]
    assert "A new driver" in body(parsed(relayed))
    assert relayed.recipients == ["alice@customer.test"]


def test_a_long_mail_is_quoted_to_agents_by_its_head(services: Services) -> None:
    """A customer's (or a stranger's) 2 MB text went whole into the notification of
    each agent, and again into the alert each agent gets when the ticket turns
    critical: their mail clients got megabytes for one mail, per agent. Each quotes
    its first 20,000 characters and says how many it leaves out. A text past a million
    characters is kept whole as a file (`message.txt`), which the notification carries
    as it carries the mail's files, and the alert does not."""
    text = "".join(f"line {n:06d} of the log\n" for n in range(100_000)) + "THE END\n"
    receive(services, make_mail(body=text))
    [notification] = to_agent(services)
    agent_reply(services, notification, "#priority critical\nLooking at it.")
    [alert] = [m for m in to_agent(services) if "CRITICAL" in m["Subject"]]

    stored = len(ticket(services, 1)["messages"][0]["body_text"])
    assert stored == 1_000_000
    for mail in (notification, alert):
        quoted = body(mail)
        assert "line 000000 of the log" in quoted and "THE END" not in quoted
        assert f"[… {stored - 20_000} more characters left out]" in quoted
        assert len(quoted) < 100_000
    [whole] = notification.iter_attachments()
    assert whole.get_filename() == "message.txt"
    assert whole.get_payload(decode=True).decode().splitlines() == text.splitlines()
    assert len(alert.as_bytes()) < 100_000


def test_a_notification_carries_ten_megabytes_of_files_and_names_the_rest(
    services: Services,
) -> None:
    """A customer's files went whole into each agent's notification: 13 MB of them are
    18 MB in base64, and a 25 MB one is past what many agents' mail servers take, so
    the notification bounced and the agent never heard of the ticket. It carries the
    mail's files in their order while they fit in 10 MB, and names the others."""
    files = {"a.log": 4, "disk.img": 8, "b.log": 1}  # MB each
    msg = email.message_from_bytes(make_mail(), policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    for name, megabytes in files.items():
        data = bytes([len(name)]) * (megabytes * 1024 * 1024)
        msg.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    receive(services, msg.as_bytes(policy=email.policy.SMTP))

    [notification] = to_agent(services)
    carried = [part.get_filename() for part in notification.iter_attachments()]
    assert carried == ["a.log", "b.log"]
    assert f"disk.img ({8 * 1024 * 1024} bytes)" in body(notification)
    assert "Not attached (a notification carries 10 MB of files):" in body(notification)
    assert len(ticket(services, 1)["messages"][0]["attachments"]) == 3  # the ticket has all


def test_requester_gives_the_ticket_to_the_customer_it_is_for(
    services: Services, opened: EmailMessage
) -> None:
    """Alice wrote for her colleague Carol, whose mail proved nothing of its own (or
    an agent opened it for the wrong person): `#requester` makes it Carol's. The reply
    goes to Carol, Alice stays in it, and the ticket's history says who changed what."""
    agent_reply(services, opened, "#requester carol@customer.test\nCarol, we are on it.")

    state = ticket(services, 1)
    assert state["requester"] == "carol@customer.test"
    assert participants(services, 1) == {"alice@customer.test", "carol@customer.test"}
    [change] = [e for e in state["events"] if e["field"] == "requester"]
    assert (change["old"], change["new"], change["actor"], change["via"]) == (
        "alice@customer.test", "carol@customer.test", AGENT, "command")  # fmt: skip
    [relayed] = to_customer(services, "carol@customer.test")
    assert relayed["To"].addresses[0].addr_spec == "carol@customer.test"
    assert "Carol, we are on it." in body(relayed)


def test_requester_may_not_name_an_address_of_ours(
    services: Services, opened: EmailMessage
) -> None:
    agent_reply(services, opened, "#requester support@example.test\nMoving it.")

    assert ticket(services, 1)["requester"] == "alice@customer.test"
    assert "an address of ours" in body(to_agent(services)[-1])
