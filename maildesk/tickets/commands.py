"""Commands by mail: `#status resolved`, `#assign me`, … at the top of an agent's reply.

Parsing only: which commands, with which arguments, and what is wrong with
them. Applying them is the agent flow's job. Commands are the `#word` lines
before the first line of ordinary text; they never reach the customer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from maildesk.config import LANGUAGES
from maildesk.i18n import value_named
from maildesk.models import PRIORITIES, STATUSES, TYPES
from maildesk.outbound.headers import writable
from maildesk.tickets.command_errors import Code, CommandError, error

_LINE = re.compile(r"^#([a-z]+)\b[ \t]*(.*)$", re.IGNORECASE)
# One address: no controls, spaces, commas or brackets (it goes into a header as is),
# a domain of dot-separated labels.
_EMAIL = re.compile(
    r"[^\s\x00-\x1f\x7f-\x9f@<>(),;:\"\[\]\\]+"
    r"@[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)+",
    re.IGNORECASE,
)
# Bounds on what one mail asks for: the answer to a mail of a million `#` lines
# (or one line of megabytes) would otherwise be as big, and as slow to make.
MAX_COMMANDS = 20
MAX_LINE = 1000
_SHOWN = 80  # characters of a refused line the error repeats

_HELP_EN = """\
In a reply to a ticket:
#status new|accepted|waiting_customer|resolved|closed
#type modification|bug|consultation
#priority critical|normal|low
#lang cs|en           (the language the customer gets our mail in)
#assign me|EMAIL      (#take: the same as #assign me)
#watch / #unwatch     (get this ticket's notifications too, or no longer)
#cc EMAIL             (a customer-side participant: gets the replies, may write in)
#requester EMAIL      (the customer the ticket is for; the one before stays in Cc)
#reply NAME           (a canned reply above your text; #replies lists them)
#paid PRICE TEXT      (modification tickets: the customer approves before work starts)
#note                 (the whole reply stays internal)
#closeall             (alone: close every open ticket this ticket's sender opened that
                       nobody owns, mailing no one; for a flood)
#customer EMAIL       (first line of a new mail: open a ticket for that customer)

In a new mail to support (answered to your own address only):
#list [mine|unassigned|open|waiting|overdue|all|status=STATUS|from=EMAIL]
#show N
#search WORDS
#replies
#help"""

_HELP_CS = """\
V odpovědi k tiketu:
#status new|accepted|waiting_customer|resolved|closed
#type modification|bug|consultation
#priority critical|normal|low
                      (stav, typ a prioritu lze psát i česky: #priority kritická)
#lang cs|en           (jazyk, ve kterém zákazník dostává naše e-maily)
#assign me|E-MAIL     (#take: totéž co #assign me)
#watch / #unwatch     (dostávat upozornění k tiketu také, nebo už ne)
#cc E-MAIL            (účastník na straně zákazníka: dostává odpovědi, smí psát)
#requester E-MAIL     (zákazník, pro kterého tiket je; dosavadní zůstává v kopii)
#reply NÁZEV          (připravená odpověď nad vaším textem; #replies je vypíše)
#paid CENA TEXT       (úpravy: zákazník schválí, než se začne pracovat)
#note                 (celá odpověď zůstane interní)
#closeall             (samotný: uzavře všechny otevřené tikety od odesílatele tohoto
                       tiketu, které nikdo neřeší, a nikomu nepíše; pro záplavu)
#customer E-MAIL      (první řádek nového e-mailu: založí tiket pro zákazníka)

V novém e-mailu na podporu (odpověď přijde jen na vaši adresu):
#list [mine|unassigned|open|waiting|overdue|all|status=STAV|from=E-MAIL]
#show N
#search SLOVA
#replies
#help"""


def help_text(language: str) -> str:
    """The command summary agents get, in their language (English for any other)."""
    return _HELP_CS if language == "cs" else _HELP_EN


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
    errors: tuple[CommandError, ...]
    body: str  # the text after the command lines

    def get(self, name: str) -> Command | None:
        return next((c for c in self.commands if c.name == name), None)

    def all(self, name: str) -> tuple[Command, ...]:
        """Every `#name` line (`#cc` may come more than once; the others, once)."""
        return tuple(c for c in self.commands if c.name == name)

    @property
    def read_only(self) -> tuple[Command, ...]:
        return tuple(c for c in self.commands if c.name in READ_ONLY)

    @property
    def changing(self) -> tuple[Command, ...]:
        return tuple(c for c in self.commands if c.name not in READ_ONLY)


