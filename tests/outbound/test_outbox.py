"""The outbox against a real relay: back-off while it is down, 4xx and 5xx replies, a crash
between sending and marking sent, and envelopes a customer's text cannot extend.

Acknowledgements are queued the way production queues them (customer mail through the
pipeline); time moves on the test's ManualClock, never by sleeping.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import json
import re
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select, text

from maildesk.cli import main
from maildesk.clock import ManualClock, as_utc
from maildesk.db import Database
from maildesk.models import Outbox
from maildesk.outbound.outbox import LEASE, Handoff, OutboxSender, retry
from maildesk.outbound.transport import Transport, open_transport
from maildesk.services import Services
from tests.conftest import PG_URL, make_mail, wait_for
from tests.helpers import outbox_rows, receive
from tests.smtp_sink import SmtpSink, closed_port

HOSTNAME = "test.host"


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as running:
        yield running


def sender_to(services: Services, clock: ManualClock, url: str) -> OutboxSender:
    return OutboxSender(
        services.db, open_transport(url, HOSTNAME), clock, services.settings.outbound
    )


def maildir_url(services: Services) -> str:
    return services.settings.outbound.url


def queue_acknowledgements(services: Services, count: int) -> list[Outbox]:
    """`count` customers write in; each gets an acknowledgement queued in the outbox."""
    for i in range(count):
        receive(
            services,
            make_mail(sender=f"Customer {i} <c{i}@customer.test>", message_id=f"<q{i}@c.test>"),
            mail_from=f"c{i}@customer.test",
        )
    rows = outbox_rows(services)
    assert [r.state for r in rows] == ["pending"] * count
    return rows


def parse(raw: bytes) -> EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)


def message_ids(contents: Sequence[bytes]) -> Counter[str]:
    return Counter(str(parse(c)["Message-ID"]).strip("<>") for c in contents)


def row(services: Services, outbox_id: int) -> Outbox:
    [found] = [r for r in outbox_rows(services) if r.id == outbox_id]
    return found


def maildir_files(services: Services) -> list[Path]:
    return sorted((Path(maildir_url(services).removeprefix("maildir:")) / "new").iterdir())


# --- the relay is down, then up -------------------------------------------------------


def test_relay_down_for_an_hour_backs_off_then_delivers_each_message_once(
    services: Services, clock: ManualClock
) -> None:
    outbound = services.settings.outbound
    assert (outbound.retry_base_seconds, outbound.retry_max_seconds) == (30, 900)
    queued = queue_acknowledgements(services, 3)
    delays: dict[int, list[float]] = {r.id: [] for r in queued}
    started = clock.now()

    with closed_port() as port:
        down = sender_to(services, clock, f"smtp://127.0.0.1:{port}")
        while clock.now() - started <= timedelta(hours=1):
            tried = {r.id: r.attempts for r in outbox_rows(services)}
            down.send_due()
            for r in outbox_rows(services):
                assert r.state == "pending" and r.sent_at is None
                if r.attempts > tried[r.id]:
                    assert "refused" in r.last_error.lower(), r.last_error
                    delays[r.id].append((as_utc(r.next_attempt_at) - clock.now()).total_seconds())
            clock.advance(timedelta(minutes=5))
        down.transport.close()

    # Tried at 0, 5, 10, 15, 20, 30, 45 and 60 minutes: doubling from 30 s, capped at 15 min.
    expected = [30.0, 60.0, 120.0, 240.0, 480.0, 900.0, 900.0, 900.0]
    assert delays == {r.id: expected for r in queued}
    assert all(r.attempts == len(expected) for r in outbox_rows(services))

    with SmtpSink() as relay:
        up = sender_to(services, clock, relay.url)
        # The relay being back does not cut the back-off short: the next try is at 75 min.
        assert up.send_due() == 0
        due = up.next_due()
        assert due == started + timedelta(minutes=75)
        clock.advance(due - clock.now())
        while up.send_due():
            pass
        up.transport.close()
        received = relay.messages

    assert message_ids([m.content for m in received]) == Counter({r.message_id: 1 for r in queued})
    assert sorted(m.rcpt_tos for m in received) == [(f"c{i}@customer.test",) for i in range(3)]
    assert all(m.mail_from == "support@example.test" for m in received)
    rows = outbox_rows(services)
    assert [(r.state, r.last_error) for r in rows] == [("sent", "")] * 3
    assert [as_utc(r.sent_at) for r in rows if r.sent_at] == [clock.now()] * 3


# --- what the relay answers -----------------------------------------------------------


def test_451_defers_with_the_reason_and_a_later_try_succeeds(
    services: Services, clock: ManualClock, sink: SmtpSink
) -> None:
    [queued] = queue_acknowledgements(services, 1)
    sender = sender_to(services, clock, sink.url)
    sink.reply = "451 4.7.1 greylisted, try again later"

    assert sender.send_due() == 1
    deferred = row(services, queued.id)
    assert deferred.state == "pending"
    assert deferred.last_error == "451 4.7.1 greylisted, try again later"
    assert as_utc(deferred.next_attempt_at) == clock.now() + timedelta(seconds=30)
    assert sink.messages == []

    sink.reply = None
    clock.advance(timedelta(seconds=29))
    assert sender.send_due() == 0  # not yet due
    clock.advance(timedelta(seconds=1))
    assert sender.send_due() == 1
    sender.transport.close()

    assert message_ids([m.content for m in sink.messages]) == Counter({queued.message_id: 1})
    sent = row(services, queued.id)
    assert (sent.state, sent.last_error, sent.attempts) == ("sent", "", 2)


def test_550_fails_for_good_and_retry_sends_it(
    services: Services, clock: ManualClock, sink: SmtpSink, config_file: Path
) -> None:
    [queued] = queue_acknowledgements(services, 1)
    sender = sender_to(services, clock, sink.url)
    sink.reply = "550 5.7.1 message rejected as spam"

    assert sender.send_due() == 1
    failed = row(services, queued.id)
    assert (failed.state, failed.last_error) == ("failed", "550 5.7.1 message rejected as spam")

    sink.reply = None
    clock.advance(timedelta(days=3))
    assert sender.send_due() == 0  # never retried on its own
    assert row(services, queued.id).attempts == 1
    assert sink.messages == []

    # What an operator sees: `maildesk outbox list --json` names the row and the reason.
    listed = CliRunner().invoke(main, ["--config", str(config_file), "outbox", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    [shown] = json.loads(listed.stdout)
    assert shown["id"] == queued.id
    assert shown["state"] == "failed"
    assert shown["last_error"] == "550 5.7.1 message rejected as spam"
    assert shown["recipients"] == ["c0@customer.test"]

    # `maildesk outbox retry ID`, once the cause is fixed.
    assert retry(services.db, clock, queued.id)
    requeued = row(services, queued.id)
    assert (requeued.state, requeued.last_error) == ("pending", "")
    assert sender.send_due() == 1
    sender.transport.close()

    assert message_ids([m.content for m in sink.messages]) == Counter({queued.message_id: 1})
    assert row(services, queued.id).state == "sent"
    assert not retry(services.db, clock, queued.id)  # sent: nothing left to retry
    assert not retry(services.db, clock, queued.id + 1000)  # no such row
    listed = CliRunner().invoke(main, ["--config", str(config_file), "outbox", "list", "--json"])
    assert listed.exit_code == 0 and json.loads(listed.stdout) == []


# --- a crash in the middle of sending -------------------------------------------------


class Killed(BaseException):
    """The process died here: nothing after this point ran (not an Exception: not caught)."""


@dataclass
class DiesAfterSending:
    """A real transport in a process killed right after the transport's `sends`-th send
    returned, or (`in_flush`) when it is asked to make what it sent durable."""

    transport: Transport
    sends: int = 1
    in_flush: bool = False

    def send(
        self, key: str, sender: str, recipients: Sequence[str], data: bytes, head: bytes = b""
    ) -> None:
        self.transport.send(key, sender, recipients, data)
        self.sends -= 1
        if self.sends == 0 and not self.in_flush:
            raise Killed

    @property
    def idempotent(self) -> bool:
        return self.transport.idempotent

    def flush(self) -> None:
        if self.in_flush:
            raise Killed
        self.transport.flush()

    def close(self) -> None:
        self.transport.close()


def test_crash_after_claiming_sends_once_the_lease_is_over(
    services: Services, clock: ManualClock
) -> None:
    [queued] = queue_acknowledgements(services, 1)
    crashed = sender_to(services, clock, maildir_url(services))
    _token, claimed = crashed.claim(100)
    assert [c.id for c in claimed] == [queued.id]  # ... and the process dies

    restarted = sender_to(services, clock, maildir_url(services))
    clock.advance(LEASE - timedelta(seconds=1))
    assert restarted.send_due() == 0  # still leased: nobody sends it twice meanwhile
    assert maildir_files(services) == []
    clock.advance(timedelta(seconds=1))
    assert restarted.send_due() == 1

    [delivered] = maildir_files(services)
    assert str(parse(delivered.read_bytes())["Message-ID"]) == f"<{queued.message_id}>"
    assert (row(services, queued.id).state, row(services, queued.id).attempts) == ("sent", 2)


def test_crash_between_sending_and_marking_sent_leaves_one_file_in_the_maildir(
    services: Services, clock: ManualClock
) -> None:
    [queued] = queue_acknowledgements(services, 1)
    crashed = OutboxSender(
        services.db,
        DiesAfterSending(open_transport(maildir_url(services), HOSTNAME)),
        clock,
        services.settings.outbound,
    )
    with pytest.raises(Killed):
        crashed.send_due()
    [first] = maildir_files(services)
    assert row(services, queued.id).state == "pending"

    restarted = sender_to(services, clock, maildir_url(services))
    assert restarted.send_due() == 0
    clock.advance(LEASE)
    assert restarted.send_due() == 1  # sent again, under the same key

    assert maildir_files(services) == [first]
    assert str(parse(first.read_bytes())["Message-ID"]) == f"<{queued.message_id}>"
    assert row(services, queued.id).state == "sent"


def test_a_maildir_batch_marked_sent_in_one_commit_survives_a_crash_before_it(
    services: Services, clock: ManualClock
) -> None:
    # Over the Maildir, a claimed batch is written, then marked sent by one commit:
    # killed in between, the restarted sender finds every file there and writes none again.
    queued = queue_acknowledgements(services, 3)
    crashed = OutboxSender(
        services.db,
        DiesAfterSending(open_transport(maildir_url(services), HOSTNAME), in_flush=True),
        clock,
        services.settings.outbound,
    )
    with pytest.raises(Killed):
        crashed.send_due()
    delivered = maildir_files(services)
    assert len(delivered) == 3
    assert [r.state for r in outbox_rows(services)] == ["pending"] * 3

    restarted = sender_to(services, clock, maildir_url(services))
    clock.advance(LEASE)
    assert restarted.send_due() == 3

    assert maildir_files(services) == delivered
    assert message_ids([f.read_bytes() for f in delivered]) == Counter(
        {q.message_id: 1 for q in queued}
    )
    assert [r.state for r in outbox_rows(services)] == ["sent"] * 3


def test_over_smtp_each_row_is_marked_sent_as_the_relay_takes_it(
    services: Services, clock: ManualClock, sink: SmtpSink
) -> None:
    # A relay cannot tell a resend from a new message: killed after the second of three
    # conversations, only that second message goes out again, never the first.
    first, second, third = queue_acknowledgements(services, 3)
    crashed = OutboxSender(
        services.db,
        DiesAfterSending(open_transport(sink.url, HOSTNAME), sends=2),
        clock,
        services.settings.outbound,
    )
    with pytest.raises(Killed):
        crashed.send_due()
    crashed.transport.close()
    assert [r.state for r in outbox_rows(services)] == ["sent", "pending", "pending"]

    restarted = sender_to(services, clock, sink.url)
    clock.advance(LEASE)
    assert restarted.send_due() == 2
    restarted.transport.close()

    assert message_ids([m.content for m in sink.messages]) == Counter(
        {first.message_id: 1, second.message_id: 2, third.message_id: 1}
    )


def held_reads(db: Database) -> int:
    """Reads of the outbox's bytes still open on the database: PostgreSQL transactions
    left idle after one, or (SQLite) a snapshot that keeps a checkpoint from emptying
    the write-ahead log (then 1)."""
    if db.is_sqlite:
        path = db.engine.url.database
        assert path is not None
        with contextlib.closing(sqlite3.connect(path, timeout=0.2)) as other:
            busy, _log, _done = other.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return int(busy)
    with db.engine.connect() as conn:
        idle = conn.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND state = 'idle in transaction' AND query ILIKE '%FROM outbox_raw%'"
            )
        )
    return int(idle or 0)


def test_nothing_is_held_on_the_database_while_the_relay_takes_a_message(
    services: Services, clock: ManualClock, sink: SmtpSink
) -> None:
    """A batch's bytes are read message by message, and the read ends before the relay
    is asked: a slow relay keeps no transaction idle and stops no checkpoint."""
    queue_acknowledgements(services, 3)
    seen: list[int] = []
    sink.on_data = lambda: seen.append(held_reads(services.db))
    sender = sender_to(services, clock, sink.url)
    assert sender.send_due() == 3
    sender.transport.close()
    assert len(sink.messages) == 3
    assert seen == [0, 0, 0]


def test_crash_between_sending_and_marking_sent_over_smtp_repeats_the_message_id(
    services: Services, clock: ManualClock, sink: SmtpSink
) -> None:
    # The window the outbox documents: a relay cannot tell a resend from a new message,
    # so the recipient may get a second copy, but with the same Message-ID (clients merge).
    [queued] = queue_acknowledgements(services, 1)
    crashed = OutboxSender(
        services.db,
        DiesAfterSending(open_transport(sink.url, HOSTNAME)),
        clock,
        services.settings.outbound,
    )
    with pytest.raises(Killed):
        crashed.send_due()
    crashed.transport.close()

    restarted = sender_to(services, clock, sink.url)
    clock.advance(LEASE)
    assert restarted.send_due() == 1
    restarted.transport.close()

    assert message_ids([m.content for m in sink.messages]) == Counter({queued.message_id: 2})
    assert row(services, queued.id).state == "sent"


# --- a customer's text cannot add recipients ------------------------------------------


def raw_mail(from_header: bytes, subject: bytes, message_id: bytes = b"<m1@c.test>") -> bytes:
    """A customer's message with these header values exactly as a client wrote them."""
    return (
        b"From: " + from_header + b"\r\n"
        b"To: support@example.test\r\n"
        b"Subject: " + subject + b"\r\n"
        b"Message-ID: " + message_id + b"\r\n"
        b"Date: Mon, 05 Jan 2026 09:00:00 +0000\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"\r\n"
        b"Please help.\r\n"
    )


