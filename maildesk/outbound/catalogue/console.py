"""The answers of the agents' console by mail (pipeline/console.py): lists, a whole
ticket, help, and confirmations. All go to the agent's registered address, in the
agent's language."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Self, TypedDict

from maildesk.i18n import names
from maildesk.outbound.catalogue.agents import ATTACHED_BYTES, named
from maildesk.outbound.catalogue.base import (
    SAMPLE_AGENT,
    SAMPLE_CUSTOMER,
    Audience,
    LanguageRule,
    Notification,
    Tie,
    sample_text,
)
from maildesk.states import TicketStatus
from maildesk.tickets import commands
from maildesk.tickets.command_errors import Code, CommandError, error, texts


class ListRow(TypedDict):
    number: int
    tag: str
    status: str
    priority: str
    owner: str
    age: str
    last_activity: str
    subject: str
    snippet: str  # the matching words of a #search, "" for a #list
    show_address: str  # signed for the agent: mail to it answers with #show of the row


@dataclass(frozen=True)
class AgentList(Notification):
    """The answer to `#list` or `#search`: one compact row per ticket."""

    template = "agent_list"
    audience = Audience.AGENT
    language_rule = LanguageRule.AGENT
    tie = Tie.UNTIED

    query: str
    rows: tuple[ListRow, ...]
    more: bool  # more tickets matched than a list shows

    def variables(self, language: str) -> dict[str, Any]:
        rows = [named(row, language) for row in self.rows]
        return {"query": self.query, "rows": rows, "more": self.more}

    @classmethod
    def samples(cls, language: str, base_url: str) -> list[Self]:
        def row(number: int, owner: str, snippet: str) -> ListRow:
            return {
                "number": number,
                "tag": f"[#{number}]",
                "status": TicketStatus.ACCEPTED,
                "priority": "normal",
                "owner": owner,
                "age": "3d 4h",
                "last_activity": "45m",
                "subject": sample_text(language)["subject"],
                "snippet": snippet,
                "show_address": f"support+s{number}a3.abcdefghij@example.test",
            }

        found = row(42, "", sample_text(language)["customer"][:60])
        return [
            cls("#list mine", (row(42, SAMPLE_AGENT[1], ""), row(43, "", "")), False),
            cls("#search tiskarna", (found,), True),
            cls("#list unassigned", (), False),
        ]


# The files one #show carries at most, newest first; the rest are only named. As a
# notification: what one mail of ours may carry and still reach an agent.
SHOW_ATTACHED_BYTES = ATTACHED_BYTES


class Attached(TypedDict):
    filename: str
    size: int
    attached: bool  # the file is in the #show mail (SHOW_ATTACHED_BYTES in all)


# One message of a #show; `from` is a keyword, hence this spelling.
ShownMessage = TypedDict(
    "ShownMessage",
    {
        "at": str,
        "direction": str,
        "kind": str,
        "from": str,
        "from_name": str,
        "internal": bool,
        "flag": str,
        "text": str,
        "cut": bool,  # the body was longer than a #show carries
        "attachments": list[Attached],
    },
)


class ShownEvent(TypedDict):
    at: str
    actor: str
    field: str
    old: str
    new: str
    via: str


class SlaClock(TypedDict):
    name: str  # first_response | resolution
    state: str  # met | breached | running | paused
    due: str
    used: int  # percent of the target


@dataclass(frozen=True)
class AgentShow(Notification):
    """The whole ticket, with a Reply-To signed for the agent and the ticket."""

    template = "agent_show"
    audience = Audience.AGENT
    language_rule = LanguageRule.AGENT

    thread: tuple[ShownMessage, ...]  # the newest messages, oldest first
    left_out: int  # older messages not shown
    events: tuple[ShownEvent, ...]
    age: str
    last_activity: str
    watchers: tuple[str, ...]
    sla: tuple[SlaClock, ...]  # empty when [sla] is off

    def variables(self, language: str) -> dict[str, Any]:
        catalogue = names(language)  # every label and value in the agent's language
        return {
            **super().variables(language),
            "thread": [catalogue.message(m) for m in self.thread],
            "events": [catalogue.event(e) for e in self.events],
            "sla": [catalogue.sla_clock(c) for c in self.sla],
            "attach_limit": f"{SHOW_ATTACHED_BYTES // (1024 * 1024)} MB",
            "commands_help": commands.help_text(language),
        }

    @classmethod
    def samples(cls, language: str, base_url: str) -> list[Self]:
        name, address = SAMPLE_CUSTOMER
        message: ShownMessage = {
            "at": "2026-01-05 10:30 CET",
            "direction": "in",
            "kind": "customer",
            "from": address,
            "from_name": name,
            "internal": False,
            "flag": "",
            "text": sample_text(language)["customer"],
            "cut": False,
            "attachments": [
                {"filename": "photo.jpg", "size": 48213, "attached": True},
                {"filename": "scan.pdf", "size": 31457280, "attached": False},
            ],
        }
        note: ShownMessage = {**message, "kind": "note", "from": SAMPLE_AGENT[1], "from_name": "",
                              "internal": True, "flag": "forged-agent", "cut": True,
                              "attachments": []}  # fmt: skip
        event: ShownEvent = {
            "at": "2026-01-05 10:41 CET",
            "actor": SAMPLE_AGENT[1],
            "field": "owner",
            "old": "",
            "new": SAMPLE_AGENT[1],
            "via": "command",
        }
        clocks: tuple[SlaClock, ...] = (
            {"name": "first_response", "state": "met", "due": "", "used": 40},
            {"name": "resolution", "state": "running", "due": "2026-01-09 16:00 CET", "used": 12},
        )
        return [
            cls((message, note), 3, (event,), "2h", "5m", ("petr@example.test",), clocks),
            cls((message, note), 0, (), "2h", "5m", (), ()),
        ]


@dataclass(frozen=True)
class AgentHelp(Notification):
    """The answer to `#help` or `#replies` (the canned replies in the agent's language)."""

    template = "agent_help"
    audience = Audience.AGENT
    language_rule = LanguageRule.AGENT
    tie = Tie.UNTIED

    topic: str  # help | replies
    replies: tuple[str, ...]
    # Each reply's first words as the customer would read them, in the order of `replies`.
    previews: tuple[str, ...] = ()

    def variables(self, language: str) -> dict[str, Any]:
        return {**super().variables(language), "commands_help": commands.help_text(language)}

    @classmethod
    def samples(cls, language: str, base_url: str) -> list[Self]:
        previews = ("Hello, the problem is fixed. Please try it again…", "Hello, to find…")
        return [
            cls(topic, replies, previews if replies else ())
            for topic in ("help", "replies")
            for replies in (("fixed", "need-details"), ())
        ]


class Target(TypedDict):
    tag: str
    subject: str
    status: str
    owner: str


@dataclass(frozen=True)
class AgentConfirm(Notification):
    """Commands from an unproven mail wait for the agent's own mailbox to confirm them."""

    template = "agent_confirm"
    audience = Audience.AGENT
    language_rule = LanguageRule.AGENT
    tie = Tie.UNTIED

    commands: tuple[str, ...]
    target: Target
    confirm_url: str
    hours: int  # how long the confirmation works
    original_subject: str

    def variables(self, language: str) -> dict[str, Any]:
        return {**super().variables(language), "target": named(self.target, language)}

    @classmethod
    def samples(cls, language: str, base_url: str) -> list[Self]:
        url = f"{base_url}/confirm?c=17&s=abcdefghij"
        return [
            cls(
                ("#assign me", "#watch"),
                {
                    "tag": "[#42]",
                    "subject": sample_text(language)["subject"],
                    "status": TicketStatus.ACCEPTED,
                    "owner": owner,
                },
                url,
                24,
                "[#42] take",
            )
            for owner in (SAMPLE_AGENT[1], "")
        ]


@dataclass(frozen=True)
class AgentConfirmed(Notification):
    """What became of a confirmation: done, cancelled, already used, expired or failed."""

    template = "agent_confirmed"
    audience = Audience.AGENT
    language_rule = LanguageRule.AGENT
    tie = Tie.UNTIED

    outcome: str  # done | cancelled | used | expired | failed
    commands: tuple[str, ...]
    errors: tuple[CommandError, ...]
    hours: int

    def variables(self, language: str) -> dict[str, Any]:
        return {**super().variables(language), "errors": texts(self.errors, language)}

    @classmethod
    def samples(cls, language: str, base_url: str) -> list[Self]:
        failed = (error(Code.NOT_AN_AGENT, "#assign petr@example.test"),)
        return [
            cls(outcome, ("#assign me",), errors, 24)
            for outcome, errors in (
                ("done", ()),
                ("cancelled", ()),
                ("used", ()),
                ("expired", ()),
                ("failed", failed),
            )
        ]