def parse(text: str) -> Commands:
    lines = text.splitlines()
    commands: list[Command] = []
    errors: list[CommandError] = []
    index = 0
    while index < len(lines):
        line = lines[index].strip()
        match = _LINE.match(line)
        if not line and not commands:
            index += 1
            continue
        if not match:
            break
        if len(commands) + len(errors) == MAX_COMMANDS:
            errors.append(error(Code.TOO_MANY, limit=str(MAX_COMMANDS)))
            break
        if len(line) > MAX_LINE:
            shown = line[:_SHOWN] + "…"
            errors.append(error(Code.TOO_LONG, shown, limit=str(MAX_LINE)))
            index += 1
            continue
        name, arg = match.group(1).lower(), match.group(2).strip()
        if name in _NAMED:  # the agent's language's name of a value will do
            arg = value_named(name, arg) or arg
        problem = _check(name, arg)
        if problem is not None:
            errors.append(CommandError(problem.code, line, problem.args))
        elif name not in REPEATABLE and CANONICAL.get(name, name) in {c.name for c in commands}:
            # Two answers to one question (`#status resolved`, `#status closed`): which one
            # the agent meant is theirs to say; taking the first would drop one unsaid.
            errors.append(error(Code.REPEATED, line))
        elif name == "take":  # an alias, so the flow knows one command
            commands.append(Command("assign", "me"))
        else:
            commands.append(Command(name, arg.lower() if name in _LOWERED else arg))
        index += 1
    body = "\n".join(lines[index:]).strip("\n")
    return Commands(tuple(commands), tuple(errors), body)


_NAMED = ("status", "type", "priority")
CANONICAL = {"take": "assign"}
REPEATABLE = READ_ONLY | {"cc"}  # `#show 1` `#show 2`; one participant per `#cc` line
_LOWERED = {
    *("status", "type", "priority", "lang", "assign", "customer", "cc", "requester"),
    *("reply", "list"),
}
_NO_ARGUMENT = {"note", "take", "watch", "unwatch", "help", "replies", "closeall"}


def _sendable(value: str) -> bool:
    """An address a customer-side command may name: one we can write to (`writable`)."""
    return bool(_EMAIL.fullmatch(value)) and writable(value) == value


def _check(name: str, arg: str) -> CommandError | None:
    """What is wrong with `#name arg` (its line is filled in by `parse`), or None."""
    value = arg.lower()
    choices = {"status": STATUSES, "type": TYPES, "priority": PRIORITIES, "lang": LANGUAGES}
    if name in choices:
        allowed = choices[name]
        return None if value in allowed else error(Code.ONE_OF, choices=", ".join(allowed))
    if name == "assign":
        return None if value == "me" or _EMAIL.fullmatch(value) else error(Code.ASSIGN_WHO)
    if name == "customer":
        return None if _sendable(value) else error(Code.CUSTOMER_ADDRESS)
    if name == "paid":
        return None if arg else error(Code.PAID_PRICE)
    if name in _NO_ARGUMENT:
        return None if name == "note" or not arg else error(Code.NO_ARGUMENT)
    if name in ("cc", "requester"):
        return None if _sendable(value) else error(Code.CC_ADDRESS)
    if name == "reply":
        return None if _REPLY_NAME.match(value) else error(Code.REPLY_NAME)
    if name == "show":
        digits = value.lstrip("#")  # ASCII only: int() refuses "²", which isdigit() allows
        number = digits.isascii() and digits.isdigit() and len(value) < 13
        return None if number else error(Code.SHOW_NUMBER)
    if name == "search":
        return None if arg else error(Code.SEARCH_WORDS)
    if name == "list":
        if not value or value in LIST_FILTERS:
            return None
        status = value.removeprefix("status=")
        if value.startswith("status=") and status in STATUSES:
            return None
        if value.startswith("from=") and _EMAIL.fullmatch(value.removeprefix("from=")):
            return None
        return error(Code.LIST_FILTER, filters=", ".join(LIST_FILTERS))
    return error(Code.UNKNOWN_COMMAND)
