"""The database schema: every table maildesk keeps, as SQLAlchemy models.

Migrations in `maildesk/migrations/` are the source of truth for existing
databases; this module is what the code reads and writes. Message-IDs are
stored without angle brackets; addresses are stored lower-cased.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from maildesk.states import InboundState, NameSource, OutboxState, TicketStatus

# Ticket life from the support policy; the Czech names are what customers read.
# Plain strings for the CLI's and the commands' choices (states.py has the enum).
STATUSES = tuple(status.value for status in TicketStatus)
NAME_LENGTH = 200  # a person's name (`Person.name`)
TYPES = ("modification", "bug", "consultation")
PRIORITIES = ("critical", "normal", "low")

Timestamp = DateTime(timezone=True)


class Base(DeclarativeBase):
    pass


class Inbound(Base):
    """The spool: one row per message received, committed before we say "accepted".

    The bytes are in `InboundRaw`, not here: SQLite rewrites a whole row on every
    update, and this row is updated at each claim, lease renewal and finish.
    """

    __tablename__ = "inbound"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    received_at: Mapped[datetime] = mapped_column(Timestamp)
    source: Mapped[str] = mapped_column(String(16))
    mail_from: Mapped[str] = mapped_column(String(512), default="")
    # The SMTP client's IP address: only our own MTA's Authentication-Results count.
    peer: Mapped[str] = mapped_column(String(64), default="")
    rcpt_to: Mapped[list[str]] = mapped_column(JSON, default=list)
    size: Mapped[int] = mapped_column(Integer)
    digest: Mapped[str] = mapped_column(String(64), index=True)
    notify: Mapped[bool] = mapped_column(Boolean, default=True)
    # pending -> done | duplicate | quarantined | held (spam, see SpamHold) -> expired
    state: Mapped[str] = mapped_column(String(16), default=InboundState.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    # The token of the worker's claim that leases this row (maildesk/leases.py).
    claim: Mapped[str | None] = mapped_column(String(32), nullable=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    error: Mapped[str] = mapped_column(Text, default="")
    processed_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    # Fair turns (inbound/lanes.py): the sender's lane, and the message's turn in it.
    # Workers claim in (turn, id) order.
    lane: Mapped[str] = mapped_column(String(512), default="", server_default="")
    turn: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    __table_args__ = (
        Index("ix_inbound_state_id", "state", "id"),
        Index("ix_inbound_state_turn_id", "state", "turn", "id"),
        Index("ix_inbound_state_lane_turn", "state", "lane", "turn"),
    )


class InboundRaw(Base):
    """A received message's bytes exactly as received, written once with its `Inbound` row."""

    __tablename__ = "inbound_raw"

    inbound_id: Mapped[int] = mapped_column(
        ForeignKey("inbound.id", ondelete="CASCADE"), primary_key=True
    )
    raw: Mapped[bytes] = mapped_column(LargeBinary)


class QuarantineRetry(Base):
    """A quarantine that `maildesk quarantine retry` ended: why the message was held
    then. A retry clears the row's reason and traceback for its next attempts; a
    message held again still shows why it was held before (`quarantine show`)."""

    __tablename__ = "quarantine_retries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    inbound_id: Mapped[int] = mapped_column(
        ForeignKey("inbound.id", ondelete="CASCADE"), index=True
    )
    quarantined_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    error: Mapped[str] = mapped_column(Text, default="")  # the traceback, if any
    retried_at: Mapped[datetime] = mapped_column(Timestamp)
    retried_by: Mapped[str] = mapped_column(String(64), default="")  # $USER of the retry


def email_domain(email: str) -> str:
    """The domain of an address as stored (lower case; one `@`, as every address we keep)."""
    return email.rpartition("@")[2]


def _domain_of_row(context: Any) -> str:
    return email_domain(str(context.get_current_parameters()["email"]))


