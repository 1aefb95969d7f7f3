"""Several instances on one PostgreSQL: each message in one ticket, each acknowledgement once.

Two, then three `maildesk serve` subprocesses, each with its worker processes (the
default: one per core), share the test's PostgreSQL schema and one relay (a real SMTP
sink). All run `maildesk init` at the same moment first. Six clients stream 1,500
customer messages spread over their SMTP ports; halfway through, instance A is
SIGKILLed with its workers (its clients fail over to the next, as an MTA tries the
next MX) and started again. Once the queues are empty, every message that got a 250
must be in exactly one ticket, nothing is quarantined, and the relay must have
received one acknowledgement per ticket: a second copy is allowed only in SMTP's own
window (killed between the relay's 250 and our commit), and then with the same
Message-ID. A reply sent to B for a ticket A opened joins that ticket.
"""

from __future__ import annotations

import email
import email.policy
import json
import smtplib
import subprocess
import threading
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text

from maildesk import config, leases
from maildesk.db import Database
from maildesk.models import Inbound
from tests.conftest import PG_URL, free_port, make_mail, toml, wait_for
from tests.dovecot import Dovecot
from tests.smtp_sink import SmtpSink
from tests.test_crash import MAILDESK, DaemonProcess

pytestmark = pytest.mark.skipif(not PG_URL, reason="several instances need PostgreSQL")

SUPPORT = "support@example.test"
# 1,500 messages, as issue 9 asks: on the 2-core machine, with other suites running,
# the two variants took 57 s and 93 s (2026-11-29), most of it processing.
CLIENTS = 6
PER_CLIENT = 250


def message_id(client: int, n: int) -> str:
    return f"multi-{client}-{n}@customer.test"


@dataclass
class Instance:
    name: str
    config_path: Path
    settings: config.Settings
    daemon: DaemonProcess


def instance(name: str, values: dict[str, Any], tmp_path: Path) -> Instance:
    values = json.loads(json.dumps(values))  # a deep copy
    values["smtp"]["port"] = free_port()
    values["web"]["port"] = free_port()
    folder = tmp_path / name
    folder.mkdir()
    path = folder / "maildesk.toml"
    path.write_text(toml(values))
    settings = config.from_mapping(values, base_dir=folder)
    return Instance(name, path, settings, DaemonProcess(path, folder / "daemon.log", settings))


@pytest.fixture(params=[2, 3], ids=["two", "three"])
def instances(
    request: pytest.FixtureRequest, config_values: dict[str, Any], tmp_path: Path, relay: SmtpSink
) -> Iterator[list[Instance]]:
    config_values["outbound"]["url"] = relay.url
    config_values["smtp"]["max_sessions_per_ip"] = 50
    # Every message comes from its own customer: lift the global cap on automatic replies.
    config_values["limits"] = {"auto_replies_per_hour_total": 10_000}
    started = [instance(name, config_values, tmp_path) for name in "abc"[: request.param]]
    yield started
    for each in started:
        each.daemon.kill()


@dataclass
class Client:
    """Sends its messages to its instance; when that one dies, to the other (next MX)."""

    number: int
    ports: list[int]
    attempted: list[str] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)
    failovers: int = 0

    def run(self, progress: threading.Semaphore) -> None:
        n = 0
        while n < PER_CLIENT:
            port = self.ports[self.failovers % len(self.ports)]
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
                    while n < PER_CLIENT:
                        mid = message_id(self.number, n)
                        customer = f"c{self.number}.{n}@customer.test"
                        raw = make_mail(
                            subject=f"Request {self.number}.{n}",
                            sender=f"Customer <{customer}>",
                            message_id=f"<{mid}>",
                        )
                        self.attempted.append(mid)
                        smtp.sendmail(customer, [SUPPORT], raw)
                        self.accepted.append(mid)
                        progress.release()
                        n += 1
            except (smtplib.SMTPException, OSError):
                self.failovers += 1  # the message in flight is sent again to the other


