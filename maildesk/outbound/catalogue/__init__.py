"""Every notification maildesk sends, one frozen dataclass per kind.

A kind names its template, its audience (customer or agent), the rule that
picks its language, whether it is automatic, whether it belongs to a ticket,
and sample data for `maildesk templates list/check/preview`. Callers build a
kind and hand it to `Notifier.notify` (outbound/notify.py); the variables a
template gets are the kind's fields plus what its language derives.
"""

from __future__ import annotations

from maildesk.outbound.catalogue.agents import (
    AGENT_EVENTS,
    ATTACHED_BYTES,
    NO_MAIL,
    AgentBusy,
    AgentClosedAll,
    AgentDigest,
    AgentError,
    AgentNotification,
    AgentQuiet,
    AgentSla,
    DigestGroup,
    DigestRow,
    NotAttached,
    Quoted,
    SlaState,
    fitting,
)
from maildesk.outbound.catalogue.base import (
    BASE_NAMES,
    SAMPLE_TIME,
    Audience,
    LanguageRule,
    Notification,
    Tie,
    sample_text,
)
from maildesk.outbound.catalogue.console import (
    AgentConfirm,
    AgentConfirmed,
    AgentHelp,
    AgentList,
    AgentShow,
    ListRow,
    ShownEvent,
    ShownMessage,
    SlaClock,
    Target,
)
from maildesk.outbound.catalogue.customer import (
    Acknowledgement,
    AgentReply,
    Closed,
    Invitation,
    PaidNotice,
    Resolved,
    StatusChanged,
    StatusNotice,
    WaitingCustomer,
)

KINDS: dict[str, type[Notification]] = {
    kind.template: kind
    for kind in (
        Acknowledgement,
        Invitation,
        AgentReply,
        PaidNotice,
        StatusChanged,
        WaitingCustomer,
        Resolved,
        Closed,
        AgentNotification,
        AgentQuiet,
        AgentBusy,
        AgentClosedAll,
        AgentError,
        AgentDigest,
        AgentSla,
        AgentList,
        AgentShow,
        AgentHelp,
        AgentConfirm,
        AgentConfirmed,
    )
}

__all__ = [
    "AGENT_EVENTS",
    "ATTACHED_BYTES",
    "BASE_NAMES",
    "KINDS",
    "NO_MAIL",
    "SAMPLE_TIME",
    "Acknowledgement",
    "AgentBusy",
    "AgentClosedAll",
    "AgentConfirm",
    "AgentConfirmed",
    "AgentDigest",
    "AgentError",
    "AgentHelp",
    "AgentList",
    "AgentNotification",
    "AgentQuiet",
    "AgentReply",
    "AgentShow",
    "AgentSla",
    "Audience",
    "Closed",
    "DigestGroup",
    "DigestRow",
    "Invitation",
    "LanguageRule",
    "ListRow",
    "fitting",
    "NotAttached",
    "Notification",
    "PaidNotice",
    "Quoted",
    "Resolved",
    "ShownEvent",
    "ShownMessage",
    "SlaClock",
    "SlaState",
    "StatusChanged",
    "StatusNotice",
    "Target",
    "Tie",
    "WaitingCustomer",
    "sample_text",
]
