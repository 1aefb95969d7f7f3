"""Commands by mail: `#status resolved`, `#assign me`, … at the top of an agent's reply.

Parsing only: which commands, with which arguments, and what is wrong with
them. Applying them is the agent flow's job. Commands are the `#word` lines
before the first line of ordinary text; they never reach the customer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from maildesk.config import LANGUAGES
from maildesk.models import PRIORITIES, STATUSES, TYPES

_LINE = re.compile(r"^#([a-z]+)\b[ \t]*(.*)$", re.IGNORECASE)
_EMAIL = re.compile(r"^[^@\s<>(),;:\"\[\]\\]+@[A-Za-z0-9.-]+$")

HELP = """\
In a reply to a ticket:
#status new|accepted|waiting_customer|resolved|closed
#type modification|bug|consultation
#priority critical|normal|low
#lang cs|en           (the language the customer gets our mail in)
#assign me|EMAIL      (#take: the same as #assign me)
#watch / #unwatch     (get this ticket's notifications too, or no longer)
#cc EMAIL             (a customer-side participant: gets the replies, may write in)
#reply NAME           (a canned reply above your text; #replies lists them)
#paid PRICE TEXT      (modification tickets: the customer approves before work starts)
#note                 (the whole reply stays internal)
#customer EMAIL       (first line of a new mail: open a ticket for that customer)

In a new mail to support (answered to your own address only):
#list [mine|unassigned|open|waiting|overdue|all|status=STATUS]
#show N
#search WORDS
#replies
#help"""

# Commands that only read: answered to the agent's registered address, whoever sent them.
READ_ONLY = frozenset({"list", "show", "search", "help", "replies"})
LIST_FILTERS = ("mine", "unassigned", "open", "waiting", "overdue", "all")
_REPLY_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class Command:
    name: str
    arg: str


@dataclass(frozen=True)
class Commands:
    commands: tuple[Command, ...]
    errors: tuple[str, ...]
    body: str  # the text after the command lines

    def get(self, name: str) -> Command | None:
        return next((c for c in self.commands if c.name == name), None)

    @property
    def read_only(self) -> tuple[Command, ...]:
        return tuple(c for c in self.commands if c.name in READ_ONLY)

    @property
    def changing(self) -> tuple[Command, ...]:
        return tuple(c for c in self.commands if c.name not in READ_ONLY)


def parse(text: str) -> Commands:
    lines = text.splitlines()
    commands: list[Command] = []
    errors: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index].strip()
        match = _LINE.match(line)
        if not line and not commands:
            index += 1
            continue
        if not match:
            break
        name, arg = match.group(1).lower(), match.group(2).strip()
        error = _check(name, arg)
        if error:
            errors.append(f"{line}: {error}")
        elif name == "take":  # an alias, so the flow knows one command
            commands.append(Command("assign", "me"))
        else:
            commands.append(Command(name, arg.lower() if name in _LOWERED else arg))
        index += 1
    body = "\n".join(lines[index:]).strip("\n")
    return Commands(tuple(commands), tuple(errors), body)


_LOWERED = {"status", "type", "priority", "lang", "assign", "customer", "cc", "reply", "list"}
_NO_ARGUMENT = {"note", "take", "watch", "unwatch", "help", "replies"}


def _check(name: str, arg: str) -> str:
    value = arg.lower()
    choices = {"status": STATUSES, "type": TYPES, "priority": PRIORITIES, "lang": LANGUAGES}
    if name in choices:
        allowed = choices[name]
        return "" if value in allowed else f"must be one of {', '.join(allowed)}"
    if name == "assign":
        return "" if value == "me" or _EMAIL.match(value) else "must be 'me' or an address"
    if name == "customer":
        return "" if _EMAIL.match(value) else "must be the customer's address"
    if name == "paid":
        return "" if arg else "write the price, e.g. #paid 4 hours, 6 000 CZK"
    if name in _NO_ARGUMENT:
        return "" if name == "note" or not arg else "takes no argument"
    if name == "cc":
        return "" if _EMAIL.match(value) else "must be an address"
    if name == "reply":
        return "" if _REPLY_NAME.match(value) else "write the canned reply's name (see #replies)"
    if name == "show":
        return "" if value.lstrip("#").isdigit() and len(value) < 13 else "write a ticket number"
    if name == "search":
        return "" if arg else "write the words to look for"
    if name == "list":
        if not value or value in LIST_FILTERS:
            return ""
        status = value.removeprefix("status=")
        if value.startswith("status=") and status in STATUSES:
            return ""
        return f"must be one of {', '.join(LIST_FILTERS)} or status=STATUS"
    return "unknown command"