MALLORY = b"Mallory <mallory@customer.test>"


@pytest.mark.parametrize(
    ("sender_header", "subject"),
    [
        # Encoded words that decode to a line break and a Bcc header.
        pytest.param(MALLORY, b"=?UTF-8?Q?Help=0D=0ABcc:_evil@x.test?=", id="subject-q-crlf"),
        pytest.param(MALLORY, b"=?UTF-8?B?SGVscApCY2M6IGV2aWxAeC50ZXN0?=", id="subject-b-lf"),
        # Raw: the customer's own mail carries a Bcc header right after its subject.
        pytest.param(MALLORY, b"Help\r\nBcc: evil@x.test", id="subject-raw-crlf"),
        # The display name is echoed into our To header.
        pytest.param(
            b"=?UTF-8?B?TWFsbG9yeQ0KQmNjOiBldmlsQHgudGVzdA==?= <mallory@customer.test>",
            b"Help",
            id="from-name-b-crlf",
        ),
        pytest.param(
            b"=?UTF-8?Q?Mallory=0D=0ABcc=3A_evil=40x=2Etest?= <mallory@customer.test>",
            b"Help",
            id="from-name-q-crlf",
        ),
    ],
)
def test_customer_text_cannot_inject_a_bcc_recipient(
    services: Services, clock: ManualClock, sink: SmtpSink, sender_header: bytes, subject: bytes
) -> None:
    raw = raw_mail(sender_header, subject)
    receive(services, raw, mail_from="mallory@customer.test")
    [queued] = outbox_rows(services)
    sender = sender_to(services, clock, sink.url)
    assert sender.send_due() == 1
    sender.transport.close()

    [got] = sink.messages
    assert got.rcpt_tos == ("mallory@customer.test",)
    header_block = got.content.partition(b"\r\n\r\n")[0]
    assert not re.search(rb"(?im)^bcc\s*:", header_block), header_block.decode()
    ack = parse(got.content)
    assert ack["Bcc"] is None and ack["Cc"] is None
    assert [a.addr_spec for a in ack["To"].addresses] == ["mallory@customer.test"]
    assert str(ack["Message-ID"]) == f"<{queued.message_id}>"


