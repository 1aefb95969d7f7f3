"""What every notification kind declares, and the sample data their previews share.

A kind is a frozen dataclass: its fields are the template's own variables (the
base context, `ticket`, `recipient`, `customer` and `support`, comes from
`Notifier.context`), its class attributes say how it is sent. What depends on
the reader's language (command help, error sentences, status names, reply
words) is not a field: `variables(language)` derives it, so a kind cannot be
built in one language and sent in another.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar, Self

from maildesk.states import TicketStatus

# Names the Notifier puts in every context; a kind's fields must not shadow them.
BASE_NAMES = frozenset({"ticket", "recipient", "customer", "support"})


class Audience(StrEnum):
    CUSTOMER = "customer"  # a ticket message of the conversation (when tied), counts for caps
    AGENT = "agent"  # lives in the outbox only; its Reply-To is bound to the agent


class LanguageRule(StrEnum):
    TICKET = "ticket"  # the ticket's language (detected, or fixed by #lang)
    CUSTOMER = "customer"  # the person's own setting, else the ticket's, else [support]
    AGENT = "agent"  # the agent's setting (agents language), else [support] language


class Tie(StrEnum):
    TICKET = "ticket"  # always sent as part of a ticket
    UNTIED = "untied"  # never: an invitation, a digest, a console answer
    EITHER = "either"  # an agent's command errors: their mail may have named no ticket


@dataclass(frozen=True)
class Notification:
    template: ClassVar[str]
    audience: ClassVar[Audience]
    language_rule: ClassVar[LanguageRule]
    # Automatic mail says `Auto-Submitted: auto-replied`; to a customer on a ticket it
    # also counts against the auto-reply caps ([loops]).
    automatic: ClassVar[bool] = True
    tie: ClassVar[Tie] = Tie.TICKET
    usual_status: ClassVar[str] = TicketStatus.ACCEPTED  # the sample ticket's status in previews

    def withholds(self) -> bool:
        """Whether this mail repeats none of the words of the mail it answers (its
        subject, its sender's display name): they may be a stranger's."""
        return False

    def variables(self, language: str) -> dict[str, Any]:
        """The template's own variables for a reader of `language`."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def samples(cls, language: str, base_url: str) -> list[Self]:
        """Every variant `templates check` renders; the first is the usual case."""
        raise NotImplementedError

    @classmethod
    def sample(cls, language: str, base_url: str) -> Self:
        """What `templates preview` and `send-test` show."""
        return cls.samples(language, base_url)[0]


# -- sample data ------------------------------------------------------------------

SAMPLE_TIME = datetime(2026, 1, 5, 9, 30, tzinfo=UTC)
SAMPLE_AGENT = ("Eva Svobodová", "eva@example.test")
SAMPLE_CUSTOMER = ("Jan Novák", "jan.novak@customer.test")

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


def sample_text(language: str) -> dict[str, str]:
    """Sample sentences in `language` (English for any other)."""
    return _TEXT.get(language, _TEXT["en"])
