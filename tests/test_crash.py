"""kill -9 in the middle of a stream of mail: nothing accepted is lost, nothing is sent twice.

The real daemon runs as a subprocess (`maildesk serve`, with its worker processes, the
default count) on the test's database and ports.
A client thread streams customer mail over SMTP, each message from its own customer so
each opens its own ticket, and records which ones got a 250. Once enough were accepted the
daemon is SIGKILLed while the client is still sending (its workers die with it), then
started again.

On SQLite the restarted daemon, being the only instance, frees the killed process's claims
at start-up. On PostgreSQL another instance might still hold them, so they wait out their
leases (30 s, renewed only while their holder lives; `maildesk/leases.py`), inbound rows
and outbox rows alike: the restarted daemon finishes everything by itself either way.
Then every accepted message must be in exactly one ticket,
and the outbox Maildir must hold exactly one acknowledgement per ticket.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import signal
import smtplib
import subprocess
import sys
import threading
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from maildesk import config, leases
from maildesk.db import Database
from maildesk.models import Inbound, Outbox
from tests.conftest import make_mail, wait_for

SUPPORT = "support@example.test"
TOTAL = 200
# The `maildesk` command, run by the interpreter running the tests. (`python -m maildesk.cli`
# would exit 0 without doing anything: cli.py has no `__main__` guard.)
MAILDESK = [sys.executable, "-m", "maildesk"]


def customer(i: int) -> str:
    return f"customer{i}@customer.test"


def message_id(i: int) -> str:
    return f"crash-{i}@customer.test"


class DaemonProcess:
    """`maildesk serve` in a subprocess, its output in a log file under tmp_path."""

    def __init__(
        self,
        config_path: Path,
        log_path: Path,
        settings: config.Settings,
        env: dict[str, str] | None = None,
    ) -> None:
        self.config_path = config_path
        self.log_path = log_path
        self.settings = settings
        self.env = env  # added to this process's environment, for serve and its workers
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> DaemonProcess:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [*MAILDESK, "--config", str(self.config_path), "serve"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.config_path.parent,
                env={**os.environ, **self.env} if self.env else None,
            )
        wait_for(lambda: self._exited() or self.health(), 30, "the daemon's /healthz")
        self._exited()
        return self

    def _exited(self) -> bool:
        """Fail with the daemon's log if it died on its own."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"the daemon exited with {self.proc.returncode}:\n{self.log()}")
        return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def health(self) -> dict[str, Any] | None:
        url = f"http://{self.settings.web.host}:{self.settings.web.port}/healthz"
        request = urllib.request.Request(url)
        request.add_header("Authorization", f"Bearer {self.settings.metrics.bearer_token}")
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                data: dict[str, Any] = json.loads(response.read())
                return data
        except OSError:
            return None

    def workers(self) -> set[int]:
        """The worker processes serve started: its children, read from /proc."""
        if self.proc is None:
            return set()
        return children(self.proc.pid)

    def kill(self) -> None:
        """SIGKILL: no handler runs, nothing is flushed or closed."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def terminate(self) -> int:
        """SIGTERM, the way a service manager stops it; returns the exit status."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGTERM)
        return self.proc.wait(30)