def test_a_customer_named_surname_comma_given_name_is_acknowledged(
    services: Services, clock: ManualClock, sink: SmtpSink
) -> None:
    # "Novák, Jan" as mail clients write it: one encoded word, the comma encoded inside.
    # (message.py once decoded it before splitting From into addresses: quarantined.)
    raw = raw_mail(b"=?UTF-8?Q?Nov=C3=A1k=2C_Jan?= <jan.novak@customer.test>", b"Invoice")
    receive(services, raw, mail_from="jan.novak@customer.test")
    sender = sender_to(services, clock, sink.url)
    assert sender.send_due() == 1
    sender.transport.close()

    [got] = sink.messages
    assert got.rcpt_tos == ("jan.novak@customer.test",)
    assert parse(got.content)["To"].addresses[0].display_name == "Novák, Jan"


# --- mail handed over by the processing transaction ------------------------------------


def handing_over(services: Services, clock: ManualClock, url: str) -> tuple[OutboxSender, Handoff]:
    """A sender and the processor of `services` joined as a worker joins them."""
    sender = sender_to(services, clock, url)
    handoff = Handoff(clock, 64, wake=lambda: None)
    sender.handoff = services.processor.handoff = handoff
    return sender, handoff


@pytest.mark.skipif(bool(PG_URL), reason="SQLite's one write lock")
def test_an_acknowledgement_goes_out_while_another_writer_holds_the_database(
    services: Services, clock: ManualClock
) -> None:
    """The processing transaction claimed it: sending it needs no write of the sender's
    own, only marking it sent does (after the other writer let go)."""
    sender, handoff = handing_over(services, clock, maildir_url(services))
    [queued] = queue_acknowledgements(services, 1)
    other = Database(services.db.url)
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with other.transaction():
            holding.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(10)
        sending = threading.Thread(target=sender.send_due, kwargs={"claim": False})
        sending.start()
        [delivered] = wait_for(lambda: maildir_files(services), what="the acknowledgement")
        assert str(parse(delivered.read_bytes())["Message-ID"]) == f"<{queued.message_id}>"
        with services.db.reading() as session:  # a read: it does not wait for the lock
            state = session.scalar(select(Outbox.state).where(Outbox.id == queued.id))
        assert state == "pending"  # its mark waits for the other writer
    finally:
        release.set()
        holder.join(10)
        other.dispose()
    sending.join(10)
    assert row(services, queued.id).state == "sent"
    assert handoff.take() is None


