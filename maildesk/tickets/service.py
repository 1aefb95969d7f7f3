"""Ticket operations: open, find by thread, add a message, reopen.

Everything here runs inside the caller's transaction (a SQLAlchemy session)
and takes the time from the injected clock. Nothing here knows MIME.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar, cast

from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    Table,
    and_,
    bindparam,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, class_mapper, make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key
from sqlalchemy.sql.elements import BindParameter

from maildesk.clock import as_utc
from maildesk.hotsql import Hot, connection_of
from maildesk.inbound import rawbytes
from maildesk.models import (
    NAME_LENGTH,
    Agent,
    Attachment,
    Blob,
    Inbound,
    Message,
    MessageRef,
    Outbox,
    Participant,
    Person,
    Ticket,
)
from maildesk.outbound.headers import clean_text
from maildesk.states import NameSource, TicketStatus
from maildesk.tickets.search import index_message

# Run on the driver's cursor (hotsql.py): every processed message runs these.
_INSERT_MESSAGE = Hot(insert(cast(Table, Message.__table__)).returning(Message.__table__.c.id))
_INSERT_TICKET = Hot(insert(cast(Table, Ticket.__table__)).returning(Ticket.__table__.c.id))
_INSERT_REF = Hot(insert(cast(Table, MessageRef.__table__)))
_INSERT_PARTICIPANT = Hot(insert(cast(Table, Participant.__table__)))
# The lookups every processed message makes, built once; they read rows written with
# Core on the same connection (messages and outbox rows are never ORM objects).
_MESSAGE_EXISTS = Hot(select(Message.id).where(Message.message_id == bindparam("mid")).limit(1))
_STORED_AS = Hot(
    select(Message.direction, Message.from_addr, Message.kind).where(
        Message.message_id == bindparam("mid")
    )
)


def _referencing(*where: ColumnElement[bool]) -> Select[Any]:
    """The ticket of the first stored message naming `mid` that could itself be a key
    (see `Tickets.thread_key`), and meets `where`."""
    return (
        select(Message.ticket_id)
        .join(MessageRef, MessageRef.message_pk == Message.id)
        .where(
            MessageRef.ref_id == bindparam("mid"),
            Message.kind != "bounce",
            or_(Message.proof != "", Message.from_addr == bindparam("sender")),
            *where,
        )
        .order_by(Message.id)
        .limit(1)
    )


# In the sender's own ticket: her follow-up came first.
_REFERENCING_OWN = Hot(
    _referencing(Person.email == bindparam("sender"))
    .join(Ticket, Ticket.id == Message.ticket_id)
    .join(Person, Person.id == Ticket.requester_id)
)
# Of an imported archive: any writer's reply leads its original.
_REFERENCING_ARCHIVE = Hot(
    _referencing(Inbound.source == "import").join(Inbound, Inbound.id == Message.inbound_id)
)
# The addresses of an arriving mail's To and Cc that a reply that came first is looked
# up from: a colleague answering everyone is among the first of them.
_ADDRESSED = 100


@functools.lru_cache(maxsize=128)
def _referencing_from(count: int) -> Hot:
    """From one of `count` addresses (`a0` …) the arriving mail was sent to."""
    return Hot(_referencing(Message.from_addr.in_([bindparam(f"a{i}") for i in range(count)])))


# The person's columns a processed message reads; `created_at` loads if something
# reads it (`_loaded_person`).
_PERSON_COLUMNS = (
    "id",
    "name",
    "name_source",
    "language",
    "password_hash",
    "invite_hash",
    "invited_at",  # the acknowledgement reads it: left out, it cost a reload of the row
    "session_version",
)
_PERSON = Hot(
    select(*(getattr(Person, column) for column in _PERSON_COLUMNS)).where(
        Person.email == bindparam("email")
    )
)
_TICKET_TABLE = cast(Table, Ticket.__table__)
_TICKET_COLUMNS = tuple(column.key for column in _TICKET_TABLE.columns)
# A ticket with its requester: each reply threaded by its references reads both.
# Locked for the rest of the write (PostgreSQL; SQLite's one writer needs nothing):
# a change decided on what was read must not be decided on what another worker
# is changing at that moment (two agents' #status, an agent closing while the
# customer reopens), or the ticket's history records a stale old value and columns
# from both changes mix (closed_at on a reopened ticket).
_TICKET = Hot(
    select(*_TICKET_TABLE.columns, Person.email, *(getattr(Person, c) for c in _PERSON_COLUMNS))
    .join_from(_TICKET_TABLE, Person, _TICKET_TABLE.c.requester_id == Person.id)
    .where(_TICKET_TABLE.c.id == bindparam("number"))
    .with_for_update(of=_TICKET_TABLE)
)
_BLOB_EXISTS = select(Blob.sha256).where(Blob.sha256 == bindparam("sha"))
# PostgreSQL advisory locks of addresses about to become people (`lock_new_people`):
# the two-key form, whose first key is a class of our own, apart from exclusive.py's.
_NEW_PERSON_CLASS = 0x6D64
_LOCK_NEW_PEOPLE = text(
    "SELECT pg_advisory_xact_lock(:class, key) FROM ("
    " SELECT DISTINCT hashtext(address) AS key FROM unnest(CAST(:addresses AS text[])) AS address"
    " WHERE NOT EXISTS (SELECT 1 FROM people WHERE people.email = address)"
    " ORDER BY key) AS new"
)
_IS_PARTICIPANT = Hot(
    select(Participant.person_id)
    .join(Person, Person.id == Participant.person_id)
    .where(Participant.ticket_id == bindparam("ticket_id"), Person.email == bindparam("email"))
)
_TOUCH_TICKET = Hot(
    update(cast(Table, Ticket.__table__))
    .where(Ticket.__table__.c.id == bindparam("ticket_id"))
    .values(updated_at=bindparam("at"))
)
# Read as stored: a name this session gave someone and has not flushed yet reads as
# the one before, which costs a second look at that person (`person`), changing nothing.
_PARTICIPANTS = Hot(
    select(Participant.person_id, Person.email, Person.name, Person.name_source)
    .join(Person, Person.id == Participant.person_id)
    .where(Participant.ticket_id == bindparam("ticket_id"))
)


@functools.lru_cache(maxsize=256)
def _thread_keys(count: int) -> tuple[Hot, Hot, Hot]:
    """The three lookups of `Tickets.thread_key` for `count` ids (`id0` …), hot: an
    expanding IN would be compiled anew for each message. A message names at most
    110 ids (message.py caps In-Reply-To and References), so at most 110 are kept."""
    ids: list[BindParameter[str]] = [bindparam(f"id{i}") for i in range(count)]
    minted = select(Outbox.message_id, Outbox.ticket_id).where(
        Outbox.message_id.in_(ids), Outbox.ticket_id.is_not(None)
    )
    stored = (
        select(Message.message_id, Message.ticket_id, Message.direction)
        .join(Ticket, Ticket.id == Message.ticket_id)
        .join(Person, Person.id == Ticket.requester_id)
        .where(
            Message.message_id.in_(ids),
            Message.kind != "bounce",
            or_(
                # A contested id leads only the mail of whoever used it, to their message.
                Message.from_addr == bindparam("sender"),
                and_(
                    Message.contested.is_(False),
                    or_(
                        Message.direction == "out",
                        Message.proof != "",
                        Message.from_addr == Person.email,
                    ),
                ),
            ),
        )
    )
    claimed = select(Message.claimed_id, Message.ticket_id).where(
        Message.claimed_id.in_(ids),
        Message.kind != "bounce",
        Message.from_addr == bindparam("sender"),
    )
    return Hot(minted), Hot(stored), Hot(claimed)


@dataclass(frozen=True)
class ThreadKey:
    """A stored Message-ID that leads to a ticket. `minted`: one maildesk sent to the
    ticket's customer side, which only its recipients know: a secret. One it sent to
    agents only is a key, not that secret: a former agent (or whoever an agent
    forwarded the notification to) holds it too."""

    ticket_id: int
    minted: bool


@dataclass(frozen=True)
class NewMessage:
    """What the domain needs to record one message, inbound or outbound."""

    message_id: str
    direction: str
    kind: str
    from_addr: str
    from_name: str
    subject: str
    body_text: str
    created_at: datetime
    to_addrs: tuple[str, ...] = ()
    cc_addrs: tuple[str, ...] = ()
    body_html: str = ""
    references: tuple[str, ...] = ()
    thread_rule: str | None = None
    inbound_id: int | None = None
    attachments: tuple[tuple[str, str, bytes], ...] = ()  # (filename, content type, data)
    internal: bool = False
    flag: str = ""
    # How the sender was proven (see pipeline/trust.py); "" = not proven.
    proof: str = ""
    # search.document(subject, body_text), when it was made ahead, outside the
    # write transaction (pipeline/prepare.py); None: made here.
    search_document: str | None = None
    # The Message-ID the mail gave, when it is stored under one of its own (`Message`).
    claimed_id: str | None = None


@dataclass(frozen=True)
class StoredAs:
    """Who a stored Message-ID belongs to (`Tickets.stored_as`)."""

    direction: str
    sender: str
    kind: str


class Tickets:
    def __init__(self, session: Session) -> None:
        self.session = session

    @property
    def _rows(self) -> Connection:
        """The session's connection, for Core inserts of rows no ORM object stands for:
        they need none of the ORM's execution machinery (nor a flush before them, as
        what they refer to is written already)."""
        return connection_of(self.session)

    # -- people -------------------------------------------------------------

    def person(self, email: str, name: str, now: datetime, *, proven: bool | None = None) -> Person:
        """The person of `email`, made when new (named `name`).

        `proven`: None when `name` is not their own word (an address copied in, a
        phone intake, an invitation): it names only a new person. True or False when
        it is the display name of their own mail, which proved its sender or not; a
        new person's name then records that, and `_renamed` says what it may replace."""
        email = email.lower()
        row = _PERSON.first(self._rows, {"email": email})
        if row is None:
            # Two workers may meet a new sender at once: the later insert does nothing
            # (on PostgreSQL it waits for the earlier one's commit) and reads that row,
            # instead of failing on the unique email and retrying the whole message.
            source = NameSource.PROVEN if proven else NameSource.UNPROVEN
            self._rows.execute(
                _insert_ignoring_duplicate(self.session, Person, "email"),
                {"email": email, "name": name, "name_source": source.value, "created_at": now},
            )
            row = _PERSON.first(self._rows, {"email": email})
            assert row is not None
        found = self._loaded_person(email, row)
        if proven is not None and _renamed(found.name, found.name_source, name, proven=proven):
            found.name, found.name_source = name, NameSource.PROVEN.value
        return found

    def set_name(self, person: Person, name: str) -> str:
        """The name `person` or an admin typed (portal, `maildesk people name`), made fit
        for a header; no mail replaces it. Returns it as stored."""
        cleaned = clean_text(name)[:NAME_LENGTH].strip()
        person.name, person.name_source = cleaned, NameSource.SET.value
        return cleaned

    def name_from_mail(self, person: Person) -> None:
        """Hand `person`'s name back to mail (`maildesk people name --from-mail`): it stays
        as it is until mail that proves its sender brings another, as a name that
        unproven mail gave does."""
        person.name_source = NameSource.UNPROVEN.value

    def _loaded_person(self, email: str, row: tuple[Any, ...]) -> Person:
        """The session's `Person` for `row`, made as if the ORM had loaded it.

        Every processed message looks up its sender: read on the driver's cursor, this
        costs half of what `session.scalar(select(Person))` did. No person is ever
        an ORM insert, so the row read is the one stored; one this session holds
        already (maybe changed, not yet flushed) is the one returned.
        """
        held = self.session.identity_map.get(identity_key(Person, row[0]))
        if held is not None:
            return cast(Person, held)
        person = _as_loaded(
            Person, {"email": email, **dict(zip(_PERSON_COLUMNS, row, strict=True))}
        )
        make_transient_to_detached(person)  # `created_at` loads when first read
        self.session.add(person)
        return person

    def lock_new_people(self, emails: Iterable[str]) -> None:
        """On PostgreSQL, lock those of `emails` that are nobody yet, in one order, for
        the rest of this transaction: call it before the transaction locks any row.

        Two workers whose transactions meet new senders X and Y in opposite orders
        would each insert one person and wait for the other's insert: a deadlock
        (bench/scaleout.py met it with two instances, every time). Locked up front in
        the order of their keys, the later transaction waits for the earlier one's
        commit instead. An address that is a person already takes no lock, so mail
        from known people never waits here. SQLite has one writer: nothing to do.
        """
        if self.session.get_bind().dialect.name != "postgresql":
            return
        addresses = sorted({email.lower() for email in emails})
        if addresses:
            values = {"class": _NEW_PERSON_CLASS, "addresses": addresses}
            self._rows.execute(_LOCK_NEW_PEOPLE, values).all()

    def is_participant(self, ticket_id: int, email: str) -> bool:
        values = {"ticket_id": ticket_id, "email": email.lower()}
        return _IS_PARTICIPANT.first(self._rows, values) is not None

    def others_take_part(self, ticket: Ticket) -> bool:
        """Whether anyone besides the requester takes part in `ticket` (was sent its mail)."""
        others = select(Participant.person_id).where(
            Participant.ticket_id == ticket.id, Participant.person_id != ticket.requester_id
        )
        return self.session.execute(others.limit(1)).first() is not None

    def add_participants(
        self,
        ticket: Ticket,
        emails: Iterable[tuple[str, str | None]],
        now: datetime,
        limit: int | None = None,
        proven: bool = True,
    ) -> list[str]:
        """Make people participants (role cc); the requester never changes.

        Each name is the display name of that person's own mail (only verified mail
        adds anyone), or None: an address someone else gave (a Cc, an agent's `#cc`).
        `proven`: that mail proved who wrote it (`trust.proves_writer`), so its name
        may rename them; otherwise it names only someone new. With `limit`, nobody new
        joins a ticket that has that many participants: the addresses left out are
        returned.
        """
        rows = _PARTICIPANTS.all(self._rows, {"ticket_id": ticket.id})
        existing = {person_id for person_id, _email, _name, _source in rows}
        taking_part = {email: (name, source) for _person_id, email, name, source in rows}
        left_out: list[str] = []
        for email, name in emails:
            email = email.lower()
            # Most mail is from people taking part already: nothing to look up, unless
            # it changes their name (what `person` would record).
            if email in taking_part:
                stored, source = taking_part[email]
                if name is None or not _renamed(stored, source, name, proven=proven):
                    continue
            if email not in taking_part and limit is not None and len(existing) >= limit:
                left_out.append(email)
                continue
            own = None if name is None else proven
            person = self.person(email, name or "", now, proven=own)
            if person.id not in existing:
                _INSERT_PARTICIPANT.run(
                    self._rows, {"ticket_id": ticket.id, "person_id": person.id, "role": "cc"}
                )
                existing.add(person.id)
        return left_out

    def hand_over(self, ticket: Ticket, to: Person) -> None:
        """Make `to` the requester of `ticket`; the requester before stays in it (cc)."""
        previous = ticket.requester
        roles = {
            person_id: role
            for person_id, role in self.session.execute(
                select(Participant.person_id, Participant.role).where(
                    Participant.ticket_id == ticket.id
                )
            )
        }
        self.session.execute(
            update(Participant)
            .where(Participant.ticket_id == ticket.id, Participant.person_id == previous.id)
            .values(role="cc")
        )
        if to.id in roles:
            self.session.execute(
                update(Participant)
                .where(Participant.ticket_id == ticket.id, Participant.person_id == to.id)
                .values(role="requester")
            )
        else:
            _INSERT_PARTICIPANT.run(
                self._rows, {"ticket_id": ticket.id, "person_id": to.id, "role": "requester"}
            )
        ticket.requester = to

    # -- lookup -------------------------------------------------------------

    def get(self, number: int) -> Ticket | None:
        """The session's ticket `number`, as `session.get` would return it, locked
        for the rest of the transaction on PostgreSQL (see `_TICKET`).

        Read with its requester on the driver's cursor and handed to the session as
        if the ORM had loaded them (as `open` and `person` do): `session.get` cost a
        twentieth of processing a reply. Its owner, if any, loads when first read
        (unless the session holds that agent already), its messages and events too.
        """
        held = self.session.identity_map.get(identity_key(Ticket, number))
        if held is not None:
            return cast(Ticket, held)
        row = _TICKET.first(self._rows, {"number": number})
        if row is None:
            return None
        values = dict(zip(_TICKET_COLUMNS, row, strict=False))
        email, *person = row[len(_TICKET_COLUMNS) :]
        ticket = _as_loaded(Ticket, values)
        ticket.requester = self._loaded_person(email, tuple(person))
        owner_id = values["owner_id"]
        owner = (
            None
            if owner_id is None
            else self.session.identity_map.get(identity_key(Agent, owner_id))
        )
        if owner_id is None or owner is not None:
            ticket.owner = cast(Agent | None, owner)
        make_transient_to_detached(ticket)
        self.session.add(ticket)
        return ticket

    def message_exists(self, message_id: str) -> bool:
        return _MESSAGE_EXISTS.first(self._rows, {"mid": message_id}) is not None

    def stored_as(self, message_id: str) -> StoredAs | None:
        """The stored message with this Message-ID, if any."""
        row = _STORED_AS.first(self._rows, {"mid": message_id})
        return None if row is None else StoredAs(row[0], row[1], row[2])

    def contest(self, message_id: str) -> None:
        """Another sender's mail came with `message_id`: it threads nothing from now on."""
        self.session.execute(
            update(Message).where(Message.message_id == message_id).values(contested=True)
        )

    def stored_text(self, message_id: str) -> str:
        """The text stored for the message with this Message-ID ("" if none)."""
        text = self.session.scalar(
            select(Message.body_text).where(Message.message_id == message_id).limit(1)
        )
        return text or ""

    def thread_key(self, ids: Sequence[str], sender: str) -> ThreadKey | None:
        """The ticket of the first of `ids` (nearest first) that may thread mail.

        Keys are the Message-IDs maildesk minted (only their recipients know them),
        and those of stored messages whose sender was proven, or who is the same
        person writing now, or who is the ticket's requester. A bounce's own
        Message-ID, or a stranger's, is never a key: whoever chose it could
        otherwise lead mail into someone else's ticket. An id two senders used
        (`contested`, or `claimed_id` by the one stored under an id of its own) leads
        only each one's own mail, to that one's message.
        """
        if not ids:
            return None
        found: dict[str, ThreadKey] = {}
        minted, stored, claimed = _thread_keys(len(ids))
        values = {f"id{i}": mid for i, mid in enumerate(ids)}
        sending = {**values, "sender": sender.lower()}
        for mid, tid, direction in stored.all(self._rows, sending):
            found.setdefault(mid, ThreadKey(tid, minted=direction == "out"))
        # Mail we sent to agents is only in the outbox; replies to it thread too.
        for mid, tid in minted.all(self._rows, values):
            if tid is not None:
                found.setdefault(mid, ThreadKey(tid, minted=False))
        if ids[0] not in found:  # a reply to our mail, the usual case, needs no more
            for mid, tid in claimed.all(self._rows, sending):
                found.setdefault(mid, ThreadKey(tid, minted=False))
        return next((found[mid] for mid in ids if mid in found), None)

    def referencing(
        self,
        message_id: str,
        sender: str,
        addressed: Iterable[str] = (),
        *,
        any_writer: bool = False,
    ) -> int | None:
        """The ticket of a stored message that answers `message_id` (it arrived first).

        Only a message that could itself be a key counts (see `thread_key`), and only
        one that could answer this mail: its ticket is the sender's own (her follow-up
        came first), or it is from someone this mail was addressed to (`addressed`:
        its To and Cc; a colleague's reply-all came first). A proof is its writer's,
        for the writer's own ticket: a stranger who wrote `In-Reply-To: <the id he
        expects>` to his own ticket's reply address took the victim's mail, when it
        came, into his ticket, and the agents' answers to her went to him.
        `any_writer`: an imported archive's reply leads its original, whoever wrote it
        (replies imported only: not a stranger's trap laid by live mail).
        """
        values = {"mid": message_id, "sender": sender.lower()}
        if any_writer:
            found: int | None = _REFERENCING_ARCHIVE.scalar(self._rows, values)
            if found is not None:
                return found
        found = _REFERENCING_OWN.scalar(self._rows, values)
        if found is not None:
            return found
        recipients = list(dict.fromkeys(address.lower() for address in addressed))
        recipients = recipients[:_ADDRESSED]
        if not recipients:
            return None
        those = {f"a{i}": address for i, address in enumerate(recipients)}
        found = _referencing_from(len(recipients)).scalar(self._rows, {**values, **those})
        return found

    def opened_answering(self, ticket: Ticket, message_id: str, sender: str) -> bool:
        """Whether `ticket` was opened by its requester's reply to `message_id`,
        written To `sender`: the mail `sender` wrote, which the reply answered."""
        first = self.session.execute(
            select(Message.id, Message.from_addr, Message.to_addrs)
            .where(Message.ticket_id == ticket.id, Message.direction == "in")
            .order_by(Message.id)
            .limit(1)
        ).first()
        if first is None or first.from_addr.lower() != ticket.requester.email:
            return False
        if sender.lower() not in {address.lower() for address in first.to_addrs or ()}:
            return False
        named = select(MessageRef.message_pk).where(
            MessageRef.message_pk == first.id, MessageRef.ref_id == message_id
        )
        return self.session.execute(named).first() is not None

    # -- changes ------------------------------------------------------------

    def open(
        self,
        requester: Person,
        subject: str,
        language: str,
        now: datetime,
        previous: Ticket | None = None,
        *,
        sender_proven: bool = True,
    ) -> Ticket:
        """A new ticket. `sender_proven`: False for one opened by mail that did not prove
        its From (anyone may have written it); our own side's tickets are proven."""
        values: dict[str, Any] = {
            "subject": subject,
            "status": TicketStatus.NEW,
            "type": None,
            "priority": "normal",
            "requester_id": requester.id,
            "language": language,
            "created_at": now,
            "updated_at": now,
            "closed_at": None,
            "previous_id": previous.id if previous else None,
            "owner_id": None,
            "resolved_at": None,
            "channel": "email",
            "paid_state": None,
            "paid_note": "",
            "paid_round": 0,
            "filed_quietly": False,
            "sender_proven": sender_proven,
            "reply_window_at": None,
            "replies_in_window": 0,
            "unproven_window_at": None,
            "unproven_in_window": 0,
        }
        # A Core insert, then the ORM is handed the row as if it had loaded it: a new
        # ticket per message through the unit of work cost more than the statement.
        # (A column missing from `values` would be read back when first used.)
        pk = _INSERT_TICKET.scalar(self._rows, values)
        ticket = _as_loaded(Ticket, {"id": pk, **values})
        ticket.requester, ticket.owner = requester, None
        make_transient_to_detached(ticket)
        self.session.add(ticket)
        _INSERT_PARTICIPANT.run(
            self._rows, {"ticket_id": ticket.id, "person_id": requester.id, "role": "requester"}
        )
        return ticket

    def closed_too_long(self, ticket: Ticket, now: datetime, reopen_days: int) -> bool:
        closed_at = as_utc(ticket.closed_at or ticket.updated_at)
        return now - closed_at > timedelta(days=reopen_days)

    def add_message(self, ticket: Ticket, new: NewMessage) -> int:
        """Store one message of `ticket`; returns its primary key.

        Core inserts, not ORM objects: this runs for every message in and out, and
        the unit of work cost more than the statements. Nothing reads a `Message`
        of this transaction through the ORM afterwards.
        """
        values = {
            "ticket_id": ticket.id,
            "message_id": new.message_id,
            "direction": new.direction,
            "kind": new.kind,
            "from_addr": new.from_addr,
            "from_name": new.from_name,
            "to_addrs": list(new.to_addrs),
            "cc_addrs": list(new.cc_addrs),
            "subject": new.subject,
            "body_text": new.body_text,
            "body_html": new.body_html,
            "created_at": new.created_at,
            "thread_rule": new.thread_rule,
            "inbound_id": new.inbound_id,
            "internal": new.internal,
            "flag": new.flag,
            "proof": new.proof,
            "contested": False,
            "claimed_id": new.claimed_id,
        }
        pk = int(_INSERT_MESSAGE.scalar(self._rows, values))
        # The search index is written in the same transaction: it never lags the messages.
        index_message(
            self._rows,
            pk,
            new.direction,
            new.kind,
            new.subject,
            new.body_text,
            new.search_document,
        )
        refs = [ref for ref in dict.fromkeys(new.references) if ref != new.message_id]
        if refs:
            _INSERT_REF.run_many(self._rows, [{"message_pk": pk, "ref_id": ref} for ref in refs])
        for filename, content_type, data in new.attachments:
            self.session.add(
                Attachment(
                    message_pk=pk,
                    blob_sha256=self._blob(data),
                    filename=filename,
                    content_type=content_type,
                    size=len(data),
                )
            )
        if ticket.updated_at != new.created_at:
            # Core too, and the loaded ticket told it as already saved: an ORM change
            # here made every message's savepoint run a unit of work for one column.
            _TOUCH_TICKET.run(self._rows, {"ticket_id": ticket.id, "at": new.created_at})
            set_committed_value(ticket, "updated_at", new.created_at)
        return pk

    def _blob(self, data: bytes) -> str:
        """Store `data` once, however often it is attached; returns its key."""
        sha = hashlib.sha256(data).hexdigest()
        # The key alone: a stored copy is not read back to learn that it exists.
        if self._rows.execute(_BLOB_EXISTS, {"sha": sha}).first() is None:
            rawbytes.write_blob(self._rows, sha, data)
        return sha