class Person(Base):
    """A customer (or anyone who wrote in). An account is optional: a password set."""

    __tablename__ = "people"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    # Of `email`, set with it: an organization's colleagues are found by it, through its
    # index (`email LIKE '%@acme.test'` read every person at each of their page loads).
    domain: Mapped[str] = mapped_column(String(255), default=_domain_of_row, index=True)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH), default="")
    # What may replace `name`: every mail of ours greets them by it (states.NameSource).
    name_source: Mapped[str] = mapped_column(String(8), default=NameSource.UNPROVEN)
    language: Mapped[str | None] = mapped_column(String(8), nullable=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    # argon2id hash; None = no account (the person just keeps replying by mail).
    password_hash: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # sha256 of the nonce inside the only invitation link that still works.
    invite_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    invited_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    # Bumped when the password changes: older session cookies stop working.
    session_version: Mapped[int] = mapped_column(Integer, default=0)
    # When agents were last told that this person's new tickets are filed quietly, for
    # an hour, instead of one notice each (`[limits] new_ticket_notices_per_hour`): of
    # mail that did not prove its From, and of mail that did (counted apart, quiet.py).
    quiet_since: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True, index=True)
    quiet_proven_since: Mapped[datetime | None] = mapped_column(
        Timestamp, nullable=True, index=True
    )


class WebSession(Base):
    """A portal login, kept on the server so logout and a new password can end it.

    The cookie holds a random id; only its sha256 is stored here.
    """

    __tablename__ = "web_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("people.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    last_seen_at: Mapped[datetime] = mapped_column(Timestamp, index=True)


class Organization(Base):
    """People of one e-mail domain who see each other's tickets, once an admin adds it."""

    __tablename__ = "organizations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    domain: Mapped[str] = mapped_column(String(255), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(Timestamp)


class Agent(Base):
    """Someone who answers tickets from their own mail client."""

    __tablename__ = "agents"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    # What the agent reads: labels, status names, errors; None = `[support] language`.
    language: Mapped[str | None] = mapped_column(String(8), nullable=True)


class Ticket(Base):
    __tablename__ = "tickets"

    # The id is the ticket number customers see in "[#42]".
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subject: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(24), default=TicketStatus.NEW)
    type: Mapped[str | None] = mapped_column(String(24), nullable=True)
    priority: Mapped[str] = mapped_column(String(16), default="normal")
    requester_id: Mapped[int] = mapped_column(ForeignKey("people.id"))
    language: Mapped[str] = mapped_column(String(8), default="cs")
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    updated_at: Mapped[datetime] = mapped_column(Timestamp)
    closed_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    # A closed ticket written to after reopen_days starts a new one pointing here.
    previous_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"), nullable=True)
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("agents.id"), nullable=True)
    resolved_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    channel: Mapped[str] = mapped_column(String(16), default="email")
    # Opened past its sender's hourly cap of agents' notices, mailed to no agent
    # (pipeline/quiet.py): its service-level notices are not mailed either, until
    # someone owns it.
    filed_quietly: Mapped[bool] = mapped_column(Boolean, default=False)
    # Whether its requester proved it hers: the mail that opened it proved its From
    # (DKIM/DMARC), our own side opened it, or her own mail proved her since
    # (`trust.proves_requester`). Until then its words may be a stranger's
    # (outbound/strangers_words.py, tickets/visibility.py); a forger's flood in a
    # customer's name is counted apart from her proven tickets (pipeline/quiet.py).
    sender_proven: Mapped[bool] = mapped_column(Boolean, default=False)
    # The hour of customers' mail counted against `[limits] reply_notices_per_ticket_hour`
    # (pipeline/busy.py): when it began, and how many of its mails would have reached the
    # agents; mail that proved nothing apart. Written by an UPDATE of its own, never
    # through this object.
    reply_window_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    replies_in_window: Mapped[int] = mapped_column(Integer, default=0)
    unproven_window_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    unproven_in_window: Mapped[int] = mapped_column(Integer, default=0)
    # Paid modifications: None, or pending -> approved | declined.
    paid_state: Mapped[str | None] = mapped_column(String(16), nullable=True)
    paid_note: Mapped[str] = mapped_column(Text, default="")
    # Each #paid starts a new round; its links and mail answers count for that round only.
    paid_round: Mapped[int] = mapped_column(Integer, default=0)

    requester: Mapped[Person] = relationship(lazy="joined")
    owner: Mapped[Agent | None] = relationship(lazy="joined")
    messages: Mapped[list[Message]] = relationship(
        back_populates="ticket", order_by="Message.id", lazy="select"
    )
    events: Mapped[list[Event]] = relationship(order_by="Event.id", lazy="select")

    __table_args__ = (
        Index("ix_tickets_status", "status"),
        # A sender's tickets of the last hour, counted for each new one (pipeline/quiet.py).
        Index("ix_tickets_requester_proof_created", "requester_id", "sender_proven", "created_at"),
    )