def test_a_handed_over_batch_reached_after_its_lease_is_not_sent_again(
    services: Services, clock: ManualClock, sink: SmtpSink
) -> None:
    """The sender was busy for a lease: another sender claimed the rows and sent them."""
    late, _handoff = handing_over(services, clock, sink.url)
    [queued] = queue_acknowledgements(services, 1)  # claimed for `late`, in that commit
    clock.advance(LEASE)
    other = sender_to(services, clock, sink.url)
    assert other.send_due() == 1
    assert late.send_due() == 0  # given back, and nothing is due
    assert message_ids([m.content for m in sink.messages]) == {queued.message_id: 1}
    assert row(services, queued.id).state == "sent"


def test_a_handed_over_batch_past_a_renewal_is_given_back_and_sent_once(
    services: Services, clock: ManualClock, sink: SmtpSink
) -> None:
    late, _handoff = handing_over(services, clock, sink.url)
    [queued] = queue_acknowledgements(services, 1)
    clock.advance(LEASE / 3 + timedelta(seconds=1))
    assert late.send_due(claim=False) == 0  # not sent on a lease it may have lost
    assert row(services, queued.id).attempts == 0  # given back: the claim did not count
    assert late.send_due() == 1
    assert message_ids([m.content for m in sink.messages]) == {queued.message_id: 1}
