"""Worker processes: one SIGKILLed mid-stream is restarted, and nothing it held is lost or
done twice.

`maildesk serve` runs as a subprocess on SQLite with two worker processes
(`[workers] count = 2`) and a real relay (an SMTP sink). Several clients stream
customer mail over SMTP, each message from its own customer; once a third of it got
its 250, one worker process is SIGKILLed. Serve starts a new one; the dead one's
claims are due again after its lease (`[workers] lease_seconds`, short here). Once
the queues are empty: every message that got a 250 is in exactly one ticket, the
relay got exactly one acknowledgement (one Message-ID) per ticket, a second copy of
it only in SMTP's own window (killed between the relay's 250 and our commit), and
nothing is quarantined. And a reload (SIGHUP to serve) reaches the workers: the
acknowledgements they write use the new templates; `maildesk worker` run on its own
finds stored mail by its sweep, and SIGTERM stops it with exit 0; mail serve fetches
by IMAP (from a real Dovecot) is answered by its workers.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import re
import shutil
import signal
import smtplib
import subprocess
import threading
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from maildesk import config
from tests.conftest import PG_URL, Outbox, make_mail, toml, wait_for
from tests.dovecot import Dovecot
from tests.smtp_sink import SmtpSink
from tests.test_crash import MAILDESK, DaemonProcess, children

pytestmark = pytest.mark.skipif(bool(PG_URL), reason="the SQLite writer order across processes")

SUPPORT = "support@example.test"
CLIENTS = 4
PER_CLIENT = 75
LEASE_SECONDS = 5


def message_id(client: int, n: int) -> str:
    return f"worker-{client}-{n}@customer.test"


@dataclass
class Client:
    number: int
    port: int
    attempted: list[str] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)
    error: BaseException | None = None

    def run(self, progress: threading.Semaphore) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", self.port, timeout=60) as smtp:
                for n in range(PER_CLIENT):
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
        except BaseException as exc:  # surfaced by the test: serve must not refuse
            self.error = exc


def initialized(values: dict[str, Any], tmp_path: Path) -> tuple[Path, config.Settings]:
    """`values` written as the config file, and `maildesk init` run on it."""
    path = tmp_path / "maildesk.toml"
    path.write_text(toml(values))
    init = subprocess.run(
        [*MAILDESK, "--config", str(path), "init"], capture_output=True, timeout=60, cwd=tmp_path
    )
    assert init.returncode == 0, init.stderr.decode(errors="replace")
    return path, config.from_mapping(values, base_dir=tmp_path)


@pytest.fixture
def serve(
    config_values: dict[str, Any], tmp_path: Path, relay: SmtpSink
) -> Iterator[DaemonProcess]:
    values = json.loads(json.dumps(config_values))
    values["outbound"]["url"] = relay.url
    values["smtp"]["max_sessions_per_ip"] = 50
    # Every message comes from its own customer: lift the global cap on automatic replies.
    values["limits"] = {"auto_replies_per_hour_total": 10_000}
    values["workers"] = {"count": 2, "lease_seconds": LEASE_SECONDS}
    path, settings = initialized(values, tmp_path)
    daemon = DaemonProcess(path, tmp_path / "serve.log", settings)
    yield daemon
    daemon.kill()


def test_a_worker_killed_mid_stream_is_restarted_and_nothing_is_lost_or_doubled(
    serve: DaemonProcess, relay: SmtpSink
) -> None:
    serve.start()
    assert serve.proc is not None
    pid = serve.proc.pid
    first = wait_for(lambda: len(children(pid)) == 2 and children(pid), 60)

    progress = threading.Semaphore(0)
    clients = [Client(i, serve.settings.smtp.port) for i in range(CLIENTS)]
    threads = [
        threading.Thread(target=c.run, args=(progress,), name=f"client-{c.number}") for c in clients
    ]
    for thread in threads:
        thread.start()
    for _ in range(CLIENTS * PER_CLIENT // 3):
        assert progress.acquire(timeout=60), "the clients stalled"
    victim = min(first)
    os.kill(victim, signal.SIGKILL)  # while the clients are still streaming
    wait_for(lambda: len(children(pid) - first) == 1, 60, "serve to start a new worker")
    for thread in threads:
        thread.join(120)
    assert not any(t.is_alive() for t in threads), "a client hung"
    assert [c.error for c in clients] == [None] * CLIENTS

    def idle() -> bool:
        health = serve.health()
        return health is not None and health["inbound_pending"] == health["outbox_pending"] == 0

    wait_for(idle, 120 + LEASE_SECONDS, "the queues to empty")
    health = serve.health()
    assert health is not None and health["quarantined"] == 0, health
    assert "restarting" in serve.log_path.read_text()
    # /metrics says so too: both workers alive, one restarted.
    metrics = scrape(serve)
    assert "maildesk_worker_processes 2.0" in metrics
    assert "maildesk_worker_restarts 1.0" in metrics
    assert serve.terminate() == 0, serve.log()

    export = subprocess.run(
        [*MAILDESK, "--config", str(serve.config_path), "tickets", "export"],
        capture_output=True,
        timeout=60,
        cwd=serve.config_path.parent,
    )
    assert export.returncode == 0, export.stderr.decode(errors="replace")
    tickets = [json.loads(line) for line in export.stdout.decode().splitlines()]
    ticket_of: dict[str, list[int]] = defaultdict(list)
    for ticket in tickets:
        for message in ticket["messages"]:
            if message["direction"] == "in":
                ticket_of[message["message_id"]].append(ticket["number"])
    accepted = [mid for c in clients for mid in c.accepted]
    assert len(accepted) == CLIENTS * PER_CLIENT
    # Every 250 in exactly one ticket, each opened by its own message.
    assert {mid: len(ticket_of[mid]) for mid in accepted} == {mid: 1 for mid in accepted}
    assert len(tickets) == len(accepted)

    # One acknowledgement per ticket: one Message-ID each. A second copy of the same
    # Message-ID only for the one message the killed worker may have been handing over.
    acks = [
        email.message_from_bytes(m.content, policy=email.policy.default) for m in relay.messages
    ]
    ids_per_ticket: dict[str, set[str]] = defaultdict(set)
    for ack in acks:
        ids_per_ticket[str(ack["In-Reply-To"]).strip("<>")].add(str(ack["Message-ID"]))
    assert set(ids_per_ticket) == set(accepted)
    assert all(len(ids) == 1 for ids in ids_per_ticket.values())
    copies = Counter(str(ack["Message-ID"]) for ack in acks)
    assert sum(n - 1 for n in copies.values()) <= 1, copies.most_common(3)


def test_a_reload_reaches_the_worker_processes(
    config_values: dict[str, Any], tmp_path: Path
) -> None:
    """SIGHUP to serve: the acknowledgements its workers write use the new templates."""
    values = json.loads(json.dumps(config_values))
    values["workers"] = {"count": 2}
    path, settings = initialized(values, tmp_path)
    edited = tmp_path / "edited-templates"
    shutil.copytree(config.PACKAGE_TEMPLATES, edited)
    ack = edited / "en" / "acknowledgement.txt.j2"
    ack.write_text(ack.read_text().replace("{{ ticket.tag }} {{", "{{ ticket.tag }} NEW {{", 1))
    outbox = Outbox(tmp_path / "outbox")
    serve = DaemonProcess(path, tmp_path / "serve.log", settings).start()
    try:
        send(settings, "Before")
        assert outbox.wait(1)[0]["Subject"] == "[#1] Before"
        values["templates"] = {"path": str(edited)}
        path.write_text(toml(values))
        assert serve.proc is not None
        os.kill(serve.proc.pid, signal.SIGHUP)
        # serve applies it, then each worker: three "reloaded" lines.
        wait_for(lambda: serve.log_path.read_text().count("reloaded the configuration") == 3)
        send(settings, "After", sender="bob@customer.test")
        assert outbox.wait(2)[1]["Subject"] == "[#2] NEW After"
        assert serve.terminate() == 0, serve.log()
    finally:
        serve.kill()


def niceness(pid: int) -> set[int]:
    """The nice values of a process's threads (Linux keeps one per thread), from /proc."""
    values = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        # pid (comm) state ... : the nice value is the 19th field, the 17th after ')'.
        values.add(int((task / "stat").read_text().rpartition(")")[2].split()[16]))
    return values


