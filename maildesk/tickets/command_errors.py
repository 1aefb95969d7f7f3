"""What is wrong with an agent's command lines, and how each agent reads it.

A refused command is a `CommandError`: a code, the command line it is about and
the values its sentence names. It becomes a sentence only when the mail to the
agent is rendered, in that agent's language, from the one catalogue below (the
error lines of a refused command used to be English inside Czech mail). A test
checks that every code has a sentence in every language with the same fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Code(StrEnum):
    ONE_OF = "one_of"
    ASSIGN_WHO = "assign_who"
    CUSTOMER_ADDRESS = "customer_address"
    PAID_PRICE = "paid_price"
    NO_ARGUMENT = "no_argument"
    CC_ADDRESS = "cc_address"
    REPLY_NAME = "reply_name"
    SHOW_NUMBER = "show_number"
    SEARCH_WORDS = "search_words"
    LIST_FILTER = "list_filter"
    UNKNOWN_COMMAND = "unknown_command"
    NO_TICKET = "no_ticket"
    CUSTOMER_IN_REPLY = "customer_in_reply"
    NOT_AN_AGENT = "not_an_agent"
    PAID_IN_NOTE = "paid_in_note"
    PAID_NOT_MODIFICATION = "paid_not_modification"
    READ_ONLY_IN_REPLY = "read_only_in_reply"
    REPLY_IN_NOTE = "reply_in_note"
    CANNED_NOT_NAME = "canned_not_name"
    CANNED_NO_LANGUAGE = "canned_no_language"
    CANNED_UNKNOWN = "canned_unknown"
    CANNED_NONE = "canned_none"
    CANNED_BROKEN = "canned_broken"
    CC_OURS = "cc_ours"
    ONLY_IN_REPLY = "only_in_reply"
    WHICH_TICKET = "which_ticket"
    NO_SUCH_TICKET = "no_such_ticket"
    OVERDUE_WITHOUT_SLA = "overdue_without_sla"
    UNKNOWN_FILTER = "unknown_filter"
    TOO_LONG = "too_long"
    TOO_MANY = "too_many"
    REPEATED = "repeated"
    CLOSEALL_ALONE = "closeall_alone"


@dataclass(frozen=True)
class CommandError:
    code: Code
    line: str = ""  # the command line it is about (`#lang de`); "" for the whole mail
    args: tuple[tuple[str, str], ...] = ()  # the values the sentence names, by field

    def text(self, language: str) -> str:
        """The error line as the agent reads it: `#lang de: musí být jedno z: cs, en`."""
        sentences = SENTENCES.get(language, SENTENCES["en"])
        sentence = sentences[self.code].format(**dict(self.args))
        return f"{self.line}: {sentence}" if self.line else sentence

    def __str__(self) -> str:  # logs and the CLI: English
        return self.text("en")


def error(code: Code, line: str = "", **args: str) -> CommandError:
    return CommandError(code, line, tuple(sorted(args.items())))


def texts(errors: list[CommandError] | tuple[CommandError, ...], language: str) -> list[str]:
    return [e.text(language) for e in errors]


SENTENCES: dict[str, dict[Code, str]] = {
    "en": {
        Code.ONE_OF: "must be one of {choices}",
        Code.ASSIGN_WHO: "must be 'me' or an address",
        Code.CUSTOMER_ADDRESS: "must be the customer's address",
        Code.PAID_PRICE: "write the price, e.g. #paid 4 hours, 6 000 CZK",
        Code.NO_ARGUMENT: "takes no argument",
        Code.CC_ADDRESS: "must be an address",
        Code.REPLY_NAME: "write the canned reply's name (see #replies)",
        Code.SHOW_NUMBER: "write a ticket number",
        Code.SEARCH_WORDS: "write the words to look for",
        Code.LIST_FILTER: "must be one of {filters}, status=STATUS or from=EMAIL",
        Code.UNKNOWN_COMMAND: "unknown command",
        Code.NO_TICKET: (
            "this mail answers no ticket; to open one for a customer, start with #customer EMAIL"
        ),
        Code.CUSTOMER_IN_REPLY: "opens a new ticket; this mail answers #{ticket}",
        Code.NOT_AN_AGENT: "not an agent",
        Code.PAID_IN_NOTE: "sends the customer a notice; it cannot be part of a #note",
        Code.PAID_NOT_MODIFICATION: "only a modification can be paid work (add #type modification)",
        Code.READ_ONLY_IN_REPLY: (
            "write it in a new mail to support, on its own (the answer comes to your address)"
        ),
        Code.REPLY_IN_NOTE: "answers the customer; it cannot be part of a #note",
        Code.CANNED_NOT_NAME: "not a canned reply name",
        Code.CANNED_NO_LANGUAGE: "no {language} version (exists in {languages})",
        Code.CANNED_UNKNOWN: "no such canned reply (known: {known})",
        Code.CANNED_NONE: "no such canned reply (known: none)",
        Code.CANNED_BROKEN: "the template is broken: {problem}",
        Code.CC_OURS: "an address of ours, not a customer's",
        Code.ONLY_IN_REPLY: "only in a reply to the ticket's notification or #show",
        Code.WHICH_TICKET: "which ticket? Put [#N] in the subject, or reply to the #show of it",
        Code.NO_SUCH_TICKET: "no such ticket",
        Code.OVERDUE_WITHOUT_SLA: "service levels ([sla]) are not configured",
        Code.UNKNOWN_FILTER: "unknown filter",
        Code.TOO_LONG: "a command line is at most {limit} characters",
        Code.TOO_MANY: "at most {limit} command lines in one mail; nothing was done",
        Code.REPEATED: "given twice; write it once",
        Code.CLOSEALL_ALONE: "closes many tickets; write it alone, with no other command",
    },
    "cs": {
        Code.ONE_OF: "musí být jedno z: {choices}",
        Code.ASSIGN_WHO: "musí být „me“ nebo adresa",
        Code.CUSTOMER_ADDRESS: "musí být adresa zákazníka",
        Code.PAID_PRICE: "napište cenu, např. #paid 4 hodiny, 6 000 Kč",
        Code.NO_ARGUMENT: "nemá žádný argument",
        Code.CC_ADDRESS: "musí být adresa",
        Code.REPLY_NAME: "napište název připravené odpovědi (viz #replies)",
        Code.SHOW_NUMBER: "napište číslo tiketu",
        Code.SEARCH_WORDS: "napište hledaná slova",
        Code.LIST_FILTER: "musí být jedno z: {filters}, status=STAV nebo from=E-MAIL",
        Code.UNKNOWN_COMMAND: "neznámý příkaz",
        Code.NO_TICKET: (
            "tento e-mail neodpovídá na žádný tiket; tiket pro zákazníka založíte "
            "řádkem #customer E-MAIL na začátku"
        ),
        Code.CUSTOMER_IN_REPLY: "zakládá nový tiket; tento e-mail odpovídá na #{ticket}",
        Code.NOT_AN_AGENT: "není řešitel",
        Code.PAID_IN_NOTE: "posílá zákazníkovi oznámení; nemůže být součástí #note",
        Code.PAID_NOT_MODIFICATION: (
            "placená práce může být jen úprava (přidejte #type modification)"
        ),
        Code.READ_ONLY_IN_REPLY: (
            "napište ho samotný v novém e-mailu na podporu (odpověď přijde na vaši adresu)"
        ),
        Code.REPLY_IN_NOTE: "odpovídá zákazníkovi; nemůže být součástí #note",
        Code.CANNED_NOT_NAME: "to není název připravené odpovědi",
        Code.CANNED_NO_LANGUAGE: "chybí verze {language} (existuje v: {languages})",
        Code.CANNED_UNKNOWN: "taková připravená odpověď není (jsou: {known})",
        Code.CANNED_NONE: "taková připravená odpověď není (zatím žádné nejsou)",
        Code.CANNED_BROKEN: "šablona je rozbitá: {problem}",
        Code.CC_OURS: "to je naše adresa, ne zákazníkova",
        Code.ONLY_IN_REPLY: "jen v odpovědi na upozornění k tiketu nebo na #show",
        Code.WHICH_TICKET: "u kterého tiketu? Dejte [#N] do předmětu, nebo odpovězte na jeho #show",
        Code.NO_SUCH_TICKET: "takový tiket není",
        Code.OVERDUE_WITHOUT_SLA: "lhůty ([sla]) nejsou nastavené",
        Code.UNKNOWN_FILTER: "neznámý filtr",
        Code.TOO_LONG: "řádek příkazu má nejvýš {limit} znaků",
        Code.TOO_MANY: "nejvýš {limit} řádků příkazů v jednom e-mailu; nic se neprovedlo",
        Code.REPEATED: "je tu dvakrát; napište ho jednou",
        Code.CLOSEALL_ALONE: "uzavírá mnoho tiketů; napište ho samotný, bez dalších příkazů",
    },
}
