"""Templates as an admin sees them: what exists, the sample data, check, preview, send-test.

This module decides the sample data every template is previewed and checked
with, in one place: `SPECS` says, for each template the code sends, who gets
it, whether it belongs to a ticket, whether it is automatic, and the extras it
is passed, mirroring pipeline/notices.py, pipeline/agent_mail.py and jobs.py.
The base context (`ticket`, `recipient`, `customer`, `support`) is not copied:
it comes from `Notifier._context` itself, on a ticket that is never saved.
When the code passes a new variable, add it here; `templates check` then holds
every template to it.

What counts as broken is decided by `render.check`; this module feeds it the
sample variants (`contexts`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jinja2 import TemplateSyntaxError

from maildesk.clock import ManualClock, SystemClock
from maildesk.config import LANGUAGES, Settings
from maildesk.i18n import names
from maildesk.models import STATUSES, Agent, Person, Ticket
from maildesk.outbound import canned
from maildesk.outbound.notify import Notifier, Recipient
from maildesk.outbound.render import Problem, Rendered, Renderer, check, make_environment
from maildesk.pipeline.notices import _word
from maildesk.tickets import commands
from maildesk.tickets.command_errors import Code, error, texts
from maildesk.tickets.lifecycle import APPROVE_WORDS, CONFIRM_WORDS, DECLINE_WORDS
from maildesk.tickets.tokens import ReplyTokens
from maildesk.web.links import PaidLinks

if TYPE_CHECKING:
    from maildesk.services import Services

Extras = Callable[[str, str], list[dict[str, Any]]]  # (language, base_url) -> variants

SAMPLE_TIME = datetime(2026, 1, 5, 9, 30, tzinfo=UTC)
# What agent_notification is sent for: process.py (new_ticket, forged, and
# Lifecycle.customer_replied's outcomes), web/paid.py, intake.py and agent_mail.py.
AGENT_EVENTS = tuple(
    "new_ticket reply disputed confirmed approved declined critical forged".split()
)
_TEXT = {
    "cs": {
        "subject": "Tiskárna ve 2. patře tiskne prázdné stránky",
        "customer": "Dobrý den, tiskárna ve 2. patře od rána tiskne jen prázdné stránky.",
        "reply": "Dobrý den,\n\nvyměnili jsme fixační jednotku, tiskárna už tiskne.\n"
        "Zkuste to prosím a dejte nám vědět.",
        "paid": "Úprava šablony faktury podle nového loga, asi 4 hodiny práce.",
        "price": "4 800 Kč bez DPH",
    },
    "en": {
        "subject": "The printer on floor 2 prints blank pages",
        "customer": "Hello, since this morning the printer on floor 2 prints only blank pages.",
        "reply": "Hello,\n\nwe replaced the fuser unit and the printer works again.\n"
        "Please give it a try and let us know.",
        "paid": "Changing the invoice template to the new logo, about 4 hours of work.",
        "price": "EUR 190 excluding VAT",
    },
}


def _text(language: str) -> dict[str, str]:
    return _TEXT.get(language, _TEXT["en"])


@dataclass(frozen=True)
class Spec:
    audience: str  # "customer" | "agent"
    tied: str  # "ticket": sent as part of a ticket; "untied": never; "either"
    automatic: bool  # notify(automatic=...): Auto-Submitted: auto-replied
    status: str  # the ticket's status when it is usually sent
    extras: Extras


def _none(language: str, base: str) -> list[dict[str, Any]]:
    return [{}]


def _acknowledgement(language: str, base: str) -> list[dict[str, Any]]:
    url = f"{base}/account/set-password?token=eyJwIjo3LCJuIjoiczNjcjN0In0.aWQ.sample"
    return [
        {"invitation_url": url, "has_account": False},  # a person's first acknowledgement
        {"invitation_url": "", "has_account": True},
        {"invitation_url": "", "has_account": False},  # offered before, no account yet
    ]


def _invitation(language: str, base: str) -> list[dict[str, Any]]:
    return [{"invitation_url": _acknowledgement(language, base)[0]["invitation_url"]}]


def _status_words(language: str, base: str) -> list[dict[str, Any]]:
    return [{"words": {"confirm": _word(CONFIRM_WORDS, language)}}]


def _paid(language: str, base: str) -> list[dict[str, Any]]:
    links = PaidLinks(base, "sample", ManualClock(SAMPLE_TIME))
    paid = {
        "price": _text(language)["price"],
        "text": _text(language)["paid"],
        "approve_url": links.url(42, 1, "approve"),
        "decline_url": links.url(42, 1, "decline"),
        "approve_word": _word(APPROVE_WORDS, language),
        "decline_word": _word(DECLINE_WORDS, language),
    }
    agent = {"name": "Eva Svobodová"}
    return [{"paid": paid, "agent": agent}, {"paid": {**paid, "text": ""}, "agent": agent}]


def _reply(language: str, base: str) -> list[dict[str, Any]]:
    return [{"reply": {"text": _text(language)["reply"], "agent_name": "Eva Svobodová"}}]


def _agent_notification(language: str, base: str) -> list[dict[str, Any]]:
    message = {
        "from": "jan.novak@customer.test",
        "from_name": "Jan Novák",
        "text": _text(language)["customer"],
    }
    silent = {"from": "", "from_name": "", "text": ""}  # web/paid.py passes no message
    return [
        {"event": event, "message": msg, "commands_help": commands.help_text(language)}
        for event in AGENT_EVENTS
        for msg in (message, silent)
    ]


def _agent_error(language: str, base: str) -> list[dict[str, Any]]:
    errors = texts(
        [
            error(Code.NOT_AN_AGENT, "#assign bob@example.test"),
            error(Code.UNKNOWN_COMMAND, "#staus"),
            error(Code.ONE_OF, "#lang de", choices=", ".join(LANGUAGES)),
        ],
        language,
    )
    return [
        {
            "errors": errors,
            "commands_help": commands.help_text(language),
            "original_subject": "Re: [#42] Tisk",
        }
    ]


def _digest(language: str, base: str) -> list[dict[str, Any]]:
    row = {
        "tag": "[#42]",
        "subject": _text(language)["subject"],
        "status": "new",
        "status_name": names(language).of("status", "new"),
        "priority": "critical",
        "priority_name": names(language).of("priority", "critical"),
        "requester": "jan.novak@customer.test",
        "owner": "",
        "age": "2h",
    }
    other = {
        **row,
        "tag": "[#43]",
        "priority": "normal",
        "priority_name": names(language).of("priority", "normal"),
        "owner": "eva@example.test",
    }
    return [{"day": SAMPLE_TIME.date().isoformat(), "tickets": [row, other]}]


def _sla(language: str, base: str) -> list[dict[str, Any]]:
    return [
        {
            "sla": {
                "kind": kind,
                "target": target,
                "due": "2026-01-05 10:00" if kind == "reminder" else "",
                "used_percent": 75 if kind == "reminder" else 100,
                "age": "3d 4h",
            }
        }
        for kind in ("reminder", "breach")
        for target in ("first_response", "resolution")
    ]


def _console_row(language: str, number: int, owner: str, snippet: str) -> dict[str, Any]:
    return {
        "number": number,
        "tag": f"[#{number}]",
        "status": "accepted",
        "status_name": names(language).of("status", "accepted"),
        "priority": "normal",
        "priority_name": names(language).of("priority", "normal"),
        "owner": owner,
        "age": "3d 4h",
        "last_activity": "45m",
        "subject": _text(language)["subject"],
        "snippet": snippet,
        "show_address": f"support+s{number}a3.abcdefghij@example.test",
    }


def _agent_list(language: str, base: str) -> list[dict[str, Any]]:
    rows = [
        _console_row(language, 42, "eva@example.test", ""),
        _console_row(language, 43, "", ""),
    ]
    found = [_console_row(language, 42, "", _text(language)["customer"][:60])]
    return [
        {"query": "#list mine", "rows": rows, "more": False},
        {"query": "#search tiskarna", "rows": found, "more": True},
        {"query": "#list unassigned", "rows": [], "more": False},
    ]


def _agent_show(language: str, base: str) -> list[dict[str, Any]]:
    message = {
        "at": "2026-01-05 09:30",
        "direction": "in",
        "kind": "customer",
        "from": "jan.novak@customer.test",
        "from_name": "Jan Novák",
        "internal": False,
        "flag": "",
        "text": _text(language)["customer"],
        "cut": False,
        "attachments": [{"filename": "photo.jpg", "size": 48213}],
    }
    note = {**message, "kind": "note", "from": "eva@example.test", "from_name": "",
            "internal": True, "flag": "forged-agent", "cut": True, "attachments": []}  # fmt: skip
    event = {
        "at": "2026-01-05 09:41",
        "actor": "eva@example.test",
        "field": "owner",
        "old": "",
        "new": "eva@example.test",
        "via": "command",
    }
    full = {
        "thread": [message, note],
        "left_out": 3,
        "events": [event],
        "age": "2h",
        "last_activity": "5m",
        "watchers": ["petr@example.test"],
        "sla": [
            {"name": "first_response", "state": "met", "due": "", "used": 40},
            {"name": "resolution", "state": "running", "due": "2026-01-09 15:00", "used": 12},
        ],
        "commands_help": commands.help_text(language),
    }
    return [full, {**full, "left_out": 0, "events": [], "watchers": [], "sla": []}]


def _agent_help(language: str, base: str) -> list[dict[str, Any]]:
    return [
        {"topic": topic, "commands_help": commands.help_text(language), "replies": replies}
        for topic in ("help", "replies")
        for replies in (["fixed", "need-details"], [])
    ]


def _agent_confirm(language: str, base: str) -> list[dict[str, Any]]:
    target = {
        "tag": "[#42]",
        "subject": _text(language)["subject"],
        "status": "accepted",
        "status_name": names(language).of("status", "accepted"),
    }
    return [
        {
            "commands": ["#assign me", "#watch"],
            "target": {**target, "owner": owner},
            "confirm_url": f"{base}/confirm?c=17&s=abcdefghij",
            "hours": 24,
            "original_subject": "[#42] take",
        }
        for owner in ("eva@example.test", "")
    ]


def _agent_confirmed(language: str, base: str) -> list[dict[str, Any]]:
    lines = ["#assign me"]
    return [
        {"outcome": outcome, "commands": lines, "errors": errors, "hours": 24}
        for outcome, errors in (
            ("done", []),
            ("used", []),
            ("expired", []),
            ("failed", texts([error(Code.NOT_AN_AGENT, "#assign petr@example.test")], language)),
        )
    ]


def canned_contexts(language: str, base: str) -> list[dict[str, Any]]:
    """What canned replies (templates/<language>/replies/) are checked and previewed with."""
    support = {"name": "Example Support", "address": "support@example.test", "url": base}
    agent = canned.AgentInfo("Eva Svobodová", "eva@example.test")
    return [
        canned.context(sample_ticket(status, language, named), agent, support)
        for status in STATUSES
        for named in (True, False)
    ]


SPECS: dict[str, Spec] = {
    "acknowledgement": Spec("customer", "ticket", True, "new", _acknowledgement),
    "invitation": Spec("customer", "untied", True, "new", _invitation),
    "agent_reply": Spec("customer", "ticket", False, "waiting_customer", _reply),
    "paid_notice": Spec("customer", "ticket", False, "waiting_customer", _paid),
    "status_changed": Spec("customer", "ticket", True, "accepted", _none),
    "waiting_customer": Spec("customer", "ticket", True, "waiting_customer", _none),
    "resolved": Spec("customer", "ticket", True, "resolved", _status_words),
    "closed": Spec("customer", "ticket", True, "closed", _status_words),
    "agent_notification": Spec("agent", "ticket", True, "new", _agent_notification),
    "agent_error": Spec("agent", "either", True, "accepted", _agent_error),
    "agent_digest": Spec("agent", "untied", True, "new", _digest),
    "agent_sla": Spec("agent", "ticket", True, "accepted", _sla),
    "agent_list": Spec("agent", "untied", True, "accepted", _agent_list),
    "agent_show": Spec("agent", "ticket", True, "accepted", _agent_show),
    "agent_help": Spec("agent", "untied", True, "accepted", _agent_help),
    "agent_confirm": Spec("agent", "untied", True, "accepted", _agent_confirm),
    "agent_confirmed": Spec("agent", "untied", True, "accepted", _agent_confirmed),
}
# A template the code does not send (an admin's own) gets the base context only.
_UNKNOWN = Spec("customer", "ticket", True, "accepted", _none)


def sample_notifier(settings: Settings) -> Notifier:
    """A Notifier for building contexts only (it never signs or sends), with no database."""
    renderer = Renderer(settings.templates.path, settings.support.language, strict=True)
    tokens = ReplyTokens(settings.support.address, "templates-admin: signs nothing")
    return Notifier(settings, renderer, tokens, SystemClock())


def spec(name: str) -> Spec:
    return SPECS.get(name, _UNKNOWN)


def customer_templates() -> list[str]:
    return [name for name, s in SPECS.items() if s.audience == "customer"]


def sample_ticket(status: str, language: str, named: bool = True) -> Ticket:
    """Ticket #42, never saved: what Notifier._context reads from a real one."""
    requester = Person(id=7, email="jan.novak@customer.test", name="Jan Novák" if named else "")
    owner = Agent(id=3, email="eva@example.test", name="Eva Svobodová", active=True)
    return Ticket(
        id=42,
        subject=_text(language)["subject"],
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
    if spec(name).audience == "agent":
        return Recipient("eva@example.test", "Eva Svobodová", agent_id=3)
    return Recipient(ticket.requester.email, ticket.requester.name)


def untied_context(notifier: Notifier, to: Recipient, extra: dict[str, Any]) -> dict[str, Any]:
    """What Notifier.notify_untied renders with when there is no ticket."""
    support = notifier.settings.support
    return {
        "ticket": None,
        "recipient": {"email": to.email, "name": to.name},
        "support": {"name": support.name, "address": support.address, "url": support.base_url},
        **extra,
    }


def contexts(notifier: Notifier, name: str, language: str) -> Iterator[dict[str, Any]]:
    """Every sample variant of `name`'s context; the first is the usual case."""
    s = spec(name)
    base = notifier.settings.support.base_url
    statuses = [s.status, *(st for st in STATUSES if st != s.status)]
    for extra, status, named in itertools.product(
        s.extras(language, base), statuses, (True, False)
    ):
        ticket = sample_ticket(status, language, named)
        to = recipient_for(name, ticket)
        if s.tied != "untied":
            # The real code path, so the sample cannot drift from what mail gets.
            yield notifier._context(ticket, to, language, extra)
        if s.tied != "ticket":
            yield untied_context(notifier, to, extra)


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
    wanted = [path / language / f"{name}.txt.j2" for name in SPECS]
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

    With a ticket, the base context is that ticket's; the extras stay samples, so a
    preview never mints a real invitation or paid-work link.
    """
    settings = notifier.settings
    if name.startswith(f"{canned.FOLDER}/"):
        return preview_canned(notifier, name.partition("/")[2], language, ticket)
    renderer = Renderer(settings.templates.path, settings.support.language, strict=True)
    if ticket is None:
        lang = language or settings.support.language
        return renderer.render(name, lang, sample_context(notifier, name, lang))
    lang = language or ticket.requester.language or ticket.language
    extra = spec(name).extras(lang, settings.support.base_url)[0]
    to = recipient_for(name, ticket)
    if spec(name).tied == "untied":
        return renderer.render(name, lang, untied_context(notifier, to, extra))
    return renderer.render(name, lang, notifier._context(ticket, to, lang, extra))


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

    It goes through Notifier.notify_untied, so it is composed, signed and sent
    exactly like real mail, but belongs to no ticket.
    """
    lang = language or services.settings.support.language
    preview(services.notifier, name, lang, None)  # a broken template raises, not falls back
    context = sample_context(services.notifier, name, lang)
    extra = {k: v for k, v in context.items() if k not in ("recipient", "support")}
    with services.db.transaction() as session:
        row = services.notifier.notify_untied(
            session, None, name, Recipient(to), language=lang, answering=None, extra=extra
        )
        session.flush()
        return row.id