def test_worker_processes_run_at_the_configured_niceness_and_serve_does_not(
    config_values: dict[str, Any], tmp_path: Path
) -> None:
    """`[workers] nice`: when processing keeps the cores busy, SMTP gets the CPU first."""
    values = json.loads(json.dumps(config_values))
    values["workers"] = {"count": 2, "nice": 7}
    path, settings = initialized(values, tmp_path)
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    serve = DaemonProcess(path, tmp_path / "serve.log", settings).start()
    try:
        assert serve.proc is not None
        wait_for(lambda: serve.log_path.read_text().count("ready: processing and sending") == 2)
        workers = children(serve.proc.pid)
        assert len(workers) == 2
        for pid in workers:
            # Every thread: the processing and sending threads too, not only the main one.
            assert niceness(pid) == {max(ours, 7)}
        assert niceness(serve.proc.pid) == {ours}
        send(settings, "Processed at nice 7")
        assert Outbox(tmp_path / "outbox").wait(1)[0]["Subject"] == "[#1] Processed at nice 7"
        assert serve.terminate() == 0, serve.log()
    finally:
        serve.kill()


def test_a_restarted_worker_runs_the_code_serve_runs_whatever_lies_in_its_directory(
    config_values: dict[str, Any], tmp_path: Path
) -> None:
    """`python -m` puts the working directory first on the module path: a `maildesk`
    package written there while serve runs would have been what a restarted worker
    ran (here it would only exit, and the mail would wait for good)."""
    values = json.loads(json.dumps(config_values))
    values["workers"] = {"count": 1}
    path, settings = initialized(values, tmp_path)
    serve = DaemonProcess(path, tmp_path / "serve.log", settings).start()
    try:
        assert serve.proc is not None and serve.config_path.parent == tmp_path  # its cwd
        wait_for(lambda: "ready: processing and sending" in serve.log_path.read_text())
        planted = tmp_path / "maildesk"
        planted.mkdir()
        (planted / "__init__.py").write_text("open(__file__ + '.ran', 'w').close()\n")
        (planted / "__main__.py").write_text("")
        (first,) = children(serve.proc.pid)
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: children(serve.proc.pid) - {first}, timeout=30)
        send(settings, "Answered by the restarted worker")
        subject = Outbox(tmp_path / "outbox").wait(1)[0]["Subject"]
        assert subject == "[#1] Answered by the restarted worker"
        assert not (planted / "__init__.py.ran").exists()
    finally:
        serve.kill()