def run_init_at_once(instances: list[Instance]) -> None:
    procs = [
        subprocess.Popen(
            [*MAILDESK, "--config", str(i.config_path), "init"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=i.config_path.parent,
        )
        for i in instances
    ]
    for proc in procs:
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode(errors="replace")


def parse(raw: bytes) -> EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[return-value]


def idle(instances: list[Instance]) -> bool:
    for each in instances:
        health = each.daemon.health()
        if health is None or health["inbound_pending"] or health["outbox_pending"]:
            return False
    return True


def inbound_states(each: Instance) -> Counter[str]:
    """How many stored messages are in each state (the instances share one database)."""
    db = Database(each.settings.database.url)
    try:
        with db.reading() as session:
            return Counter(session.scalars(select(Inbound.state)))
    finally:
        db.dispose()


def export(each: Instance) -> list[dict[str, Any]]:
    result = subprocess.run(
        [*MAILDESK, "--config", str(each.config_path), "tickets", "export"],
        capture_output=True,
        timeout=120,
        cwd=each.config_path.parent,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return [json.loads(line) for line in result.stdout.decode().splitlines()]


def test_instances_one_killed_and_restarted_every_250_in_one_ticket_one_ack_each(
    instances: list[Instance], relay: SmtpSink
) -> None:
    a, b = instances[:2]
    run_init_at_once(instances)
    for each in instances:
        each.daemon.start()
    for each in instances:  # each serve processes in its own worker processes
        wait_for(each.daemon.workers, 60, f"{each.name}'s worker processes")
    ports = [each.settings.smtp.port for each in instances]
    progress = threading.Semaphore(0)
    # Client i starts at instance i mod N and fails over to the next one in turn.
    clients = [Client(i, ports[i % len(ports) :] + ports[: i % len(ports)]) for i in range(CLIENTS)]
    threads = [threading.Thread(target=c.run, args=(progress,)) for c in clients]
    for thread in threads:
        thread.start()
    for _ in range(CLIENTS * PER_CLIENT // 2):
        assert progress.acquire(timeout=60), "the clients stalled"
    # Each worker process sends on its own, so each may be caught in SMTP's window.
    senders_killed = len(a.daemon.workers())
    a.daemon.kill()  # halfway, mid-stream, with claims held
    a.daemon.start()
    for thread in threads:
        thread.join(600)
    assert not any(t.is_alive() for t in threads)
    assert any(c.failovers for c in clients), "no client was cut off by the kill"

    wait_for(lambda: idle(instances), 300 + leases.LEASE.total_seconds(), "the queues to empty")

    # Acknowledgements by the customer message they answer, before the reply below:
    # one Message-ID each, repeated only in SMTP's window (checked at the end).
    attempted = {mid for c in clients for mid in c.attempted}
    answered: dict[str, Counter[str]] = defaultdict(Counter)
    for received in relay.messages:
        ack = parse(received.content)
        replied = str(ack["In-Reply-To"]).strip("<>")
        if replied in attempted:
            answered[replied][str(ack["Message-ID"])] += 1

    # A reply to B for a ticket opened at A (by the acknowledgement's minted Message-ID).
    first = message_id(0, 0)  # client 0 started at A
    assert len(answered[first]) == 1, answered[first]
    [first_ack] = answered[first]
    reply = make_mail(
        subject="Re: thanks",
        sender="Customer <c0.0@customer.test>",
        message_id="<multi-reply@customer.test>",
        In_Reply_To=first_ack,
    )
    with smtplib.SMTP("127.0.0.1", b.settings.smtp.port, timeout=30) as smtp:
        smtp.sendmail("c0.0@customer.test", [SUPPORT], reply)
    wait_for(lambda: idle(instances), 60, "the reply to be processed")

    tickets = export(b)
    accepted = {mid for c in clients for mid in c.accepted}
    assert len(accepted) == CLIENTS * PER_CLIENT
    where: dict[str, list[int]] = defaultdict(list)
    for t in tickets:
        for m in t["messages"]:
            if m["direction"] == "in":
                where[m["message_id"]].append(t["number"])
    twice = {mid: n for mid, n in where.items() if len(n) > 1}
    assert not twice, f"in more than one ticket: {list(twice.items())[:5]}"
    missing = accepted - set(where)
    assert not missing, f"250 but in no ticket: {sorted(missing)[:5]}"
    assert set(where) <= attempted | {"multi-reply@customer.test"}
    assert where["multi-reply@customer.test"] == where[first]

    states = inbound_states(a)
    # A message stored by A just before the kill and sent again to B is a duplicate.
    assert set(states) <= {"done", "duplicate"}, states

    opened = [t for t in tickets if t["messages"][0]["message_id"] in attempted]
    assert set(answered) == {t["messages"][0]["message_id"] for t in opened}
    # One acknowledgement per ticket: never two different ones, and a repeat of the
    # same one only in SMTP's window (one message in flight at each killed sender).
    assert all(len(ids) == 1 for ids in answered.values()), answered
    repeats = sum(n - 1 for ids in answered.values() for n in ids.values())
    assert repeats <= senders_killed, (repeats, senders_killed)
    # Ticket numbers are unique: one per conversation.
    assert len({t["number"] for t in tickets}) == len(tickets) == len(opened)


def test_imap_polling_stops_where_the_lock_session_ended_and_goes_on_once(
    config_values: dict[str, Any], tmp_path: Path, relay: SmtpSink
) -> None:
    """Two instances poll one mailbox; PostgreSQL ends the session holding its lock
    (a restart, a terminated backend) under the live holder. The holder must stop
    polling, not poll beside the instance that takes the lock next: each mail is
    fetched and stored once, and the intake goes on without a restart."""
    with Dovecot() as dovecot:
        imap = dovecot.settings()
        config_values["imap"] = dovecot.config()
        config_values["outbound"]["url"] = relay.url
        config_values["workers"] = {"count": 1}
        both = [instance(name, config_values, tmp_path) for name in "ab"]
        run_init_at_once(both)
        try:
            for each in both:
                each.daemon.start()
            for n in range(2):
                dovecot.append("INBOX", make_mail(subject=f"Before {n}", sender=f"b{n}@c.test"))
            wait_for(lambda: len(dovecot.messages("Processed")) == 2, 60, "the first two")
            holder = next(e for e in both if "this instance does it now" in e.daemon.log())
            mailbox = f"maildesk:imap:{imap.username}@{imap.host}:{imap.port}/INBOX"
            assert end_lock_session(holder.settings.database.url, mailbox)
            wait_for(lambda: "lost the lock" in holder.daemon.log(), 30, "the holder to stop")
            for n in range(2):
                dovecot.append("INBOX", make_mail(subject=f"After {n}", sender=f"a{n}@c.test"))
            wait_for(lambda: len(dovecot.messages("Processed")) == 4, 60, "the next two")
            wait_for(lambda: idle(both), 60, "the queues to empty")
            states = inbound_states(holder)
            assert states == {"done": 4}, states  # no mail stored twice
            # One acknowledgement each, at the relay.
            subjects = sorted(
                str(parse(m.content)["Subject"]).partition("] ")[2] for m in relay.messages
            )
            assert subjects == ["After 0", "After 1", "Before 0", "Before 1"]
            assert all(e.daemon.health() for e in both), "an instance stopped"
        finally:
            for each in both:
                each.daemon.kill()


def end_lock_session(url: str, name: str) -> bool:
    """Terminate the backend holding the advisory lock `name` of this schema."""
    db = Database(url)
    try:
        with db.engine.connect() as conn:
            key = conn.execute(_LOCK_KEY, {"name": name}).scalar_one()
            high, low = (key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF
            return bool(conn.execute(_END_HOLDER, {"high": high, "low": low}).scalar())
    finally:
        db.dispose()


_LOCK_KEY = text("SELECT hashtextextended(current_schema() || '/' || :name, 0)")
_END_HOLDER = text(
    "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    " AND classid = :high AND objid = :low AND objsubid = 1"
)
