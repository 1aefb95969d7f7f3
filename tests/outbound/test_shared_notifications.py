"""The agents notified of one message each get a mail of their own, though it is
rendered and composed once for all who read one language: shared only while the
template does not look at who it is written for."""

from __future__ import annotations

import email
import email.policy
import shutil
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from maildesk.clock import ManualClock
from maildesk.config import PACKAGE_TEMPLATES
from maildesk.services import Services
from maildesk.tickets.agents import Agents
from tests.conftest import Outbox, make_mail
from tests.helpers import outbox_rows, receive
from tests.mailclient import sent

POLICY = email.policy.SMTP
AGENTS = ["anna@example.test", "boris@example.test", "cyril@example.test"]


@pytest.fixture
def config_values(config_values: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    templates = tmp_path / "templates"
    shutil.copytree(PACKAGE_TEMPLATES, templates)
    config_values["templates"] = {"path": str(templates)}
    config_values["agents"]["addresses"] = AGENTS
    return config_values


def name_the_agents(services: Services, clock: ManualClock) -> None:
    with services.db.transaction() as session:
        agents = Agents(session)
        for email_address, name in zip(AGENTS, ["Anna", "Boris", "Cyril"], strict=True):
            agents.remove(email_address)
            agents.add(email_address, name, clock.now(), language="en")
        agents.set_language("cyril@example.test", "cs")


def notifications(services: Services) -> dict[str, EmailMessage]:
    found = {}
    for row in outbox_rows(services):
        if row.kind == "agent_notification":
            [to] = row.recipients
            found[to] = email.message_from_bytes(row.raw, policy=email.policy.default)
    return found  # type: ignore[return-value]


def begin_body(tmp_path: Path, language: str, start: str) -> None:
    """The admin's edit: the agent notification's body in `language` begins with `start`."""
    template = tmp_path / "templates" / language / "agent_notification.txt.j2"
    source = template.read_text(encoding="utf-8")
    template.write_text(
        source.replace("{% block body %}", "{% block body %}" + start, 1), encoding="utf-8"
    )


def text(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


def test_each_agent_gets_their_own_mail_with_the_same_content(
    services: Services, clock: ManualClock
) -> None:
    name_the_agents(services, clock)
    receive(services, make_mail(body="The printer is on fire.\n"))
    sent = notifications(services)
    assert sorted(sent) == AGENTS
    # Their own address, Reply-To and Message-ID: a reply proves which agent wrote it.
    assert len({m["Reply-To"] for m in sent.values()}) == 3
    assert len({m["Message-ID"] for m in sent.values()}) == 3
    for address, message in sent.items():
        assert message["To"].addresses[0].addr_spec == address
        assert "The printer is on fire." in text(message)
    # The two English readers share every word; the Czech one reads Czech.
    anna, boris, cyril = (text(sent[a]) for a in AGENTS)
    assert anna == boris
    assert cyril != anna and "Nový požadavek" in cyril


def test_a_template_that_greets_its_reader_is_rendered_for_each(
    services: Services, clock: ManualClock, tmp_path: Path
) -> None:
    name_the_agents(services, clock)
    for language in ("en", "cs"):
        begin_body(tmp_path, language, "Hi {{ recipient.name }},\n")
    receive(services, make_mail(body="The printer is on fire.\n"))
    sent = notifications(services)
    assert text(sent["anna@example.test"]).startswith("Hi Anna,")
    assert text(sent["boris@example.test"]).startswith("Hi Boris,")
    assert text(sent["cyril@example.test"]).startswith("Hi Cyril,")


def test_an_included_template_that_reads_the_recipient_counts_too(
    services: Services, clock: ManualClock, tmp_path: Path
) -> None:
    name_the_agents(services, clock)
    (tmp_path / "templates" / "en" / "greeting.txt.j2").write_text(
        "Dear {{ recipient['email'] }}\n", encoding="utf-8"
    )
    begin_body(tmp_path, "en", '{% include "en/greeting.txt.j2" %}')
    receive(services, make_mail(body="The printer is on fire.\n"))
    sent = notifications(services)
    assert text(sent["anna@example.test"]).startswith("Dear anna@example.test")
    assert text(sent["boris@example.test"]).startswith("Dear boris@example.test")


def test_a_large_attachment_reaches_every_agent_byte_for_byte(
    services: Services, outbox: Outbox
) -> None:
    # Over the 1 MiB slice: each agent's copy is stored and read back in slices.
    data = bytes(range(256)) * (3 << 12)
    message = email.message_from_bytes(make_mail("Scan of the contract"), policy=POLICY)
    assert isinstance(message, EmailMessage)
    message.add_attachment(data, "application", "pdf", filename="contract.pdf")
    receive(services, message.as_bytes(policy=POLICY))

    assert services.sender().send_due() == 1 + len(AGENTS)  # the acknowledgement too
    rows = {row.message_id: row.raw for row in outbox_rows(services)}
    for mail in sent(outbox):
        assert rows[mail.msg["Message-ID"].strip("<>")] == mail.raw
        if mail.msg["To"].addresses[0].addr_spec in AGENTS:
            [attached] = mail.msg.iter_attachments()
            assert attached.get_content() == data  # type: ignore[attr-defined]
    assert len([m for m in sent(outbox) if m.msg["To"].addresses[0].addr_spec in AGENTS]) == 3
