"""Outbox claims are short leases a live sender renews (the inbound spool's code).

Two senders on one database stand for two instances (or a killed one and its
restart on PostgreSQL, where nothing frees claims at start-up): a sender busy
with a slow relay keeps its rows however long it takes, and the rows of a sender
that died are sent by the other one within one lease (30 s), each once.
Time moves on a ManualClock; renewals are watched through the database.
"""

from __future__ import annotations

import email
import email.policy
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pytest
from sqlalchemy import insert, update

from maildesk.clock import ManualClock, as_utc
from maildesk.leases import LEASE
from maildesk.models import Outbox
from maildesk.outbound import outbox as outbox_module
from maildesk.outbound.outbox import OutboxSender
from maildesk.outbound.transport import Transport, open_transport
from maildesk.services import Services
from tests.conftest import PG_URL, make_mail, wait_for
from tests.helpers import outbox_rows, outbox_values, receive, sqlite_plans
from tests.smtp_sink import SmtpSink

HOSTNAME = "test.host"
# Renew every few milliseconds of real time, so a renewal is observed within a wait_for.
RENEW_OFTEN = 0.01


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as running:
        yield running


def queue_acknowledgements(services: Services, count: int) -> list[str]:
    """`count` customers write in; returns the Message-IDs of their queued acknowledgements."""
    for i in range(count):
        receive(
            services,
            make_mail(sender=f"Customer {i} <c{i}@customer.test>", message_id=f"<l{i}@c.test>"),
            mail_from=f"c{i}@customer.test",
        )
    return [r.message_id for r in outbox_rows(services)]


def sent_ids(sink: SmtpSink) -> Counter[str]:
    return Counter(
        str(email.message_from_bytes(m.content, policy=email.policy.default)["Message-ID"]).strip(
            "<>"
        )
        for m in sink.messages
    )


class Killed(BaseException):
    """The process died here: nothing after this point ran."""


@dataclass
class SlowRelay:
    """A real relay that takes `steps` × 20 s (on the test's clock) to answer each message.

    While it "waits", another instance tries to claim: it must find nothing, because
    the sender holding the rows renews their leases.
    """

    transport: Transport
    services: Services
    clock: ManualClock
    rival: OutboxSender
    steps: int = 3
    rival_took: list[int] = field(default_factory=list)

    def send(
        self, key: str, sender: str, recipients: Sequence[str], data: bytes, head: bytes = b""
    ) -> None:
        for _ in range(self.steps):
            self.clock.advance(timedelta(seconds=20))
            wait_for(self._renewed, 10, "the live sender to renew its leases")
            self.rival_took.append(self.rival.send_due())
        self.transport.send(key, sender, recipients, data)

    def _renewed(self) -> bool:
        """Every row still claimed is leased beyond the clock's present moment."""
        now = self.clock.now()
        held = [r for r in outbox_rows(self.services) if r.state == "pending" and r.claim]
        return bool(held) and all(as_utc(r.next_attempt_at) > now for r in held)

    @property
    def idempotent(self) -> bool:
        return self.transport.idempotent

    def flush(self) -> None:
        self.transport.flush()

    def close(self) -> None:
        self.transport.close()


@dataclass
class DiesWhileSending:
    """A sender process SIGKILLed in the middle of its first conversation with the relay."""

    idempotent = False

    def send(
        self, key: str, sender: str, recipients: Sequence[str], data: bytes, head: bytes = b""
    ) -> None:
        raise Killed

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_a_live_sender_keeps_its_claims_past_the_lease_while_the_relay_is_slow(
    services: Services, clock: ManualClock, sink: SmtpSink
) -> None:
    queued = queue_acknowledgements(services, 2)
    settings = services.settings.outbound
    rival = OutboxSender(services.db, open_transport(sink.url, HOSTNAME), clock, settings)
    relay = SlowRelay(open_transport(sink.url, HOSTNAME), services, clock, rival)
    busy = OutboxSender(services.db, relay, clock, settings, renew_every=RENEW_OFTEN)

    started = clock.now()
    assert busy.send_due() == 2
    relay.close()
    rival.transport.close()

    # Two messages × 60 s each, far past one 30 s lease, and the rival never took one.
    assert clock.now() - started == 4 * LEASE
    assert relay.rival_took == [0] * 6
    assert sent_ids(sink) == Counter({mid: 1 for mid in queued})
    rows = outbox_rows(services)
    assert [(r.state, r.attempts, r.claim) for r in rows] == [("sent", 1, None)] * 2


