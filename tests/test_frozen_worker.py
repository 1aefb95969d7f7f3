"""A worker process that stops running while it holds SQLite's write lock is ended by serve.

A worker can stop running without dying: SIGSTOP, a debugger left attached, a process
frozen by its cgroup. Its claims run out after one lease and others take them over,
but a worker frozen inside a write transaction also keeps the spool's write lock
(`<db>.writer` and SQLite's own): every other worker's claim, renewal and "sent", and
serve's scheduled jobs, then failed after 30 s, again and again, until someone found
and killed it by hand. Here serve runs on SQLite with two workers and a real relay;
one worker is SIGSTOPped at a moment it holds the write lock (read from /proc/locks),
and mail keeps coming. Serve must end the frozen worker and start another, the mail
must be answered, each message once.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import signal
import smtplib
import threading
from collections import Counter
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PG_URL, make_mail, wait_for
from tests.smtp_sink import SmtpSink
from tests.test_crash import DaemonProcess, alive
from tests.test_workers import initialized

pytestmark = pytest.mark.skipif(bool(PG_URL), reason="SQLite's write lock across processes")

SUPPORT = "support@example.test"
LEASE_SECONDS = 5


def flock_holders(path: Path) -> set[int]:
    """The processes holding an flock on `path`, from /proc/locks."""
    inode = path.stat().st_ino
    found = set()
    for line in Path("/proc/locks").read_text().splitlines():
        # "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"; waiters carry a "->".
        fields = line.split()
        if fields[1] == "FLOCK" and int(fields[5].rsplit(":", 1)[1]) == inode:
            found.add(int(fields[4]))
    return found


def stopped(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "T"
    except OSError:
        return False


def freeze_while_writing(workers: set[int], writer: Path) -> int:
    """SIGSTOP one of `workers` at a moment it holds the write lock `writer`; its pid."""

    def attempt() -> int | None:
        for pid in flock_holders(writer) & workers:
            os.kill(pid, signal.SIGSTOP)
            wait_for(partial(stopped, pid), 10, f"worker {pid} to stop")
            if pid in flock_holders(writer):
                return pid
            os.kill(pid, signal.SIGCONT)  # it let go meanwhile: try again
        return None

    frozen: int = wait_for(attempt, 60, "a worker caught holding the write lock")
    return frozen


class Stream:
    """A client sending customer mail, each message from its own customer, until stopped."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.accepted: list[str] = []
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="stream")

    def _run(self) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", self.port, timeout=60) as client:
                n = 0
                while not self.stop.is_set():
                    self.send(client, f"stream-{n}", f"c{n}@customer.test")
                    n += 1
        except BaseException as exc:  # surfaced by the test: serve must not refuse
            self.error = exc

    def send(self, client: smtplib.SMTP, name: str, customer: str) -> None:
        raw = make_mail(subject=name, sender=customer, message_id=f"<{name}@customer.test>")
        client.sendmail(customer, [SUPPORT], raw)
        self.accepted.append(f"{name}@customer.test")

    def __enter__(self) -> Stream:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(60)


@pytest.fixture
def serve(
    config_values: dict[str, Any], tmp_path: Path, relay: SmtpSink
) -> Iterator[DaemonProcess]:
    values = json.loads(json.dumps(config_values))
    values["outbound"]["url"] = relay.url
    values["limits"] = {"auto_replies_per_hour_total": 10_000, "accept_min_free_mb": 0}
    values["workers"] = {"count": 2, "lease_seconds": LEASE_SECONDS}
    path, settings = initialized(values, tmp_path)
    daemon = DaemonProcess(path, tmp_path / "serve.log", settings)
    yield daemon
    daemon.kill()


def answered(relay: SmtpSink) -> Counter[str]:
    """How many acknowledgements the relay got per Message-ID they answer."""
    policy = email.policy.default
    acks = (email.message_from_bytes(m.content, policy=policy) for m in relay.messages)
    return Counter(str(ack["In-Reply-To"]).strip("<>") for ack in acks)


def test_a_worker_frozen_holding_the_write_lock_is_ended_and_the_mail_goes_on(
    serve: DaemonProcess, relay: SmtpSink, tmp_path: Path
) -> None:
    serve.start()
    assert serve.proc is not None
    workers = wait_for(lambda: len(serve.workers()) == 2 and serve.workers(), 60)
    wait_for(lambda: serve.log_path.read_text().count("ready: processing and sending") == 2, 60)

    with Stream(serve.settings.smtp.port) as stream:
        frozen = freeze_while_writing(workers, tmp_path / "maildesk.db.writer")
    assert stream.error is None
    try:
        # Mail that arrives after the freeze is answered, by the other worker and by
        # the one serve starts in place of the frozen one.
        with smtplib.SMTP("127.0.0.1", serve.settings.smtp.port, timeout=60) as client:
            stream.send(client, "after-the-freeze", "late@customer.test")
        wait_for(
            lambda: answered(relay)["after-the-freeze@customer.test"],
            30 + 6 * LEASE_SECONDS,
            "the mail sent after the freeze to be answered",
        )
        assert not alive(frozen)
        wait_for(lambda: len(serve.workers() - {frozen}) == 2, 30, "a new worker")
        log = serve.log_path.read_text()
        assert f"(pid {frozen}) has not run for" in log, serve.log()
    finally:
        if alive(frozen):
            os.kill(frozen, signal.SIGCONT)

    def idle() -> bool:
        health = serve.health()
        return health is not None and health["inbound_pending"] == health["outbox_pending"] == 0

    wait_for(idle, 60, "the queues to empty")
    health = serve.health()
    assert health is not None and health["quarantined"] == 0, health
    # Every message that got its 250 answered once: nothing lost, nothing twice.
    assert answered(relay) == Counter(stream.accepted)
    assert serve.terminate() == 0, serve.log()


def test_a_paused_machine_ends_no_worker_when_it_resumes(
    serve: DaemonProcess, relay: SmtpSink
) -> None:
    """A paused VM stops serve and its workers together, for longer than a lease. Serve
    may run again a moment before its workers do: it must not take them for frozen."""
    serve.start()
    assert serve.proc is not None
    workers = wait_for(lambda: len(serve.workers()) == 2 and serve.workers(), 60)
    wait_for(lambda: serve.log_path.read_text().count("ready: processing and sending") == 2, 60)
    everyone = [serve.proc.pid, *workers]
    for pid in everyone:
        os.kill(pid, signal.SIGSTOP)
    for pid in everyone:
        wait_for(partial(stopped, pid), 10, f"process {pid} to stop")
    # The pause itself: a lease and more of wall time with nothing running.
    threading.Event().wait(LEASE_SECONDS + 2)
    os.kill(serve.proc.pid, signal.SIGCONT)
    wait_for(serve.health, 30, "serve to answer again")
    for pid in workers:
        os.kill(pid, signal.SIGCONT)

    with smtplib.SMTP("127.0.0.1", serve.settings.smtp.port, timeout=60) as client:
        Stream(serve.settings.smtp.port).send(client, "after-the-pause", "late@customer.test")
    wait_for(lambda: answered(relay)["after-the-pause@customer.test"], 60, "the answer")
    assert serve.workers() == workers
    assert "has not run for" not in serve.log_path.read_text()
    assert serve.terminate() == 0, serve.log()
