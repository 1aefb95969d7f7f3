"""What agents read for a ticket's status, type and priority, in each of our languages.

One small typed catalogue rather than Babel message catalogues: three closed
sets of names in two languages, checked by mypy and by a test that every
value of `models.STATUSES`, `TYPES` and `PRIORITIES` has a name in every
language. Babel's .po/.mo files would add a compile step and a second source
of truth for sentences that live in `templates/<language>/` anyway.
Customers read `models.STATUS_LABELS`, the support policy's own wording.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Names:
    status: dict[str, str]
    type: dict[str, str]
    priority: dict[str, str]

    def of(self, kind: str, value: str | None) -> str:
        """The name of `value`; the raw value for one the catalogue does not know."""
        if not value:
            return ""
        table: dict[str, str] = getattr(self, kind)
        return table.get(value, value)


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
    ),
}


def names(language: str) -> Names:
    return CATALOGUE.get(language, CATALOGUE["en"])