def children(pid: int) -> set[int]:
    """The processes whose parent is `pid`, from /proc."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after its ')'.
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; its parent (init) reaps it


@pytest.fixture
def daemons() -> Iterator[list[DaemonProcess]]:
    """Daemon processes of the test; any still running at teardown are killed."""
    started: list[DaemonProcess] = []
    yield started
    for daemon in started:
        daemon.kill()


def start_daemon(
    daemons: list[DaemonProcess], config_file: Path, settings: config.Settings, tmp_path: Path
) -> DaemonProcess:
    daemon = DaemonProcess(config_file, tmp_path / f"daemon-{len(daemons) + 1}.log", settings)
    daemons.append(daemon)
    return daemon.start()


@dataclass
class Stream:
    """What the client thread sent and which messages the daemon accepted with a 250."""

    kill_after: int
    attempted: list[int] = field(default_factory=list)
    accepted: list[int] = field(default_factory=list)
    enough: threading.Event = field(default_factory=threading.Event)
    stopped_by: BaseException | None = None

    def run(self, host: str, port: int) -> None:
        try:
            with smtplib.SMTP(host, port, timeout=10) as client:
                for i in range(TOTAL):
                    raw = make_mail(
                        subject=f"Request {i}",
                        sender=f"Customer {i} <{customer(i)}>",
                        message_id=f"<{message_id(i)}>",
                        body=f"Problem number {i}.",
                    )
                    self.attempted.append(i)
                    client.sendmail(customer(i), [SUPPORT], raw)
                    self.accepted.append(i)
                    if len(self.accepted) >= self.kill_after:
                        self.enough.set()
        except (smtplib.SMTPException, OSError) as exc:
            self.stopped_by = exc  # the daemon died under us: stop sending
        finally:
            self.enough.set()


def acknowledgements(folder: Path) -> list[EmailMessage]:
    new = folder / "new"
    return [
        email.message_from_bytes(p.read_bytes(), policy=email.policy.default)
        for p in sorted(new.iterdir())
    ]


@pytest.mark.parametrize("kill_after", [1, 25, 80])
def test_kill_9_mid_stream_loses_nothing_and_sends_nothing_twice(
    kill_after: int,
    config_file: Path,
    settings: config.Settings,
    tmp_path: Path,
    daemons: list[DaemonProcess],
) -> None:
    init = subprocess.run(
        [*MAILDESK, "--config", str(config_file), "init"],
        capture_output=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert init.returncode == 0, init.stderr.decode(errors="replace")
    first = start_daemon(daemons, config_file, settings, tmp_path)
    workers = wait_for(first.workers, 60, "serve's worker processes")

    stream = Stream(kill_after)
    client = threading.Thread(
        target=stream.run, args=(settings.smtp.host, settings.smtp.port), name="smtp-client"
    )
    client.start()
    assert stream.enough.wait(60), "the client never got enough messages accepted"
    first.kill()  # while the client is still streaming
    # Its workers die with it (the kernel kills them): none works beside the next serve.
    wait_for(lambda: not any(alive(pid) for pid in workers), 30, "the workers to die with serve")
    client.join(30)
    assert not client.is_alive(), "the client hung on a dead daemon"
    assert len(stream.accepted) >= kill_after, f"stream ended early: {stream.stopped_by!r}"

    second = start_daemon(daemons, config_file, settings, tmp_path)
    db = Database(settings.database.url)
    try:
        # On SQLite the only instance frees the killed process's claims at start-up; on
        # PostgreSQL they wait out their short leases (another instance might hold them).
        # Either way the restarted daemon finishes everything by itself, within a lease.
        def all_done() -> bool:
            now = second.health()
            return now is not None and now["inbound_pending"] == now["outbox_pending"] == 0

        wait_for(
            all_done,
            60 + leases.LEASE.total_seconds(),
            "the restarted daemon to finish everything by itself",
        )
        health = second.health()
        assert health is not None and health["quarantined"] == 0, health
        with db.reading() as session:
            states = Counter(session.scalars(select(Inbound.state)))
            outbox_states = Counter(session.scalars(select(Outbox.state)))
    finally:
        db.dispose()
    assert second.terminate() == 0, second.log()

    export = subprocess.run(
        [*MAILDESK, "--config", str(config_file), "tickets", "export"],
        capture_output=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert export.returncode == 0, export.stderr.decode(errors="replace")
    tickets = [json.loads(line) for line in export.stdout.decode().splitlines()]

    # Every inbound row was turned into a ticket message; none was held or dropped.
    assert set(states) == {"done"}, states
    # Each customer's message is in exactly one ticket, the one it opened.
    inbound_ids = Counter(
        m["message_id"] for t in tickets for m in t["messages"] if m["direction"] == "in"
    )
    assert all(n == 1 for n in inbound_ids.values()), inbound_ids.most_common(3)
    accepted = {message_id(i) for i in stream.accepted}
    missing = accepted - set(inbound_ids)
    assert not missing, f"accepted with 250 but in no ticket: {sorted(missing)}"
    # Stored but unanswered (killed between commit and 250) is allowed; invented is not.
    assert set(inbound_ids) <= {message_id(i) for i in stream.attempted}
    for t in tickets:
        [incoming] = [m for m in t["messages"] if m["direction"] == "in"]
        number = int(incoming["message_id"].removeprefix("crash-").partition("@")[0])
        assert t["requester"] == customer(number)

    # One acknowledgement per ticket, each customer message answered exactly once.
    acks = acknowledgements(tmp_path / "outbox")
    answered = Counter(str(ack["In-Reply-To"]).strip("<>") for ack in acks)
    twice = {mid: n for mid, n in answered.items() if n > 1}
    assert not twice, f"answered more than once: {twice}"
    assert set(answered) == set(inbound_ids)
    assert len(acks) == len(tickets)
    for ack in acks:
        replied = str(ack["In-Reply-To"]).strip("<>")
        number = int(replied.removeprefix("crash-").partition("@")[0])
        assert [a.addr_spec for a in ack["To"].addresses] == [customer(number)]
    assert outbox_states == Counter({"sent": len(tickets)}), outbox_states
