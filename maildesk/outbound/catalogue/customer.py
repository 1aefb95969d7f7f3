"""The mail customers get: acknowledgement, invitation, an agent's reply, paid work, status."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Self, TypedDict

from maildesk.outbound.catalogue.base import (
    SAMPLE_AGENT,
    Audience,
    LanguageRule,
    Notification,
    Tie,
    sample_text,
)
from maildesk.states import TicketStatus
from maildesk.tickets.lifecycle import APPROVE_WORDS, CONFIRM_WORDS, DECLINE_WORDS, suggested_word


def _invitation_url(base_url: str) -> str:
    return f"{base_url}/account/set-password?token=eyJwIjo3LCJuIjoiczNjcjN0In0.aWQ.sample"


@dataclass(frozen=True)
class Acknowledgement(Notification):
    """A new ticket is recorded; a person's first one offers an account."""

    template = "acknowledgement"
    audience = Audience.CUSTOMER
    language_rule = LanguageRule.CUSTOMER
    usual_status = TicketStatus.NEW

    invitation_url: str  # "" unless this acknowledgement offers an account
    has_account: bool
    # The ticket was opened by mail that proved nothing (and `[trust] echo_unproven` is
    # off): the mail goes to whatever address its From named, so it repeats neither its
    # subject nor its sender's display name; templates get `ticket.subject` empty.
    withheld: bool = False

    def withholds(self) -> bool:
        return self.withheld

    @classmethod
    def samples(cls, language: str, base_url: str) -> list[Self]:
        return [
            cls(_invitation_url(base_url), False),  # a person's first acknowledgement
            cls("", True),
            cls("", False),  # offered before, no account yet
            cls(_invitation_url(base_url), False, withheld=True),  # opened by unproven mail
        ]


@dataclass(frozen=True)
class Invitation(Notification):
    """A set-password link (people invite, the portal's "send me a new link")."""

    template = "invitation"
    audience = Audience.CUSTOMER
    language_rule = LanguageRule.CUSTOMER
    tie = Tie.UNTIED
    usual_status = TicketStatus.NEW

    invitation_url: str

    @classmethod
    def samples(cls, language: str, base_url: str) -> list[Self]:
        return [cls(_invitation_url(base_url))]


class ReplyText(TypedDict):
    text: str
    agent_name: str


@dataclass(frozen=True)
class AgentReply(Notification):
    """An agent's answer, relayed from the support address to every participant."""

    template = "agent_reply"
    audience = Audience.CUSTOMER
    language_rule = LanguageRule.TICKET
    automatic = False
    usual_status = TicketStatus.WAITING_CUSTOMER

    reply: ReplyText

    @classmethod
    def samples(cls, language: str, base_url: str) -> list[Self]:
        return [cls({"text": sample_text(language)["reply"], "agent_name": SAMPLE_AGENT[0]})]


class PaidOffer(TypedDict):
    price: str
    text: str
    approve_url: str
    decline_url: str


class AgentName(TypedDict):
    name: str


@dataclass(frozen=True)
class PaidNotice(Notification):
    """Before paid work starts, the reporter is told the price and asked to approve."""

    template = "paid_notice"
    audience = Audience.CUSTOMER
    language_rule = LanguageRule.TICKET
    automatic = False
    usual_status = TicketStatus.WAITING_CUSTOMER

    paid: PaidOffer
    agent: AgentName

    def variables(self, language: str) -> dict[str, Any]:
        words = {
            "approve_word": suggested_word(APPROVE_WORDS, language),
            "decline_word": suggested_word(DECLINE_WORDS, language),
        }
        return {"paid": {**self.paid, **words}, "agent": self.agent}

    @classmethod
    def samples(cls, language: str, base_url: str) -> list[Self]:
        offer: PaidOffer = {
            "price": sample_text(language)["price"],
            "text": sample_text(language)["paid"],
            "approve_url": f"{base_url}/paid?token=eyJ0Ijo0MiwiYSI6ImFwcHJvdmUifQ.sample",
            "decline_url": f"{base_url}/paid?token=eyJ0Ijo0MiwiYSI6ImRlY2xpbmUifQ.sample",
        }
        agent: AgentName = {"name": SAMPLE_AGENT[0]}
        return [cls(offer, agent), cls({**offer, "text": ""}, agent)]


@dataclass(frozen=True)
class StatusNotice(Notification):
    """Where the ticket stands now; the template depends on the status."""

    audience = Audience.CUSTOMER
    language_rule = LanguageRule.TICKET

    def variables(self, language: str) -> dict[str, Any]:
        return {"words": {"confirm": suggested_word(CONFIRM_WORDS, language)}}

    @classmethod
    def samples(cls, language: str, base_url: str) -> list[Self]:
        return [cls()]

    @staticmethod
    def for_status(status: str) -> StatusNotice:
        """Resolved asks to confirm or dispute; waiting asks for a reply; closed says
        goodbye; any other status is a plain status change."""
        kinds: dict[str, type[StatusNotice]] = {
            TicketStatus.RESOLVED: Resolved,
            TicketStatus.CLOSED: Closed,
            TicketStatus.WAITING_CUSTOMER: WaitingCustomer,
        }
        return kinds.get(status, StatusChanged)()


@dataclass(frozen=True)
class StatusChanged(StatusNotice):
    template = "status_changed"


@dataclass(frozen=True)
class WaitingCustomer(StatusNotice):
    template = "waiting_customer"
    usual_status = TicketStatus.WAITING_CUSTOMER


@dataclass(frozen=True)
class Resolved(StatusNotice):
    template = "resolved"
    usual_status = TicketStatus.RESOLVED


@dataclass(frozen=True)
class Closed(StatusNotice):
    template = "closed"
    usual_status = TicketStatus.CLOSED