def test_a_dead_senders_claims_are_sent_by_another_instance_within_one_lease(
    services: Services, clock: ManualClock, sink: SmtpSink
) -> None:
    queued = queue_acknowledgements(services, 5)
    settings = services.settings.outbound
    dead = OutboxSender(services.db, DiesWhileSending(), clock, settings)
    with pytest.raises(Killed):
        dead.send_due()  # claimed all five, then the process died: no one renews them

    other = OutboxSender(services.db, open_transport(sink.url, HOSTNAME), clock, settings)
    clock.advance(LEASE - timedelta(seconds=1))
    assert other.send_due() == 0  # still leased: nobody sends them twice meanwhile
    clock.advance(timedelta(seconds=1))
    assert LEASE <= timedelta(seconds=30)
    assert other.send_due() == 5
    other.transport.close()

    assert sent_ids(sink) == Counter({mid: 1 for mid in queued})
    assert [(r.state, r.attempts) for r in outbox_rows(services)] == [("sent", 2)] * 5


def test_a_sender_that_lost_its_lease_does_not_mark_the_new_owners_row(
    services: Services, clock: ManualClock, sink: SmtpSink
) -> None:
    # A sender that hung past its lease (renewals failing) finishes late: its write names
    # a token that is no longer the row's, so the new owner's state stands.
    [queued] = queue_acknowledgements(services, 1)
    settings = services.settings.outbound
    stale = OutboxSender(services.db, open_transport(sink.url, HOSTNAME), clock, settings)
    token, [claimed] = stale.claim(10)
    clock.advance(LEASE)
    fresh = OutboxSender(services.db, open_transport(sink.url, HOSTNAME), clock, settings)
    sink.reply = "451 4.3.0 try later"
    assert fresh.send_due() == 1  # deferred by the new owner, claim given up
    sink.reply = None
    with services.db.reading_connection() as reader:
        assert stale._send(reader, claimed, token)  # the hung sender wakes up and sends,
    stale._mark_sent([claimed.id], token)  # then marks the row it no longer owns
    stale.transport.close()
    fresh.transport.close()

    [row] = outbox_rows(services)
    assert (row.state, row.last_error) == ("pending", "451 4.3.0 try later")
    assert sent_ids(sink) == Counter({queued: 1})


# --- a backlog: which rows a claim takes, and what it reads ---------------------------


def queue_due_at(services: Services, moments: Sequence[datetime]) -> list[int]:
    """Outbox rows, in this order, each due at its moment; their ids."""
    with services.db.transaction() as session:
        rows = [
            {**outbox_values(i, "pending", moment), "created_at": moment}
            for i, moment in enumerate(moments)
        ]
        session.execute(insert(Outbox), rows)
    return [row.id for row in outbox_rows(services)]


def test_a_claim_takes_the_mail_due_longest_first(services: Services, clock: ManualClock) -> None:
    """A deferred row waits for its retry, whatever its id; a row whose retry came due
    before newer mail went out goes first; rows due at one moment go in queue order."""
    now = clock.now()
    deferred, fresh, retried, fresh_too = queue_due_at(
        services, [now + timedelta(minutes=5), now, now - timedelta(minutes=1), now]
    )
    token, claimed = services.sender().claim(10)
    assert [row.id for row in claimed] == [retried, fresh, fresh_too]
    assert deferred not in [row.id for row in claimed]


@pytest.mark.skipif(bool(PG_URL), reason="reads SQLite's query plans")
def test_a_claim_reads_no_more_of_a_backlog_than_it_takes(
    services: Services, clock: ManualClock
) -> None:
    """After a relay outage thousands of rows wait. Claimed in id order, every claim of
    ten read and sorted all of them, holding the write lock that accepting mail waits
    for. The claim walks the state index in due order and stops after the ten."""
    now = clock.now()
    ids = queue_due_at(services, [now - timedelta(seconds=3000 - i) for i in range(3000)])
    taken: list[list[int]] = []
    sender = services.sender()
    plans = sqlite_plans(
        services, lambda: taken.append([r.id for r in sender.claim(10)[1]]), "outbox"
    )
    assert taken == [ids[:10]]
    due_order = re.compile(
        r"SEARCH outbox USING (COVERING )?INDEX ix_outbox_state_next "
        r"\(state=\? AND next_attempt_at<\?\)"
    )
    claim = [plan for plan, statement in plans if statement.lstrip().startswith("SELECT")]
    assert claim and all(due_order.fullmatch(plan) for plan in claim), plans


