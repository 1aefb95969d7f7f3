"""The mail agents get about tickets: notifications, command errors, the digest, SLA notices.

Everything here is read in the agent's language (`LanguageRule.AGENT`): the
command summary, error sentences and status and priority names are derived
from that language in `variables`, never passed in by the caller.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Self, TypedDict, TypeVar

from maildesk.config import LANGUAGES
from maildesk.i18n import names
from maildesk.outbound.catalogue.base import (
    SAMPLE_CUSTOMER,
    SAMPLE_TIME,
    Audience,
    LanguageRule,
    Notification,
    Tie,
    sample_text,
)
from maildesk.states import TicketStatus
from maildesk.tickets import commands
from maildesk.tickets.command_errors import Code, CommandError, error, texts

# What agent_notification is sent for: process.py (new_ticket, forged, unverified and
# Lifecycle.customer_replied's outcomes), web/paid.py, intake.py and agent_mail.py.
AGENT_EVENTS = tuple(
    "new_ticket reply disputed confirmed approved declined critical forged unverified".split()
) + ("assigned", "taken")  # agent_mail.py: a colleague's #assign or #take

# The mail that caused a notification; "from" is a keyword, hence this spelling.
# "cut": characters of its text left out of the quote (0: quoted whole).
Quoted = TypedDict("Quoted", {"from": str, "from_name": str, "text": str, "cut": int})
NO_MAIL: Quoted = {"from": "", "from_name": "", "text": "", "cut": 0}  # e.g. a web answer
# The files one notification carries at most, in the mail's order; the rest are only
# named. A 25 MB attachment is 34 MB in base64, past what many agents' mail servers
# take (Gmail: 25 MB): the notification bounced, and its agent never heard of the mail.
ATTACHED_BYTES = 10 * 1024 * 1024

_File = TypeVar("_File")


def fitting(
    files: Iterable[_File], size: Callable[[_File], int]
) -> tuple[list[_File], list[_File]]:
    """(attached, only named): `files` in their order while they fit in `ATTACHED_BYTES`
    together, a later smaller one still where a larger one did not fit."""
    attached: list[_File] = []
    named: list[_File] = []
    left = ATTACHED_BYTES
    for file in files:
        if size(file) <= left:
            attached.append(file)
            left -= size(file)
        else:
            named.append(file)
    return attached, named


class NotAttached(TypedDict):
    filename: str
    size: int  # bytes


def _sample_mail(language: str) -> Quoted:
    """The sample customer's mail, quoted, for the samples `templates check` renders."""
    name, address = SAMPLE_CUSTOMER
    return {"from": address, "from_name": name, "text": sample_text(language)["customer"], "cut": 0}


@dataclass(frozen=True)
class AgentNotification(Notification):
    """Something happened to a ticket: the owner and watchers (or every agent) hear of it."""

    template = "agent_notification"
    audience = Audience.AGENT
    language_rule = LanguageRule.AGENT
    usual_status = TicketStatus.NEW

    event: str  # one of AGENT_EVENTS
    message: Quoted
    # The mail's files past what one notification carries (`ATTACHED_BYTES`), named.
    not_attached: tuple[NotAttached, ...] = ()

    def variables(self, language: str) -> dict[str, Any]:
        help_text = commands.help_text(language)
        return {
            "event": self.event,
            "message": self.message,
            "not_attached": list(self.not_attached),
            "attach_limit": f"{ATTACHED_BYTES // (1024 * 1024)} MB",
            "commands_help": help_text,
        }

    @classmethod
    def samples(cls, language: str, base_url: str) -> list[Self]:
        mail = _sample_mail(language)
        large: NotAttached = {"filename": "disk-image.zip", "size": 24_117_248}
        return [
            *(cls(event, quoted) for event in AGENT_EVENTS for quoted in (mail, NO_MAIL)),
            cls("new_ticket", mail, (large,)),
        ]


