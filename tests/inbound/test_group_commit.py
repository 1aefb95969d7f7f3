"""Acceptance is its own fast path: concurrent SMTP sessions share one commit, and a 250
waiting for SQLite's write lock gets it ahead of processing work.

Real SMTP clients (smtplib, one thread each) talk to the real daemon on a free port;
a 250 must always end in a stored row holding exactly the bytes that were sent.
"""

from __future__ import annotations

import asyncio
import smtplib
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import select

from maildesk.db import Database
from maildesk.inbound.store import Envelope
from maildesk.inbound.store import counts as spool_counts
from maildesk.models import InboundRaw
from maildesk.services import Services
from maildesk.states import InboundState
from tests.conftest import RunningDaemon, make_mail, wait_for
from tests.mailclient import processed_or_failed

SUPPORT = "support@example.test"


@pytest.fixture
def config_values(config_values: dict[str, Any]) -> dict[str, Any]:
    # Every client here connects from 127.0.0.1: lift the per-address cap (10).
    config_values["smtp"]["max_sessions_per_ip"] = 100
    return config_values


def message_id(client: int, n: int) -> str:
    return f"door-{client}-{n}@customer.test"


@dataclass
class Client:
    """One SMTP connection sending `count` messages; records the queued-as id of each 250."""

    number: int
    count: int
    accepted: dict[str, int] = field(default_factory=dict)
    error: BaseException | None = None

    def run(self, host: str, port: int) -> None:
        try:
            with smtplib.SMTP(host, port, timeout=60) as smtp:
                for n in range(self.count):
                    mid = message_id(self.number, n)
                    raw = make_mail(
                        sender=f"Customer {self.number} <c{self.number}@customer.test>",
                        subject=f"Request {self.number}.{n}",
                        message_id=f"<{mid}>",
                    )
                    smtp.ehlo_or_helo_if_needed()
                    smtp.mail(f"c{self.number}@customer.test")
                    smtp.rcpt(SUPPORT)
                    code, reply = smtp.data(raw)
                    assert code == 250, reply
                    # "250 2.0.0 Ok: queued as 17"
                    self.accepted[mid] = int(reply.decode().rsplit(" ", 1)[1])
        except BaseException as exc:  # surfaced by the test
            self.error = exc


def run_clients(daemon: RunningDaemon, clients: list[Client]) -> list[threading.Thread]:
    smtp = daemon.services.settings.smtp
    threads = [
        threading.Thread(target=c.run, args=(smtp.host, smtp.port), name=f"client-{c.number}")
        for c in clients
    ]
    for thread in threads:
        thread.start()
    return threads


def stored(services: Services) -> dict[int, bytes]:
    services.store.move_landed()  # what still waits in the landing (SQLite) keeps its id
    with services.db.reading() as session:
        found = session.execute(select(InboundRaw.inbound_id, InboundRaw.raw)).all()
        return dict(found)  # type: ignore[arg-type]


def assert_every_250_is_stored(services: Services, clients: list[Client]) -> None:
    rows = stored(services)
    for client in clients:
        assert client.error is None, repr(client.error)
        for mid, spool_id in client.accepted.items():
            assert f"<{mid}>".encode() in rows[spool_id], f"250 for {mid} but not row {spool_id}"


def test_many_concurrent_smtp_clients_every_250_ends_in_a_stored_row(
    daemon: RunningDaemon,
) -> None:
    clients = [Client(i, 8) for i in range(30)]
    for thread in run_clients(daemon, clients):
        thread.join(120)
    services = daemon.services

    assert_every_250_is_stored(services, clients)
    assert sum(len(c.accepted) for c in clients) == 240
    # The processor runs meanwhile and turns each into its own ticket.
    wait_for(lambda: services.store.counts()["done"] == 240, 120, "every message processed")


def test_sessions_waiting_for_the_write_lock_share_one_commit(daemon: RunningDaemon) -> None:
    services = daemon.services
    if not services.db.is_sqlite:
        pytest.skip("SQLite's single writer: PostgreSQL commits concurrent inserts in parallel")
    clients = [Client(i, 1) for i in range(20)]
    before = services.store.commits
    door = services.store.door
    # Someone holds the lock while twenty sessions reach DATA.
    with door.transaction():
        threads = run_clients(daemon, clients)
        wait_for(
            lambda: services.store.waiting == 19 and door.writers_waiting()[0] == 1,
            30,
            "one group commit waiting for the lock with the other 19 queued behind it",
        )
        assert not any(c.accepted for c in clients)  # no 250 before the commit
    for thread in threads:
        thread.join(60)

    assert_every_250_is_stored(services, clients)
    assert services.store.commits - before == 1  # twenty 250s, one fsync


def test_a_transaction_on_the_spool_does_not_hold_a_250_back(daemon: RunningDaemon) -> None:
    """On SQLite, accepted mail lands in a file of its own (`inbound/landing.py`): a
    processing transaction holding the spool's write lock no longer delays any 250."""
    services = daemon.services
    if not services.db.is_sqlite:
        pytest.skip("SQLite's single writer: PostgreSQL locks rows")
    clients = [Client(i, 3) for i in range(5)]
    with services.db.transaction():  # as a processing batch does, for as long as it likes
        for thread in run_clients(daemon, clients):
            thread.join(60)
        assert all(len(c.accepted) == 3 for c in clients), [c.error for c in clients]
    # And the workers move them into the spool and process them, each under its id.
    processed_or_failed(daemon, 15)
    assert_every_250_is_stored(services, clients)


