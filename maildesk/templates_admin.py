"""Templates as an admin sees them: what exists, the sample data, check, preview, send-test.

What maildesk sends, and the sample data each kind is previewed and checked
with, is the notification catalogue (outbound/catalogue/): every kind's
`samples()`, on sample ticket #42 (never saved) in every status, with and
without a customer name. The base context (`ticket`, `recipient`, `customer`,
`support`) comes from `Notifier.context`, the same code real mail renders
with, so a sample cannot drift from what mail gets. When a kind gets a new
field, its samples carry it and `templates check` holds every template to it.

What counts as broken is decided by `render.check`; this module feeds it the
sample variants (`contexts`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jinja2 import TemplateSyntaxError

from maildesk.clock import SystemClock
from maildesk.config import LANGUAGES, Settings
from maildesk.models import STATUSES, Agent, Person, Ticket
from maildesk.outbound import canned
from maildesk.outbound.catalogue import (
    KINDS,
    SAMPLE_TIME,
    Audience,
    Notification,
    Tie,
    sample_text,
)
from maildesk.outbound.notify import Notifier, Recipient
from maildesk.outbound.render import Problem, Rendered, Renderer, check, make_environment
from maildesk.states import TicketStatus
from maildesk.tickets.tokens import ReplyTokens

if TYPE_CHECKING:
    from maildesk.services import Services

# A template the code does not send (an admin's own) gets the base context only.
UNKNOWN_STATUS = TicketStatus.ACCEPTED


def canned_contexts(language: str, base: str) -> list[dict[str, Any]]:
    """What canned replies (templates/<language>/replies/) are checked and previewed with."""
    support = {"name": "Example Support", "address": "support@example.test", "url": base}
    agent = canned.AgentInfo("Eva Svobodová", "eva@example.test")
    return [
        canned.context(sample_ticket(status, language, named), agent, support, withheld=withheld)
        for status in STATUSES
        for named in (True, False)
        # A ticket whose words may be a stranger's: its subject is "" (canned.context).
        for withheld in (False, True)
    ]


def sample_notifier(settings: Settings) -> Notifier:
    """A Notifier for building contexts only (it never signs or sends), with no database."""
    renderer = Renderer(settings.templates.path, settings.support.language, strict=True)
    tokens = ReplyTokens(settings.support.address, "templates-admin: signs nothing")
    return Notifier(settings, renderer, tokens, SystemClock())


def kind(name: str) -> type[Notification] | None:
    """The catalogue's kind sent with template `name`; None for an admin's own template."""
    return KINDS.get(name)


def customer_templates() -> list[str]:
    return [name for name, k in KINDS.items() if k.audience is Audience.CUSTOMER]


def sample_ticket(status: str, language: str, named: bool = True) -> Ticket:
    """Ticket #42, never saved: what Notifier.context reads from a real one."""
    requester = Person(id=7, email="jan.novak@customer.test", name="Jan Novák" if named else "")
    owner = Agent(id=3, email="eva@example.test", name="Eva Svobodová", active=True)
    return Ticket(
        id=42,
        subject=sample_text(language)["subject"],
        status=status,
        type="bug",
        priority="normal",
        language=language,
        requester=requester,
        owner=owner,
        created_at=SAMPLE_TIME,
        updated_at=SAMPLE_TIME,
    )


def recipient_for(name: str, ticket: Ticket) -> Recipient:
    found = kind(name)
    if found is not None and found.audience is Audience.AGENT:
        return Recipient("eva@example.test", "Eva Svobodová", agent_id=3)
    return Recipient(ticket.requester.email, ticket.requester.name)


def contexts(notifier: Notifier, name: str, language: str) -> Iterator[dict[str, Any]]:
    """Every sample variant of `name`'s context; the first is the usual case."""
    found = kind(name)
    base = notifier.settings.support.base_url
    notes: list[Notification | None] = list(found.samples(language, base)) if found else [None]
    usual = found.usual_status if found else UNKNOWN_STATUS
    tie = found.tie if found else Tie.TICKET
    statuses = [usual, *(st for st in STATUSES if st != usual)]
    for note, status, named in itertools.product(notes, statuses, (True, False)):
        ticket = sample_ticket(status, language, named)
        to = recipient_for(name, ticket)
        if tie is not Tie.UNTIED:
            yield notifier.context(note, ticket, to, language)
        if tie is not Tie.TICKET:
            yield notifier.context(note, None, to, language)


def sample_context(notifier: Notifier, name: str, language: str) -> dict[str, Any]:
    return next(contexts(notifier, name, language))