# --- a sender that stalled, and an operator's retry ---------------------------------------


def test_a_sender_that_lost_its_lease_starts_no_conversation_about_a_row_it_lost(
    services: Services, second: Services, clock: ManualClock, sink: SmtpSink
) -> None:
    """Sender A claims two rows; during its first conversation its process stalls past
    the lease (SIGSTOP, a paused VM, a starved CPU): nothing renews. Sender B claims
    both, sends and marks them. A resumes: its first message was on the wire (SMTP's
    own window), but it went on to send the second, which it had lost a lease ago."""
    first, second_row = queue_acknowledgements(services, 2)
    settings = services.settings.outbound
    with SmtpSink() as other_relay:
        a = OutboxSender(services.db, open_transport(sink.url, HOSTNAME), clock, settings)
        b = OutboxSender(second.db, open_transport(other_relay.url, HOSTNAME), clock, settings)
        b_sent: list[int] = []

        def stall_then_rival() -> None:
            sink.on_data = None  # at A's first DATA only
            clock.advance(LEASE + timedelta(seconds=1))
            b_sent.append(b.send_due())

        sink.on_data = stall_then_rival
        assert a.send_due() == 2
        a.transport.close()
        b.transport.close()
        sent = sent_ids(sink) + sent_ids(other_relay)

    assert b_sent == [2]
    assert [r.state for r in outbox_rows(services)] == ["sent", "sent"]
    assert sent == Counter({first: 2, second_row: 1})  # only the one on the wire, twice


def test_a_sender_whose_lease_ran_out_unclaimed_renews_it_and_sends(
    services: Services, clock: ManualClock, sink: SmtpSink
) -> None:
    """Stalled past its lease with nobody claiming meanwhile, a sender keeps its rows: it
    renews the lease before its next conversation, so no rival can take the row then."""
    queued = queue_acknowledgements(services, 2)
    settings = services.settings.outbound
    sender = OutboxSender(services.db, open_transport(sink.url, HOSTNAME), clock, settings)

    def stall() -> None:
        sink.on_data = None
        clock.advance(LEASE + timedelta(seconds=1))

    sink.on_data = stall
    assert sender.send_due() == 2
    sender.transport.close()

    assert sent_ids(sink) == Counter({mid: 1 for mid in queued})
    assert [(r.state, r.attempts) for r in outbox_rows(services)] == [("sent", 1)] * 2


def test_an_operators_retry_of_a_row_on_the_wire_changes_nothing(
    services: Services, clock: ManualClock, sink: SmtpSink
) -> None:
    """`maildesk outbox retry ID` of a deferred row whose next attempt is on the wire: the
    retry cleared its claim, the relay's 250 then found the row no longer the sender's
    and left it due, and the same sender sent it again. The retry is refused now."""
    [queued] = queue_acknowledgements(services, 1)
    settings = services.settings.outbound
    sender = OutboxSender(services.db, open_transport(sink.url, HOSTNAME), clock, settings)
    sink.reply = "451 4.3.0 try later"
    assert sender.send_due() == 1  # deferred: pending, with its error
    sink.reply = None
    [row] = outbox_rows(services)
    clock.advance(timedelta(minutes=5))  # its retry is due; the sender claims it

    refused: list[str] = []

    def operator_retries() -> None:  # the relay is slow: `outbox list` shows it deferred
        sink.on_data = None
        with pytest.raises(outbox_module.Sending) as caught:
            outbox_module.retry(services.db, clock, row.id)
        refused.append(str(caught.value))

    sink.on_data = operator_retries
    assert sender.send_due() == 1
    assert sender.send_due() == 0  # the sender's next round finds nothing due
    sender.transport.close()

    assert refused == [f"outbox {row.id} is being sent right now"]
    assert sent_ids(sink) == Counter({queued: 1})
    assert [r.state for r in outbox_rows(services)] == ["sent"]
    # Once its lease has run out (its sender died), a claimed row is retried as ever.
    with services.db.transaction() as session:
        session.execute(
            update(Outbox).values(state="pending", claim="dead", next_attempt_at=clock.now())
        )
    clock.advance(timedelta(seconds=1))
    assert outbox_module.retry(services.db, clock, row.id)