# --- who gets SQLite's write lock next ----------------------------------------------------


def hold_then_release(db: Database, urgent: bool) -> tuple[threading.Event, threading.Thread]:
    release, holding = threading.Event(), threading.Event()

    def hold() -> None:
        with db.transaction(urgent=urgent):
            holding.set()
            release.wait(30)

    thread = threading.Thread(target=hold, name="holder")
    thread.start()
    assert holding.wait(30)
    return release, thread


def writer(db: Database, urgent: bool, order: list[str], name: str) -> threading.Thread:
    def write() -> None:
        with db.transaction(urgent=urgent):
            order.append(name)

    thread = threading.Thread(target=write, name=name)
    thread.start()
    return thread


def queue_up(db: Database, order: list[str], *writers: tuple[str, bool]) -> list[threading.Thread]:
    """Start the writers one by one, each only once the previous one waits for the lock."""
    threads = []
    urgent = normal = 0
    for name, is_urgent in writers:
        threads.append(writer(db, is_urgent, order, name))
        urgent, normal = urgent + is_urgent, normal + (not is_urgent)
        want = (urgent, normal)
        wait_for(lambda: db.writers_waiting() == want, 10, f"{name} to wait for the lock")  # noqa: B023
    return threads


def drain(
    threads: list[threading.Thread], release: threading.Event, holder: threading.Thread
) -> None:
    release.set()
    for thread in [holder, *threads]:
        thread.join(30)


def test_a_250_waiting_for_the_write_lock_goes_ahead_of_a_processing_batch(
    services: Services,
) -> None:
    db = services.db
    if not db.is_sqlite:
        pytest.skip("SQLite's single writer only")
    order: list[str] = []
    release, holder = hold_then_release(db, urgent=False)  # a processing batch writes
    threads = queue_up(db, order, ("next batch", False), ("250", True))
    drain(threads, release, holder)
    assert order == ["250", "next batch"]


def test_processing_still_gets_every_other_turn_under_a_flood(services: Services) -> None:
    db = services.db
    if not db.is_sqlite:
        pytest.skip("SQLite's single writer only")
    order: list[str] = []
    release, holder = hold_then_release(db, urgent=True)  # a group commit writes
    threads = queue_up(db, order, ("batch", False), ("another 250", True))
    drain(threads, release, holder)
    assert order == ["batch", "another 250"]


def test_the_store_wakes_its_listeners_only_once_the_mail_is_committed(
    services: Services,
) -> None:
    """The daemon wakes its workers from here, for every route in (a portal reply too):
    a worker woken before the commit would find nothing and sleep until the next sweep."""
    seen_by_others: list[int] = []
    other = Database(services.settings.database.url)

    def on_stored() -> None:
        with other.reading() as session:
            seen_by_others.append(spool_counts(session)[InboundState.PENDING])

    services.store.on_stored(on_stored)
    try:
        services.store.put(make_mail(message_id="woken@customer.test"), Envelope(source="web"))
        services.store.put_many([make_mail(message_id="bulk@customer.test")], Envelope("import"))
    finally:
        other.dispose()
    assert seen_by_others == [1, 2]


def test_messages_stored_together_keep_their_own_bytes_exactly(services: Services) -> None:
    # One transaction, sizes around the 1 MiB slice the bytes are written in.
    raws = [
        make_mail(body="first").replace(b"first", b"first\r\n" + b"\x00\xff.\r\n" * 262_144),
        b"",
        make_mail(body="x" * 2_000_000),
        make_mail(body="last"),
    ]
    ids = services.store.put_many(raws, Envelope(source="import"))
    assert [services.store.load(i).raw for i in ids] == raws


def test_a_client_that_hangs_up_while_its_commit_waits_does_not_stop_acceptance(
    daemon: RunningDaemon,
) -> None:
    """Its session is cancelled while the group commit waits for the lock; the commit must
    still answer everyone else, and the next client must still get its 250."""
    services = daemon.services
    if not services.db.is_sqlite:
        pytest.skip("SQLite's single writer: the commit waits for the lock only there")
    smtp = services.settings.smtp
    gone = make_mail(message_id="<gone@customer.test>")
    door = services.store.door
    with door.transaction():  # someone else holds the write lock
        client = socket.create_connection((smtp.host, smtp.port), timeout=10)
        with client, client.makefile("rb") as replies:
            replies.readline()  # 220
            for command in (b"HELO customer.test", b"MAIL FROM:<c@customer.test>"):
                client.sendall(command + b"\r\n")
                replies.readline()
            client.sendall(f"RCPT TO:<{SUPPORT}>\r\nDATA\r\n".encode())
            replies.readline()
            assert replies.readline().startswith(b"354")
            client.sendall(gone + b"\r\n.\r\n")
            wait_for(lambda: door.writers_waiting()[0] == 1, 30, "the commit to wait for the lock")
        sessions = daemon.daemon.metrics.registry
        wait_for(
            lambda: sessions.get_sample_value("maildesk_smtp_sessions") == 0,
            30,
            "the daemon to see the client hang up",
        )
        # Its callbacks (the cancelled session) run before this round trip's.
        for _ in range(2):
            asyncio.run_coroutine_threadsafe(asyncio.sleep(0), daemon.loop).result(10)

    with smtplib.SMTP(smtp.host, smtp.port, timeout=10) as next_client:
        refused = next_client.sendmail("d@customer.test", [SUPPORT], make_mail())
    assert refused == {}
    assert any(b"<gone@customer.test>" in raw for raw in stored(services).values())