_Loaded = TypeVar("_Loaded", Person, Ticket)


def _as_loaded(model: type[_Loaded], values: dict[str, Any]) -> _Loaded:
    """A new instance of `model` holding the column `values` as the ORM's loading puts
    them, in its dict, without the attribute event per column its constructor fires:
    the caller hands it to `make_transient_to_detached`, which makes them its committed
    state either way. Those events were about 2 % of processing's instructions (a new
    ticket, its requester, a reply's ticket). `class_mapper` configures the mappers if
    nothing has yet, so that its relationships are instrumented when set."""
    instance = class_mapper(model).class_manager.new_instance()
    instance.__dict__.update(values)
    return cast(_Loaded, instance)


def _renamed(stored: str, source: str, said: str, *, proven: bool) -> bool:
    """Does mail From a known person, whose display name is `said`, replace their name
    `stored` (from `source`)? Unproven mail never does: anyone can write a From. Proven
    mail replaces a name from unproven mail, even with none (a forger's first mail
    named them, and their own client sends no name), or with the same one (now proven
    theirs: our mail names nobody by a name only unproven mail gave), and fills in an
    empty one from proven mail; it never replaces one from proven mail (which the holder
    of a ticket's secret, say a colleague in Cc, could otherwise rename), nor one typed
    by the person or an admin. A portal reply carries the stored name: it vouches for
    nothing."""
    if not proven:
        return False
    if source == NameSource.UNPROVEN:
        return True
    return source == NameSource.PROVEN and not stored and said != stored


def _insert_ignoring_duplicate(session: Session, model: type[Person], unique: str) -> Any:
    """INSERT … ON CONFLICT (unique) DO NOTHING in the session's SQL dialect."""
    table = cast(Table, model.__table__)
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing(index_elements=[unique])
    return sqlite.insert(table).on_conflict_do_nothing(index_elements=[unique])
