"""The notification catalogue: every kind renders in every language from its own sample,
and each reader gets mail in the language the kind's rule picks for them."""

from __future__ import annotations

import email
import email.policy
import re
from dataclasses import fields

import pytest
from sqlalchemy import select

from maildesk import config, templates_admin
from maildesk.config import LANGUAGES
from maildesk.models import STATUSES, Person
from maildesk.outbound.catalogue import (
    BASE_NAMES,
    KINDS,
    AgentNotification,
    Audience,
    Invitation,
    Notification,
    Tie,
)
from maildesk.outbound.notify import Notifier, Recipient
from maildesk.outbound.render import Renderer
from maildesk.services import Services
from tests.conftest import make_mail
from tests.helpers import outbox_rows, receive

AGENT_KINDS = [name for name, kind in KINDS.items() if kind.audience is Audience.AGENT]
# Names in the sample data, not labels of ours: they may carry diacritics in any language.
SAMPLE_NAMES = ("Jan Novák", "Eva Svobodová")
CZECH_LETTERS = re.compile("[áčďéěíňóřšťúůýžÁČĎÉĚÍŇÓŘŠŤÚŮÝŽ]")
# Labels of the English agent templates that a Czech agent must never read.
TIED = {Tie.TICKET: (True,), Tie.UNTIED: (False,), Tie.EITHER: (True, False)}
ENGLISH_LABELS = ("Status:", "Priority:", "Customer:", " wrote:", "Commands", "Opened ")


def renderer_and_notifier(settings: config.Settings) -> tuple[Renderer, Notifier]:
    notifier = templates_admin.sample_notifier(settings)
    return notifier.renderer, notifier


def every_sample(name: str, language: str, base: str) -> list[Notification]:
    return list(KINDS[name].samples(language, base))


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("name", list(KINDS))
def test_every_sample_of_every_kind_renders_strictly(
    settings: config.Settings, name: str, language: str
) -> None:
    """StrictUndefined: a variable a template names and the kind does not give raises."""
    renderer, notifier = renderer_and_notifier(settings)
    kind = KINDS[name]
    for note in every_sample(name, language, settings.support.base_url):
        assert type(note) is kind and note.template == name
        for status in STATUSES:
            ticket = templates_admin.sample_ticket(status, language)
            to = templates_admin.recipient_for(name, ticket)
            for tied in TIED[kind.tie]:
                context = notifier.context(note, ticket if tied else None, to, language)
                rendered = renderer.render(name, language, context)
                assert rendered.language == language
                assert rendered.subject.strip() and rendered.text.strip(), (name, status)


def test_no_kind_shadows_the_base_context() -> None:
    for name, kind in KINDS.items():
        sample = kind.sample("en", "http://127.0.0.1:8080")
        assert not BASE_NAMES & set(sample.variables("en")), name
        assert not BASE_NAMES & {f.name for f in fields(kind)}, name


@pytest.mark.parametrize("name", AGENT_KINDS)
def test_an_english_agent_on_a_czech_ticket_reads_no_czech_label(
    settings: config.Settings, name: str
) -> None:
    renderer, notifier = renderer_and_notifier(settings)
    agent = Recipient("eva@example.test", "Eva Svobodová", agent_id=3, language="en")
    for note in every_sample(name, "en", settings.support.base_url):
        ticket = templates_admin.sample_ticket("accepted", "en")
        ticket.language = "cs"  # the customer writes Czech; the agent reads English
        tied = ticket if KINDS[name].tie is not Tie.UNTIED else None
        language = notifier.language(note, agent, tied)
        assert language == "en"
        rendered = renderer.render(name, language, notifier.context(note, tied, agent, language))
        text = rendered.subject + rendered.text
        for person in SAMPLE_NAMES:
            text = text.replace(person, "")
        assert not CZECH_LETTERS.findall(text), (name, CZECH_LETTERS.findall(text), text)


@pytest.mark.parametrize("name", AGENT_KINDS)
def test_a_czech_agent_on_an_english_ticket_reads_no_english_label(
    settings: config.Settings, name: str
) -> None:
    renderer, notifier = renderer_and_notifier(settings)
    agent = Recipient("eva@example.test", "Eva Svobodová", agent_id=3, language="cs")
    for note in every_sample(name, "cs", settings.support.base_url):
        ticket = templates_admin.sample_ticket("accepted", "cs")
        ticket.language = "en"
        tied = ticket if KINDS[name].tie is not Tie.UNTIED else None
        language = notifier.language(note, agent, tied)
        assert language == "cs"
        rendered = renderer.render(name, language, notifier.context(note, tied, agent, language))
        for label in ENGLISH_LABELS:
            assert label not in rendered.subject + rendered.text, (name, label)


def test_the_language_rules(settings: config.Settings) -> None:
    """Agents read their own language, else [support]; customers their own setting, else
    the ticket's; a ticket's status mail follows the ticket (#lang corrects it)."""
    notifier = templates_admin.sample_notifier(settings)
    ticket = templates_admin.sample_ticket("accepted", "en")
    agent = AgentNotification.sample("en", "")
    assert notifier.language(agent, Recipient("a@x.test", language="en"), ticket) == "en"
    assert notifier.language(agent, Recipient("a@x.test"), ticket) == settings.support.language
    ack = KINDS["acknowledgement"].sample("en", "")
    assert notifier.language(ack, Recipient("c@x.test", language="cs"), ticket) == "cs"
    assert notifier.language(ack, Recipient("c@x.test"), ticket) == "en"
    resolved = KINDS["resolved"].sample("en", "")
    assert notifier.language(resolved, Recipient("c@x.test", language="cs"), ticket) == "en"
    invitation = Invitation.sample("en", "")
    assert notifier.language(invitation, Recipient("c@x.test"), None) == settings.support.language


def test_a_kind_sent_without_its_ticket_is_refused(services: Services) -> None:
    with services.db.transaction() as session, pytest.raises(ValueError):
        services.notifier.notify(session, KINDS["resolved"].sample("en", ""), Recipient("c@x.test"))


def test_an_invitation_is_mailed_in_the_language_of_the_persons_tickets(
    services: Services,
) -> None:
    """`people invite` and the portal's "send me a new link" share one invitation: a person
    with no language of their own gets it in their latest ticket's, not the support's."""
    text = "Dobrý den, tiskárna ve druhém patře od rána tiskne jen prázdné stránky."
    receive(services, make_mail(subject="Tiskárna", body=text, Content_Language="cs"))
    with services.db.transaction() as session:
        person = session.scalars(select(Person).where(Person.email == "alice@customer.test")).one()
        assert person.language is None and services.settings.support.language == "en"
        services.notices.invitation(session, person)
    [row] = [r for r in outbox_rows(services) if r.kind == "invitation"]
    message = email.message_from_bytes(row.raw, policy=email.policy.default)
    assert message["Subject"] == "Váš účet u Example Support"