def check_all(notifier: Notifier, path: Path | str) -> list[Problem]:
    """`templates check`: every template under `path` against every sample variant,
    then every canned reply (`<language>/replies/`)."""
    found = check(path, lambda name, language: list(contexts(notifier, name, language)))
    base = notifier.settings.support.base_url
    samples = [c for lang in LANGUAGES for c in canned_contexts(lang, base)]
    return found + canned.problems(path, samples)


def missing(settings: Settings) -> list[Problem]:
    """Templates maildesk sends that are absent in the default language: that mail would fail.

    (Another language may lack one: the Renderer then falls back to the default language.)
    """
    path = Path(settings.templates.path)
    if not path.is_dir():
        return [Problem(str(path), None, "no such folder")]
    language = settings.support.language
    wanted = [path / language / f"{name}.txt.j2" for name in KINDS]
    return [
        Problem(str(file), None, "missing (maildesk sends it)")
        for file in wanted
        if not file.is_file()
    ]


def problems(settings: Settings) -> list[Problem]:
    """Everything `templates check` reports: missing templates, then broken ones."""
    found = missing(settings)
    if not Path(settings.templates.path).is_dir():
        return found
    return found + check_all(sample_notifier(settings), settings.templates.path)


def unusable(settings: Settings) -> list[Problem]:
    """What stops mail at once, cheap enough for every start and reload: a template
    maildesk sends is missing, or a template does not compile (`file:line`).
    (`problems` also renders every sample, which takes seconds.)"""
    found = missing(settings)
    path = Path(settings.templates.path)
    if not path.is_dir():
        return found
    env = make_environment(path)
    for file in sorted(path.glob("*/*.j2")):
        try:
            env.get_template(file.relative_to(path).as_posix())
        except TemplateSyntaxError as exc:
            found.append(Problem(str(file), exc.lineno, exc.message or "syntax error"))
    return found


# -- preview and send-test -----------------------------------------------------


def preview(notifier: Notifier, name: str, language: str | None, ticket: Ticket | None) -> Rendered:
    """`name` rendered strictly (errors raise), with sample data or `ticket`'s real data.

    With a ticket, the base context is that ticket's; the kind's own variables stay
    samples, so a preview never mints a real invitation or paid-work link.
    """
    settings = notifier.settings
    if name.startswith(f"{canned.FOLDER}/"):
        return preview_canned(notifier, name.partition("/")[2], language, ticket)
    renderer = Renderer(settings.templates.path, settings.support.language, strict=True)
    if ticket is None:
        lang = language or settings.support.language
        return renderer.render(name, lang, sample_context(notifier, name, lang))
    lang = language or ticket.requester.language or ticket.language
    found = kind(name)
    note = found.sample(lang, settings.support.base_url) if found else None
    tied = found is None or found.tie is not Tie.UNTIED
    context = notifier.context(note, ticket if tied else None, recipient_for(name, ticket), lang)
    return renderer.render(name, lang, context)


def preview_canned(
    notifier: Notifier, name: str, language: str | None, ticket: Ticket | None
) -> Rendered:
    """A canned reply (`replies/NAME`) as the customer would read it above the agent's text."""
    settings = notifier.settings
    base = settings.support.base_url
    lang = language or (ticket.language if ticket else settings.support.language)
    values = canned_contexts(lang, base)[0]
    if ticket is not None:
        support = {"name": settings.support.name, "address": settings.support.address, "url": base}
        values = canned.context(ticket, canned.AgentInfo("Eva Svobodová", "eva@example.test"),
                                support)  # fmt: skip
    text = canned.CannedReplies(lambda: settings.templates.path).render(name, lang, values)
    return Rendered(f"#reply {name}", text + "\n", None, lang)


def send_test(services: Services, name: str, to: str, language: str | None) -> int:
    """Queue `name` rendered with sample data for `to`; returns the outbox id.

    It is rendered with the sample ticket's data and queued by `Notifier.queue`, so it
    is composed, signed and sent exactly like real mail, but belongs to no ticket.
    """
    notifier = services.notifier
    lang = language or services.settings.support.language
    preview(notifier, name, lang, None)  # a broken template raises, not falls back
    context = {**sample_context(notifier, name, lang), "recipient": {"email": to, "name": ""}}
    rendered = notifier.renderer.render(name, lang, context)
    found = kind(name)
    automatic = found.automatic if found else True
    with services.db.transaction() as session:
        to_one = (Recipient(to),)
        row = notifier.queue(
            session, name, rendered, to_one, ticket=None, automatic=automatic, for_agents=False
        )
        session.flush()
        return row.id