class Participant(Base):
    """Everyone allowed to write into a ticket: the requester and people in Cc."""

    __tablename__ = "participants"

    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), primary_key=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("people.id"), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))

    person: Mapped[Person] = relationship(lazy="joined")

    # Whose tickets a customer sees (the portal, its search) starts from the person.
    __table_args__ = (Index("ix_participants_person_id", "person_id"),)


class Message(Base):
    """One message of a ticket, inbound or outbound."""

    __tablename__ = "messages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    message_id: Mapped[str] = mapped_column(String(998), unique=True)
    direction: Mapped[str] = mapped_column(String(3))
    # customer | participant | agent | bounce | auto (inbound); acknowledgement... (outbound)
    kind: Mapped[str] = mapped_column(String(32))
    from_addr: Mapped[str] = mapped_column(String(320))
    from_name: Mapped[str] = mapped_column(String(200), default="")
    to_addrs: Mapped[list[str]] = mapped_column(JSON, default=list)
    cc_addrs: Mapped[list[str]] = mapped_column(JSON, default=list)
    subject: Mapped[str] = mapped_column(Text, default="")
    body_text: Mapped[str] = mapped_column(Text, default="")
    body_html: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    # Which rule threaded an inbound message: references|reply_token|subject_tag|new.
    thread_rule: Mapped[str | None] = mapped_column(String(16), nullable=True)
    inbound_id: Mapped[int | None] = mapped_column(ForeignKey("inbound.id"), nullable=True)
    # Internal notes and agent notifications: never shown or sent to customers.
    internal: Mapped[bool] = mapped_column(Boolean, default=False)
    # Why a message deserves a second look, e.g. "forged-agent".
    flag: Mapped[str] = mapped_column(String(32), default="")
    # How the sender of an inbound message was proven: reply_token | message_id |
    # dkim | mta-dkim | mta-dmarc | agent | import | legacy; "" = not proven.
    proof: Mapped[str] = mapped_column(String(16), default="")
    # Another sender's mail came with this Message-ID too: either may have chosen it
    # to lead mail astray, so it threads nothing (`Tickets.thread_key`).
    contested: Mapped[bool] = mapped_column(Boolean, default=False)
    # The Message-ID the mail gave, when it is stored under one of its own because
    # another mail had it first (`Processor._own_id`): its sender's follow-ups that
    # name it still find this message's ticket (`Tickets.thread_key`).
    claimed_id: Mapped[str | None] = mapped_column(String(998), nullable=True)

    ticket: Mapped[Ticket] = relationship(back_populates="messages")
    attachments: Mapped[list[Attachment]] = relationship(order_by="Attachment.id")

    # Partial: nearly every message claims nothing, and its insert then touches no index.
    __table_args__ = (
        Index(
            "ix_messages_claimed_id",
            "claimed_id",
            sqlite_where=text("claimed_id IS NOT NULL"),
            postgresql_where=text("claimed_id IS NOT NULL"),
        ),
    )


