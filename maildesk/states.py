"""The states a queued row can be in, a ticket's statuses, and where a person's name
came from, as str-valued enums.

The stored values are the enum values, unchanged from the plain strings used
before, so no data migrates. A new state (the spam engineer's `held`) is one
new member here; code that lists "every state" iterates the enum. Being
`StrEnum`s, members compare equal to the stored strings and format as them.
"""

from __future__ import annotations

from enum import StrEnum


class InboundState(StrEnum):
    """An inbound (spool) row: `pending` until processed, then one final state."""

    PENDING = "pending"  # stored, waiting for (or leased to) a processor
    DONE = "done"  # its ticket rows and outbox rows are committed
    DUPLICATE = "duplicate"  # a message with the same Message-ID was already processed
    QUARANTINED = "quarantined"  # held for a human, with the reason; replayable
    HELD = "held"  # spam (see pipeline/spam.py and SpamHold); `maildesk spam release`
    EXPIRED = "expired"  # held spam nobody released in [retention] spam_days: bytes purged


class OutboxState(StrEnum):
    """An outbox row: `pending` until the relay (or Maildir) took it, or it failed for good."""

    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"  # permanent failure, or gave up after the retry window
    BOUNCED = "bounced"  # sent, then a bounce for it came back


# Both queues wait in a state of this one value, so the claim code (`leases.py`)
# serves either queue with one condition.
assert InboundState.PENDING == OutboxState.PENDING
PENDING = InboundState.PENDING


class TicketStatus(StrEnum):
    """A ticket's status, in the order of the support policy (tickets/lifecycle.py moves it)."""

    NEW = "new"
    ACCEPTED = "accepted"  # an agent took it on
    WAITING_CUSTOMER = "waiting_customer"  # we answered or asked; the customer's turn
    RESOLVED = "resolved"  # waiting for the customer's confirmation, then autoclose
    CLOSED = "closed"


class NameSource(StrEnum):
    """Where a person's name came from (`Person.name_source`), which says what may
    replace it (`Tickets.person`). Anyone can write a From's display name."""

    UNPROVEN = "unproven"  # mail that proved nothing, or nobody said: proven mail replaces it
    PROVEN = "proven"  # the From of mail that proved its sender: mail only fills it if empty
    SET = "set"  # typed by the person (portal) or an admin (CLI): mail never changes it
