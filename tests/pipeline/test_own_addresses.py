"""Addresses of ours never become a ticket's recipients (pipeline/own_addresses.py).

Our aliases and any sub-address of the support address (or of an alias) are ours as
much as the support address: a customer copying one, mail from one, or an agent's
`#cc` naming one would have sent the ticket's mail back to us or to an address our
listener refuses, at each answer.
"""

from __future__ import annotations

from email.message import EmailMessage
from typing import Any

import pytest

from maildesk.config import SupportSettings
from maildesk.pipeline.own_addresses import OwnAddresses
from maildesk.services import Services
from maildesk.tickets.agents import Agents
from tests.conftest import make_mail
from tests.helpers import outbox_rows, participants, receive, ticket
from tests.pipeline.test_agents import AGENT, agent_reply, body, parsed, to_agent, to_customer

ALIAS = "help@example.test"
OURS = (ALIAS, "support+sales@example.test", "Help+Desk@Example.test")


@pytest.fixture
def config_values(config_values: dict[str, Any]) -> dict[str, Any]:
    config_values["agents"]["addresses"] = [AGENT]
    config_values["support"]["aliases"] = [ALIAS]
    return config_values


def everyone_mailed(services: Services) -> set[str]:
    return {address.lower() for row in outbox_rows(services) for address in row.recipients}


def test_a_customer_who_copies_our_addresses_makes_none_of_them_a_participant(
    services: Services,
) -> None:
    """Alice answers our acknowledgement (its signed Reply-To proves her, and her Cc)
    and copies Bob, our alias and two sub-addresses of ours: only Bob joins, and the
    agent's answer goes to the two of them."""
    alice_answers_and_copies(services, ", ".join(("bob@customer.test", *OURS)))
    assert not everyone_mailed(services) & {a.lower() for a in OURS}


def alice_answers_and_copies(services: Services, cc: str) -> None:
    """Alice answers our acknowledgement, copying `cc`: only Bob joins her ticket, and
    the agent's answer goes to the two of them."""
    receive(services, make_mail(message_id="<alice1@customer.test>"))
    [ack] = to_customer(services)
    reply_to = ack["Reply-To"].addresses[0].addr_spec
    answer = make_mail(
        subject=f"Re: {ack['Subject']}",
        to=reply_to,
        cc=cc,
        body="Bob should hear about this too.",
        In_Reply_To=ack["Message-ID"],
    )
    receive(services, answer, rcpt_to=(reply_to,))
    assert participants(services, 1) == {"alice@customer.test", "bob@customer.test"}

    agent_reply(services, to_agent(services)[-1], "We are on it.")

    [relayed] = [m for m in to_customer(services) if "We are on it." in body(m)]
    assert {a.addr_spec for a in relayed["To"].addresses} == {
        "alice@customer.test",
        "bob@customer.test",
    }


@pytest.mark.parametrize("sender", OURS)
def test_mail_from_an_address_of_ours_gets_no_acknowledgement(
    services: Services, sender: str
) -> None:
    """Mail our alias forwards in its own name (or a sub-address's auto-forward) opens a
    ticket for the agents; the acknowledgement would only come back to us."""
    receive(services, make_mail(sender=sender), mail_from=sender)

    assert ticket(services, 1)["requester"] == sender.lower()
    assert [parsed(row)["To"] for row in outbox_rows(services)] == [AGENT]


@pytest.mark.parametrize("command", ["cc", "requester"])
@pytest.mark.parametrize("address", OURS)
def test_an_agent_cannot_name_an_address_of_ours(
    services: Services, command: str, address: str
) -> None:
    receive(services, make_mail(message_id="<alice1@customer.test>"))
    notification: EmailMessage = to_agent(services)[0]

    agent_reply(services, notification, f"#{command} {address}\nMoving it.")

    assert "an address of ours" in body(to_agent(services)[-1])
    assert ticket(services, 1)["requester"] == "alice@customer.test"
    assert participants(services, 1) == {"alice@customer.test"}


AGENT_TAGGED = "Agent+Copies@example.test"  # the agent's mailbox, under a tag


def test_an_agents_sub_address_a_customer_copies_joins_no_ticket(services: Services) -> None:
    """Alice's proven reply copies Bob and the agent's `agent+copies@` (the agent wrote
    to her that way from his own client). Before, that address became a customer
    participant: every answer and status mail of the ticket went to it as to Alice,
    and mail From it joined the ticket with a participant's word. Only Bob joins."""
    alice_answers_and_copies(services, f"bob@customer.test, {AGENT_TAGGED}")
    assert AGENT_TAGGED.lower() not in everyone_mailed(services)


def test_mail_from_an_agents_sub_address_is_no_agents_and_gets_no_acknowledgement(
    services: Services,
) -> None:
    """Anyone can write From `agent+x@`: it is the agent's mailbox, so it gets no
    acknowledgement (before, our answer went there as to a customer), and it is no
    agent either: its command runs on nobody's ticket, and it opens a ticket of its
    own for the agents to look at."""
    receive(services, make_mail(message_id="<alice1@customer.test>"))
    status = ticket(services, 1)["status"]
    forged = "agent+x@example.test"
    raw = make_mail(sender=forged, subject="Re: [#1] Printer broken", body="#status closed\n")
    receive(services, raw, mail_from=forged)

    assert ticket(services, 1)["status"] == status
    assert ticket(services, 2)["requester"] == forged
    assert forged not in everyone_mailed(services)
    assert [m["Subject"] for m in to_agent(services)][-1].startswith("[#2]")


def test_an_agent_configured_under_a_unicode_domain_is_the_agent_her_mail_names(
    services: Services,
) -> None:
    """`[agents] addresses` names Jana as `Jana@Příklad.cz`; mail names her as it is
    sent, `jana@xn--pklad-zsa96e.cz`. She was kept as configured, so Alice copying her
    made her a customer participant (sent the customer's mail) and she was never
    recognized as the agent. She is kept in the mail's form: copied, she joins
    nobody's ticket, and she is told of new tickets at that address."""
    jana = "jana@xn--pklad-zsa96e.cz"
    with services.db.transaction() as session:
        Agents(session).seed(["Jana@Příklad.cz"], services.clock.now())
    receive(services, make_mail(message_id="<alice1@customer.test>"))
    [ack] = to_customer(services)
    reply_to = ack["Reply-To"].addresses[0].addr_spec
    answer = make_mail(
        subject=f"Re: {ack['Subject']}",
        to=reply_to,
        cc=jana,
        body="Jana knows this printer.",
        In_Reply_To=ack["Message-ID"],
    )
    receive(services, answer, rcpt_to=(reply_to,))

    assert participants(services, 1) == {"alice@customer.test"}
    told = [row.recipients for row in outbox_rows(services) if row.kind == "agent_notification"]
    assert [jana] in told


def test_an_alias_configured_under_a_unicode_domain_is_ours_as_mail_names_it() -> None:
    """`[support] aliases` written as `Pomoc@Příklad.cz`: a Cc of it, or of a
    sub-address of it, names it `pomoc…@xn--pklad-zsa96e.cz`, and was no address of
    ours (it became a participant, sent every answer back to us)."""
    own = OwnAddresses(SupportSettings(aliases=("Pomoc@Příklad.cz",)))
    assert "pomoc@xn--pklad-zsa96e.cz" in own
    assert "pomoc+faktury@xn--pklad-zsa96e.cz" in own
    assert "pomoc@xn--pklad-zsa96e.com" not in own
