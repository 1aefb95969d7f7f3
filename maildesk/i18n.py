"""What agents read for a ticket's status, type and priority, in each of our languages,
and for everything else a `#show` lists: event fields and values, how a change
came (mail, command, ...), message kinds and flags, service-level clocks.

One small typed catalogue rather than Babel message catalogues: three closed
sets of names in two languages, checked by mypy and by a test that every
value of `models.STATUSES`, `TYPES` and `PRIORITIES` has a name in every
language. Babel's .po/.mo files would add a compile step and a second source
of truth for sentences that live in `templates/<language>/` anyway.
Customers read `models.STATUS_LABELS`, the support policy's own wording.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from maildesk.folding import fold

# Event fields whose values are names from a table of the same name.
_NAMED_VALUES = ("status", "type", "priority", "paid", "language")


@dataclass(frozen=True)
class Names:
    status: dict[str, str]
    type: dict[str, str]
    priority: dict[str, str]
    field: dict[str, str]  # what an event changed (models.Event.field)
    paid: dict[str, str]  # the customer's answer to paid work
    language: dict[str, str]
    via: dict[str, str]  # how a change came (models.Event.via)
    kind: dict[str, str]  # a message's kind (models.Message.kind)
    flag: dict[str, str]  # why a message deserves a second look
    sla_target: dict[str, str]
    sla_state: dict[str, str]
    system: str  # the actor of scheduled changes

    def of(self, kind: str, value: str | None) -> str:
        """The name of `value`; the raw value for one the catalogue does not know."""
        if not value:
            return ""
        table: dict[str, str] = getattr(self, kind)
        return table.get(value, value)

    def value(self, field: str, value: str | None) -> str:
        """An event's old or new value: a name, or as it is (an owner's address)."""
        if field in _NAMED_VALUES:
            return self.of(field, value)
        if field == "sla" and value:  # e.g. "first_response breached"
            target, _, state = value.partition(" ")
            return f"{self.of('sla_target', target)} {self.of('sla_state', state)}".strip()
        return value or ""

    def event(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """`event` (field, old, new, actor, via) with the names an agent reads."""
        field = str(event["field"])
        actor = str(event["actor"])
        return {
            **event,
            "field_name": self.of("field", field),
            "old_name": self.value(field, event["old"]),
            "new_name": self.value(field, event["new"]),
            "actor_name": self.system if actor == "system" else actor,
            "via_name": self.of("via", event["via"]),
        }

    def message(self, message: Mapping[str, Any]) -> dict[str, Any]:
        """A shown message (kind, flag) with the names an agent reads."""
        return {
            **message,
            "kind_name": self.of("kind", message["kind"]),
            "flag_name": self.of("flag", message["flag"]),
        }

    def sla_clock(self, clock: Mapping[str, Any]) -> dict[str, Any]:
        """A service-level clock (name, state) with the names an agent reads."""
        return {
            **clock,
            "target_name": self.of("sla_target", clock["name"]),
            "state_name": self.of("sla_state", clock["state"]),
        }


CATALOGUE: dict[str, Names] = {
    "cs": Names(
        status={
            "new": "Nový",
            "accepted": "Přijatý",
            "waiting_customer": "Čeká na zákazníka",
            "resolved": "Vyřešený",
            "closed": "Uzavřený",
        },
        type={"modification": "úprava", "bug": "chyba", "consultation": "konzultace"},
        priority={"critical": "kritická", "normal": "normální", "low": "nízká"},
        field={
            "status": "stav",
            "type": "typ",
            "priority": "priorita",
            "owner": "řešitel",
            "requester": "zadavatel",
            "language": "jazyk",
            "paid": "placená úprava",
            "sla": "SLA",
        },
        paid={"pending": "čeká na schválení", "approved": "schválena", "declined": "odmítnuta"},
        language={"cs": "čeština", "en": "angličtina"},
        via={
            "mail": "e-mailem",
            "command": "příkazem",
            "schedule": "automaticky",
            "cli": "z příkazové řádky",
            "web": "na webu",
        },
        kind={
            "customer": "zákazník",
            "participant": "účastník",
            "agent": "řešitel",
            "note": "interní poznámka",
            "auto": "automatická zpráva",
            "bounce": "nedoručitelná zpráva",
            "acknowledgement": "potvrzení přijetí",
            "agent_reply": "odpověď řešitele",
            "waiting_customer": "oznámení o čekání na zákazníka",
            "resolved": "oznámení o vyřešení",
            "closed": "oznámení o uzavření",
            "status_changed": "změna stavu",
            "paid_notice": "placená úprava ke schválení",
            "invitation": "pozvánka k účtu",
        },
        flag={"forged-agent": "podvržený řešitel", "unverified": "neověřeno"},
        sla_target={"first_response": "první reakce", "resolution": "vyřešení"},
        sla_state={
            "met": "splněno",
            "breached": "PŘEKROČENO",
            "running": "běží",
            "paused": "pozastaveno",
        },
        system="systém",
    ),
    "en": Names(
        status={
            "new": "New",
            "accepted": "Accepted",
            "waiting_customer": "Waiting for customer",
            "resolved": "Resolved",
            "closed": "Closed",
        },
        type={"modification": "modification", "bug": "bug", "consultation": "consultation"},
        priority={"critical": "critical", "normal": "normal", "low": "low"},
        field={
            "status": "status",
            "type": "type",
            "priority": "priority",
            "owner": "owner",
            "requester": "requester",
            "language": "language",
            "paid": "paid work",
            "sla": "SLA",
        },
        paid={"pending": "awaiting approval", "approved": "approved", "declined": "declined"},
        language={"cs": "Czech", "en": "English"},
        via={
            "mail": "by mail",
            "command": "by command",
            "schedule": "on schedule",
            "cli": "on the command line",
            "web": "on the web",
        },
        kind={
            "customer": "customer",
            "participant": "participant",
            "agent": "agent",
            "note": "internal note",
            "auto": "automatic mail",
            "bounce": "bounce",
            "acknowledgement": "acknowledgement",
            "agent_reply": "agent's reply",
            "waiting_customer": "waiting-for-you notice",
            "resolved": "resolved notice",
            "closed": "closed notice",
            "status_changed": "status change",
            "paid_notice": "paid work to approve",
            "invitation": "account invitation",
        },
        flag={"forged-agent": "forged agent", "unverified": "unverified"},
        sla_target={"first_response": "first response", "resolution": "resolution"},
        sla_state={"met": "met", "breached": "BREACHED", "running": "running", "paused": "paused"},
        system="system",
    ),
}


def names(language: str) -> Names:
    return CATALOGUE.get(language, CATALOGUE["en"])


def value_named(kind: str, text: str) -> str | None:
    """The status, type or priority (`kind`) whose name in any of our languages is `text`,
    case and diacritics aside: agents may write `#priority kriticka` as they read it."""
    wanted = " ".join(fold(text).replace("_", " ").split())
    for catalogue in CATALOGUE.values():
        for value, name in getattr(catalogue, kind).items():
            if wanted in (fold(name), value.replace("_", " ")):
                return str(value)
    return None