def scrape(serve: DaemonProcess) -> str:
    web = serve.settings.web
    request = urllib.request.Request(f"http://{web.host}:{web.port}/metrics")
    request.add_header("Authorization", f"Bearer {serve.settings.metrics.bearer_token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(response.read().decode())


def send(settings: config.Settings, subject: str, sender: str = "alice@customer.test") -> None:
    with smtplib.SMTP(settings.smtp.host, settings.smtp.port, timeout=30) as client:
        client.sendmail(sender, [SUPPORT], make_mail(subject=subject, sender=sender))


def test_maildesk_worker_on_its_own_processes_and_sends_then_stops_on_sigterm(
    config_file: Path, settings: config.Settings, tmp_path: Path
) -> None:
    """A worker run as a unit of its own: no serve, mail stored by `maildesk deliver`."""
    for command in (["init"], ["deliver", "-f", "alice@customer.test", "-r", SUPPORT]):
        done = subprocess.run(
            [*MAILDESK, "--config", str(config_file), *command],
            input=make_mail(subject="Stored by the MTA"),
            capture_output=True,
            timeout=60,
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr.decode(errors="replace")
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [*MAILDESK, "--config", str(config_file), "worker"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    try:
        # Found by its sweep (nothing wakes a worker of its own), processed and sent.
        [ack] = Outbox(tmp_path / "outbox").wait(1, timeout=60)
        assert ack["Subject"] == "[#1] Stored by the MTA"
        # `[workers] nice` unset: the default, 10, below serve's (never raised if nicer).
        assert niceness(worker.pid) == {max(os.getpriority(os.PRIO_PROCESS, 0), 10)}
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0, log.read_text()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(30)


def test_workers_default_to_the_cores_and_a_bad_count_is_refused_naming_the_key(
    config_values: dict[str, Any], tmp_path: Path
) -> None:
    values = {k: v for k, v in config_values.items() if k != "workers"}
    assert config.from_mapping(values, tmp_path).workers.count == max(os.cpu_count() or 1, 1)
    for workers, error in (
        ({"count": -1}, "[workers] count must be 0 or more"),
        ({"count": "two"}, "[workers] count must be an integer"),
        ({"lease_seconds": 1}, "[workers] lease_seconds must be at least 3"),
        ({"nice": 20}, "[workers] nice must be between 0 and 19, not 20"),
        ({"nice": -5}, "[workers] nice must be between 0 and 19, not -5"),
    ):
        with pytest.raises(config.ConfigError, match=re.escape(error)):
            config.from_mapping({**values, "workers": workers}, tmp_path)


def test_mail_serve_fetches_by_imap_is_answered_by_its_workers(
    config_values: dict[str, Any], tmp_path: Path
) -> None:
    """IMAP polling stays in serve; what it stores wakes the worker processes."""
    with Dovecot() as dovecot:
        values = json.loads(json.dumps(config_values))
        values["imap"] = dovecot.config()
        values["workers"] = {"count": 2}
        path, settings = initialized(values, tmp_path)
        serve = DaemonProcess(path, tmp_path / "serve.log", settings).start()
        try:
            for n in range(3):
                sender = f"imap{n}@customer.test"
                dovecot.append("INBOX", make_mail(subject=f"By IMAP {n}", sender=sender))
            acks = Outbox(tmp_path / "outbox").wait(3, timeout=60)
            # Each message opened its own ticket and got its acknowledgement.
            subjects = sorted(str(a["Subject"]).partition("] ")[2] for a in acks)
            assert subjects == ["By IMAP 0", "By IMAP 1", "By IMAP 2"]
            wait_for(lambda: len(dovecot.messages("Processed")) == 3, 30, "the moves")
            assert dovecot.messages("INBOX") == []
            assert serve.terminate() == 0, serve.log()
        finally:
            serve.kill()
