"""A ticket that gets mail after mail (pipeline/busy.py): agents hear of the first ones
of its hour one by one, then once, and of the rest of the hour nothing; mail that changes
the ticket still reaches them."""

from __future__ import annotations

from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from maildesk import config
from maildesk.clock import ManualClock
from maildesk.services import Services, build
from tests.conftest import make_mail
from tests.helpers import receive, ticket
from tests.pipeline.test_agents import AGENT, agent_reply, body, to_agent, to_customer

CAP = 3


@pytest.fixture
def config_values(config_values: dict[str, Any]) -> dict[str, Any]:
    config_values["agents"]["addresses"] = [AGENT]
    config_values["limits"] = {"reply_notices_per_ticket_hour": CAP}
    return config_values


def opened(services: Services) -> EmailMessage:
    """Alice opened ticket 1; returns our acknowledgement, which her replies answer."""
    receive(services, make_mail(message_id="<alice1@customer.test>"))
    [ack] = to_customer(services)
    return ack


def reply(services: Services, ack: EmailMessage, n: int, text: str = "") -> None:
    """Alice answers our acknowledgement (its Message-ID proves her) with mail `n`."""
    raw = make_mail(
        subject=f"Re: {ack['Subject']}",
        message_id=f"<alice.r{n}@customer.test>",
        body=text or f"Follow-up number {n}.",
        In_Reply_To=ack["Message-ID"],
    )
    receive(services, raw)


def subjects(services: Services) -> list[str]:
    return [str(m["Subject"]) for m in to_agent(services)]


def test_past_the_cap_agents_get_one_notice_then_nothing_until_the_hour_ends(
    services: Services, clock: ManualClock
) -> None:
    ack = opened(services)
    for n in range(1, 11):
        reply(services, ack, n)
        clock.advance(timedelta(minutes=1))

    told = to_agent(services)
    assert len(told) == 1 + CAP + 1  # the new ticket, the first three replies, one notice
    busy = told[-1]
    assert "Busy: more than 3 mails within an hour" in busy["Subject"]
    assert "Follow-up number 4." in body(busy)  # the first one past the cap, quoted
    assert "#show 1" in body(busy)
    # Its Reply-To answers the customer, as any notification's.
    assert busy["Reply-To"].addresses[0].addr_spec.startswith("support+t1a")
    # Every mail is in the ticket all the same.
    texts = [m["body_text"] for m in ticket(services, 1)["messages"]]
    assert sum("Follow-up number" in t for t in texts) == 10

    # The ticket's hour began with the first reply; the next mail after it is told again.
    clock.advance(timedelta(minutes=51))
    reply(services, ack, 11)
    assert "Follow-up number 11." in body(to_agent(services)[-1])
    assert len(to_agent(services)) == 1 + CAP + 1 + 1


def test_a_flood_that_goes_on_is_told_once_an_hour(services: Services, clock: ManualClock) -> None:
    ack = opened(services)
    for n in range(1, 3 * 60 + 1):  # a mail a minute for three hours
        reply(services, ack, n)
        clock.advance(timedelta(minutes=1))

    told = subjects(services)
    assert sum("Busy:" in s for s in told) == 3
    assert len(told) == 1 + 3 * (CAP + 1)


def test_mail_that_changes_the_ticket_is_told_past_the_cap(
    services: Services, clock: ManualClock
) -> None:
    """The agent resolves the ticket in the middle of Alice's flood; her "it still does
    not work" reopens it, and the agents hear of that whatever the count."""
    ack = opened(services)
    for n in range(1, CAP + 3):
        reply(services, ack, n)
    agent_reply(services, to_agent(services)[0], "#status resolved\nFixed the driver.")
    reply(services, ack, 99, text="It still does not work, the printer says E42.")

    assert ticket(services, 1)["status"] == "accepted"
    last = to_agent(services)[-1]
    assert "It still does not work" in body(last)
    assert "Busy:" not in last["Subject"]


def test_a_cap_of_zero_tells_of_every_mail(
    config_values: dict[str, Any], tmp_path: Path, clock: ManualClock
) -> None:
    config_values["limits"] = {"reply_notices_per_ticket_hour": 0}
    services = build(config.from_mapping(config_values, base_dir=tmp_path), clock)
    services.prepare()
    try:
        ack = opened(services)
        for n in range(1, 8):
            reply(services, ack, n)
        assert len(to_agent(services)) == 1 + 7
        assert not any("Busy:" in s for s in subjects(services))
    finally:
        services.db.dispose()


def test_a_strangers_unproven_flood_does_not_silence_the_customers_own_mail(
    services: Services,
) -> None:
    """Anyone can write Alice's From and the ticket's tag: such mail joins her ticket
    unverified. Counted with hers, a stranger's few mails an hour would have kept the
    agents from hearing of Alice's own. The two are counted apart."""
    ack = opened(services)
    for n in range(CAP + 3):
        forged = make_mail(subject="Re: [#1] Printer broken", body=f"Forged {n}.")
        receive(services, forged)
    flagged = [m["flag"] for m in ticket(services, 1)["messages"] if "Forged" in m["body_text"]]
    assert flagged == ["unverified"] * (CAP + 3)
    [busy] = [m for m in to_agent(services) if "Busy:" in m["Subject"]]  # the forger's own
    assert "did not prove their sender" in body(busy)

    reply(services, ack, 1, text="The printer works again, thank you.")

    last = to_agent(services)[-1]
    assert "The printer works again" in body(last) and "Busy:" not in last["Subject"]


def test_a_flood_of_mail_forged_from_an_agent_is_told_once_past_the_cap(
    services: Services,
) -> None:
    """Each unproven mail From an agent's address into a ticket warned every agent: a
    stranger's loop of them was a mail per mail. They count with the ticket's unproven
    mail; the customer's own replies still reach the agents."""
    ack = opened(services)
    for n in range(CAP + 5):
        forged = make_mail(
            subject="Re: [#1] Printer broken",
            sender=AGENT,
            body=f"#status closed\nForged {n}.",
            In_Reply_To="<alice1@customer.test>",
        )
        receive(services, forged, mail_from=AGENT)

    warned = [s for s in subjects(services) if "Unverified mail from an agent address" in s]
    assert len(warned) == CAP
    assert sum("Busy:" in s for s in subjects(services)) == 1
    reply(services, ack, 1, text="Any news about the printer?")
    assert "Any news about the printer?" in body(to_agent(services)[-1])