class MessageRef(Base):
    """A Message-ID named in a stored message's In-Reply-To or References.

    Indexed by the referenced id so that a message arriving after its reply
    still finds the ticket the reply opened.
    """

    __tablename__ = "message_refs"

    message_pk: Mapped[int] = mapped_column(ForeignKey("messages.id"), primary_key=True)
    ref_id: Mapped[str] = mapped_column(String(998), primary_key=True)

    __table_args__ = (Index("ix_message_refs_ref_id", "ref_id"),)


class Blob(Base):
    """Attachment content, stored once however often it is sent."""

    __tablename__ = "blobs"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Attachment(Base):
    __tablename__ = "attachments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_pk: Mapped[int] = mapped_column(ForeignKey("messages.id"), index=True)
    blob_sha256: Mapped[str] = mapped_column(ForeignKey("blobs.sha256"))
    filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(Integer)


class Event(Base):
    """One change of a ticket's status, type, priority, owner, requester or payment: who,
    when, how."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    at: Mapped[datetime] = mapped_column(Timestamp)
    actor: Mapped[str] = mapped_column(String(320))  # an address, or "system"
    field: Mapped[str] = mapped_column(String(16))
    old: Mapped[str | None] = mapped_column(String(200), nullable=True)
    new: Mapped[str | None] = mapped_column(String(200), nullable=True)
    via: Mapped[str] = mapped_column(String(16))  # mail | command | schedule | cli | web


class JobRun(Base):
    """A scheduled job's unit of work that must happen once (e.g. one digest per day)."""

    __tablename__ = "job_runs"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    at: Mapped[datetime] = mapped_column(Timestamp)


class AutoReplyMinute(Base):
    """Automatic replies queued in one minute (unix minutes) by one thread (`shard`, a
    random number of its own: no two threads update one row) in one lane (`lane`: ""
    for tickets whose From is unproven, else the recipient's organizational domain),
    written with them (outbound/caps.py)."""

    __tablename__ = "auto_reply_minutes"

    minute: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    shard: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    lane: Mapped[str] = mapped_column(String(253), primary_key=True)
    count: Mapped[int] = mapped_column(Integer)


class Outbox(Base):
    """A message to send, written in the same transaction as the change that caused it."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"), nullable=True)
    message_id: Mapped[str] = mapped_column(String(998), unique=True)
    kind: Mapped[str] = mapped_column(String(32))
    sender: Mapped[str] = mapped_column(String(320))
    recipients: Mapped[list[str]] = mapped_column(JSON)
    # Automatic replies count against the per-recipient hourly cap (RFC 3834):
    # auto_to is the recipient's mailbox (caps.mailbox: lower case, no sub-address) of
    # an automatic reply, "" for anything else.
    auto_to: Mapped[str] = mapped_column(String(320), default="")
    # pending -> sent | failed; sent -> bounced
    state: Mapped[str] = mapped_column(String(16), default=OutboxState.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(Timestamp)
    # The token of the sender's claim that leases this row (maildesk/leases.py).
    claim: Mapped[str | None] = mapped_column(String(32), nullable=True)
    last_error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    sent_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)

    __table_args__ = (
        Index("ix_outbox_state_next", "state", "next_attempt_at"),
        Index("ix_outbox_auto_to", "auto_to", "created_at"),
        # The global cap on automatic replies counts the last hour's rows from the
        # index alone (outbound/caps.py): auto_to is in it, so no row is read.
        Index("ix_outbox_created_auto", "created_at", "auto_to"),
        # The purge forgets the bodies of rows sent before its cutoff (retention.py).
        Index("ix_outbox_sent_at", "sent_at"),
    )

    # The bytes are read and written by `maildesk.inbound.rawbytes`, a slice at a
    # time; loading them whole is for tests and tools that ask for it explicitly
    # (`options(selectinload(Outbox.body))`): anything else raises.
    body: Mapped[OutboxRaw | None] = relationship(lazy="raise", viewonly=True)

    @property
    def raw(self) -> bytes:
        """The composed mail (b"" once the purge forgot it); needs `body` loaded."""
        return self.body.raw if self.body is not None else b""


class OutboxRaw(Base):
    """An outbox row's composed mail, written once with it and deleted by the purge."""

    __tablename__ = "outbox_raw"

    outbox_id: Mapped[int] = mapped_column(
        ForeignKey("outbox.id", ondelete="CASCADE"), primary_key=True
    )
    raw: Mapped[bytes] = mapped_column(LargeBinary)


