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
from sqlalchemy import insert

from maildesk.clock import ManualClock, as_utc
from maildesk.leases import LEASE
from maildesk.models import Outbox
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