@dataclass(frozen=True)
class AgentQuiet(Notification):
    """A sender opened more new tickets within an hour than agents are told of one by one:
    this one, and the rest of the hour's are filed quietly (pipeline/quiet.py)."""

    template = "agent_quiet"
    audience = Audience.AGENT
    language_rule = LanguageRule.AGENT
    usual_status = TicketStatus.NEW

    sender: str  # the requester's address
    cap: int  # `[limits] new_ticket_notices_per_hour`
    previous: str  # when the last such notice went (desk's time), "" for the first
    tickets_since_previous: int  # tickets the sender opened since then, this one aside
    message: Quoted  # this ticket's mail
    # Whether the flood's mail proved its From (DKIM/DMARC): counted, and told, apart.
    proven: bool = False

    def variables(self, language: str) -> dict[str, Any]:
        return {**super().variables(language), "commands_help": commands.help_text(language)}

    @classmethod
    def samples(cls, language: str, base_url: str) -> list[Self]:
        address, mail = SAMPLE_CUSTOMER[1], _sample_mail(language)
        return [
            cls(address, 10, "", 0, mail),
            cls(address, 10, "2026-01-05 08:30 CET", 2990, mail),
            cls(address, 10, "", 0, NO_MAIL),
            cls(address, 10, "", 0, mail, proven=True),
        ]


@dataclass(frozen=True)
class AgentBusy(Notification):
    """A ticket got more customers' mails within an hour than agents are told of one by
    one: this one, and the rest of the hour's are filed unsaid (pipeline/busy.py)."""

    template = "agent_busy"
    audience = Audience.AGENT
    language_rule = LanguageRule.AGENT
    usual_status = TicketStatus.ACCEPTED

    cap: int  # `[limits] reply_notices_per_ticket_hour`
    until: str  # when the hour ends (desk's time)
    message: Quoted  # the mail past the cap
    # Whether the mails proved their sender: those that did not are counted, and told, apart.
    proven: bool = True

    def variables(self, language: str) -> dict[str, Any]:
        return {**super().variables(language), "commands_help": commands.help_text(language)}

    @classmethod
    def samples(cls, language: str, base_url: str) -> list[Self]:
        mail = _sample_mail(language)
        until = "2026-01-05 10:30 CET"
        return [cls(10, until, mail), cls(10, until, NO_MAIL), cls(10, until, mail, proven=False)]


@dataclass(frozen=True)
class AgentClosedAll(Notification):
    """What an agent's `#closeall` closed, and what it kept open (tickets/cleanup.py)."""

    template = "agent_closed_all"
    audience = Audience.AGENT
    language_rule = LanguageRule.AGENT
    usual_status = TicketStatus.CLOSED

    sender: str  # the requester's address
    proven: bool  # whether the closed tickets' mail proved its From
    closed: int
    first: str  # the tags of the lowest and highest ticket closed ("[#12]"; "" when none)
    last: str
    remaining: int  # more of them, past what one #closeall closes
    owned: int  # open tickets of the sender (same proof) that an agent owns: kept
    other_proof: int  # open tickets of the address with the other proof: kept

    @classmethod
    def samples(cls, language: str, base_url: str) -> list[Self]:
        _name, address = SAMPLE_CUSTOMER
        return [
            cls(address, False, 1990, "[#12]", "[#2011]", 0, 0, 0),
            cls(address, True, 2000, "[#12]", "[#2013]", 1017, 2, 5),
            cls(address, False, 0, "", "", 0, 1, 0),
        ]