class SpamHold(Base):
    """Why an inbound row is held as spam (state `held`), and whether a human released it."""

    __tablename__ = "spam_holds"

    inbound_id: Mapped[int] = mapped_column(
        ForeignKey("inbound.id", ondelete="CASCADE"), primary_key=True
    )
    # "spamd" or "mta" (the trusted MTA's own verdict headers).
    verdict_by: Mapped[str] = mapped_column(String(16))
    score: Mapped[float | None] = mapped_column(Float, nullable=True)
    rules: Mapped[str] = mapped_column(Text, default="")  # comma-separated rule names
    from_addr: Mapped[str] = mapped_column(String(320), default="")
    subject: Mapped[str] = mapped_column(String(998), default="")
    held_at: Mapped[datetime] = mapped_column(Timestamp)
    # Set by `maildesk spam release`: the row is processed again without a spam check.
    released_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)


class Watcher(Base):
    """An agent who gets a ticket's agent notifications beside its owner (`#watch`)."""

    __tablename__ = "watchers"

    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), primary_key=True)
    agent_id: Mapped[int] = mapped_column(ForeignKey("agents.id"), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp)


class ConsoleRequest(Base):
    """One mail to the agents' console (`#list`, `#show`, …): the rate limit counts these,
    and a redelivered request (same Message-ID) is answered once."""

    __tablename__ = "console_requests"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    agent_id: Mapped[int] = mapped_column(ForeignKey("agents.id"))
    message_id: Mapped[str] = mapped_column(String(998), unique=True)
    at: Mapped[datetime] = mapped_column(Timestamp)
    # How the sender was proven ("" = not proven: answers went to the registered address).
    proof: Mapped[str] = mapped_column(String(16), default="")

    __table_args__ = (Index("ix_console_requests_agent_at", "agent_id", "at"),)


class Confirmation(Base):
    """State-changing commands from an unproven mail, waiting for the agent's one click.

    Confirmed by a reply to the signed address `support+c<id>.<hmac>@…` or by
    the POST button of `/confirm`; once only, and not after `expires_at`.
    """

    __tablename__ = "confirmations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    agent_id: Mapped[int] = mapped_column(ForeignKey("agents.id"))
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"))
    commands: Mapped[str] = mapped_column(Text)  # the command lines, as the agent wrote them
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    expires_at: Mapped[datetime] = mapped_column(Timestamp)
    used_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    used_via: Mapped[str] = mapped_column(String(16), default="")  # mail | web | cancelled


# What customers read for each status, in the support policy's own words.
STATUS_LABELS: dict[str, dict[str, str]] = {
    "cs": {
        TicketStatus.NEW: "Nový",
        TicketStatus.ACCEPTED: "Přijatý",
        TicketStatus.WAITING_CUSTOMER: "Čeká na reakci klienta",
        TicketStatus.RESOLVED: "Vyřešen, čeká na potvrzení/uzavření",
        TicketStatus.CLOSED: "Uzavřeno, nasazeno",
    },
    "en": {
        TicketStatus.NEW: "New",
        TicketStatus.ACCEPTED: "Accepted",
        TicketStatus.WAITING_CUSTOMER: "Waiting for your reply",
        TicketStatus.RESOLVED: "Resolved, waiting for confirmation",
        TicketStatus.CLOSED: "Closed, deployed",
    },
}