@dataclass(frozen=True)
class AgentError(Notification):
    """What was wrong in an agent's commands; nothing reached the customer."""

    template = "agent_error"
    audience = Audience.AGENT
    language_rule = LanguageRule.AGENT
    tie = Tie.EITHER

    errors: tuple[CommandError, ...]
    original_subject: str

    def variables(self, language: str) -> dict[str, Any]:
        return {
            "errors": texts(self.errors, language),
            "commands_help": commands.help_text(language),
            "original_subject": self.original_subject,
        }

    @classmethod
    def samples(cls, language: str, base_url: str) -> list[Self]:
        errors = (
            error(Code.NOT_AN_AGENT, "#assign bob@example.test"),
            error(Code.UNKNOWN_COMMAND, "#staus"),
            error(Code.ONE_OF, "#lang de", choices=", ".join(LANGUAGES)),
        )
        return [cls(errors, "Re: [#42] Tisk")]


class DigestRow(TypedDict):
    tag: str
    subject: str
    status: str
    priority: str
    requester: str
    owner: str
    age: str


class DigestGroup(TypedDict):
    """A sender with many tickets waiting, in one line (tickets/digest.py)."""

    requester: str
    count: int
    first: str  # the tag of their lowest ticket number, "[#11]"
    last: str  # and of the highest


@dataclass(frozen=True)
class AgentDigest(Notification):
    """Once a day: the tickets waiting on an agent, with their ages; a sender's many in
    one line; at most a hundred rows."""

    template = "agent_digest"
    audience = Audience.AGENT
    language_rule = LanguageRule.AGENT
    tie = Tie.UNTIED
    usual_status = TicketStatus.NEW

    day: str  # ISO date
    tickets: tuple[DigestRow, ...]  # the rows listed
    total: int  # every ticket waiting: the rows, the groups' and the unlisted
    groups: tuple[DigestGroup, ...] = ()
    unlisted: int = 0  # rows past the digest's limit

    def variables(self, language: str) -> dict[str, Any]:
        return {
            **super().variables(language),
            "tickets": [named(row, language) for row in self.tickets],
            "groups": list(self.groups),
        }

    @classmethod
    def samples(cls, language: str, base_url: str) -> list[Self]:
        row: DigestRow = {
            "tag": "[#42]",
            "subject": sample_text(language)["subject"],
            "status": TicketStatus.NEW,
            "priority": "critical",
            "requester": SAMPLE_CUSTOMER[1],
            "owner": "",
            "age": "2h",
        }
        other: DigestRow = {
            **row,
            "tag": "[#43]",
            "priority": "normal",
            "owner": "eva@example.test",
        }
        day = SAMPLE_TIME.date().isoformat()
        flood: DigestGroup = {
            "requester": "alerts@monitor.test",
            "count": 2990,
            "first": "[#44]",
            "last": "[#3033]",
        }
        return [cls(day, (row, other), 2), cls(day, (row, other), 3092, (flood,), 100)]


class SlaState(TypedDict):
    kind: str  # reminder | breach
    target: str  # first_response | resolution
    due: str  # local time, "" for a breach
    used_percent: int
    age: str
    around_the_clock: bool  # the target counts every hour, not working hours only


@dataclass(frozen=True)
class AgentSla(Notification):
    """A service-level reminder (75 % of a target) or breach notice."""

    template = "agent_sla"
    audience = Audience.AGENT
    language_rule = LanguageRule.AGENT

    sla: SlaState

    @classmethod
    def samples(cls, language: str, base_url: str) -> list[Self]:
        return [
            cls(
                {
                    "kind": kind,
                    "target": target,
                    "due": "2026-01-05 10:00" if kind == "reminder" else "",
                    "used_percent": 75 if kind == "reminder" else 100,
                    "age": "3d 4h",
                    "around_the_clock": around,
                }
            )
            for kind in ("reminder", "breach")
            for target in ("first_response", "resolution")
            for around in ((False, True) if target == "first_response" else (False,))
        ]


def named(row: Any, language: str) -> dict[str, Any]:
    """`row` with the names of its status and priority (when it has them) in `language`."""
    catalogue = names(language)
    extra = {}
    for kind in ("status", "priority"):
        if kind in row:
            extra[f"{kind}_name"] = catalogue.of(kind, row[kind])
    return {**row, **extra}
