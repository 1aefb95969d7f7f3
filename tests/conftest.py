"""Shared fixtures: settings on tmp_path, a real database, a running daemon, the outbox.

The database is SQLite in tmp_path, or, when MAILDESK_TEST_DATABASE_URL is
set, a fresh schema of that PostgreSQL database for each test.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import logging
import os
import shutil
import smtplib
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from maildesk import config
from maildesk.app import DRAIN_SECONDS, Daemon
from maildesk.clock import ManualClock
from maildesk.services import Services, build
from tests.smtp_sink import SmtpSink

PG_URL = os.environ.get("MAILDESK_TEST_DATABASE_URL", "")
METRICS_TOKEN = "test-metrics-token"
DATA = Path(__file__).parent / "data" / "mail"


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port nothing listens on, never the same one twice in a test run.

    The kernel may hand out a just-closed port again, so a test asking for an
    SMTP and a web port could otherwise get one number for both.
    """
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll `predicate` until it returns something truthy, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def eml(name: str) -> bytes:
    """A real message kept under tests/data/mail/, named by the case it covers."""
    return (DATA / name).read_bytes()


@pytest.fixture
def db_url(tmp_path: Path) -> Iterator[str]:
    if not PG_URL:
        yield f"sqlite:///{tmp_path / 'maildesk.db'}"
        return
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in PG_URL else "?"
    yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    with admin.begin() as conn:
        conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


@pytest.fixture
def config_values(tmp_path: Path, db_url: str) -> dict[str, Any]:
    """The raw TOML-shaped config of a test; tweak it before `settings` is built."""
    return {
        "support": {
            "address": "support@example.test",
            "name": "Example Support",
            "base_url": "http://127.0.0.1:8080",
            "language": "en",
        },
        "database": {"url": db_url},
        "smtp": {"host": "127.0.0.1", "port": free_port()},
        "web": {"host": "127.0.0.1", "port": free_port(), "secret_key": "test-secret-key"},
        "outbound": {"url": f"maildir:{tmp_path / 'outbox'}"},
        # No agents by default: tests about agents add them (tests/pipeline/test_agents.py).
        "agents": {"addresses": []},
        # No DNS here: tests of sender proof start their own DNS server (tests/dns_server.py).
        # So the suite's mail proves nothing, and most tests read its subject or name
        # back in the acknowledgement, as a desk that echoes unproven mail sends it; the
        # default (its words withheld) is tests/pipeline/test_acknowledgement_relay.py's.
        "trust": {"verify_dkim": False, "echo_unproven": True},
        # A nearly full disk must not fail every test: the reserve for new mail has
        # tests of its own (tests/inbound/test_room.py).
        "limits": {"accept_min_free_mb": 0},
        # /healthz gives its figures, and /metrics answers, only with it.
        "metrics": {"bearer_token": METRICS_TOKEN},
    }


@pytest.fixture
def own_templates(tmp_path: Path, config_values: dict[str, Any]) -> Path:
    """A copy of the shipped templates, configured as the admin's own."""
    path = tmp_path / "templates"
    shutil.copytree(config.PACKAGE_TEMPLATES, path)
    config_values["templates"] = {"path": str(path)}
    return path


@pytest.fixture
def settings(config_values: dict[str, Any], tmp_path: Path) -> config.Settings:
    """The test's settings. In-process daemons (`daemon`, `running_daemon`) process and
    send in their own threads (`[workers] count = 0`), on the test's ManualClock;
    subprocess daemons read `config_file`, which keeps the default (worker processes)."""
    values = {**config_values, "workers": {"count": 0, **config_values.get("workers", {})}}
    return config.from_mapping(values, base_dir=tmp_path)


def toml(values: dict[str, dict[str, Any]]) -> str:
    """Enough of a TOML writer for test configs: tables of strings, numbers, bools, lists."""
    lines = []
    for section, table in values.items():
        lines.append(f"[{section}]")
        for key, value in table.items():
            lines.append(f"{key} = {json.dumps(value)}")
        lines.append("")
    return "\n".join(lines)


@pytest.fixture
def config_file(config_values: dict[str, Any], tmp_path: Path) -> Path:
    """The test's config written to disk, for the CLI and subprocess daemons."""
    path = tmp_path / "maildesk.toml"
    path.write_text(toml(config_values))
    return path


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def relay() -> Iterator[SmtpSink]:
    """A real SMTP server standing in for the desk's relay: what it received, in order."""
    with SmtpSink() as sink:
        yield sink


@pytest.fixture
def services(settings: config.Settings, clock: ManualClock) -> Iterator[Services]:
    built = build(settings, clock)
    built.prepare()
    yield built
    built.db.dispose()


@pytest.fixture
def second(settings: config.Settings, clock: ManualClock, services: Services) -> Iterator[Services]:
    """Another instance (or worker) on the same database and clock as `services`."""
    other = build(settings, clock)
    other.prepare()
    yield other
    other.db.dispose()


@dataclass
class Outbox:
    """Reads what maildesk wrote to the test's outbox Maildir."""

    path: Path

    def files(self) -> list[Path]:
        folder = self.path / "new"
        return (
            sorted(folder.iterdir(), key=lambda p: p.stat().st_mtime_ns) if folder.exists() else []
        )

    def messages(self) -> list[EmailMessage]:
        return [
            email.message_from_bytes(p.read_bytes(), policy=email.policy.default)  # type: ignore[misc]
            for p in self.files()
        ]

    def wait(self, count: int, timeout: float = 30.0) -> list[EmailMessage]:
        # A guard against a hang, not a speed check: a daemon whose worker processes
        # start beside a loaded suite took more than 10 s for its first mail (CI).
        wait_for(lambda: len(self.files()) >= count, timeout, f"{count} outbound messages")
        return self.messages()


@pytest.fixture
def outbox(tmp_path: Path) -> Outbox:
    return Outbox(tmp_path / "outbox")


class RunningDaemon:
    """The daemon on its own event loop in a thread, on the test's free ports."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.daemon = Daemon(services)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="daemon", daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            self.loop.run_until_complete(self.daemon.run())
        except BaseException as exc:  # surfaced by stop()
            self.error = exc

    def start(self) -> RunningDaemon:
        self.thread.start()
        settings = self.services.settings
        listeners = [("SMTP", settings.smtp.host, settings.smtp.port)]
        if settings.web.enabled:  # the web listener binds after SMTP: wait for both
            listeners.append(("web", settings.web.host, settings.web.port))
        for name, host, port in listeners:
            self._wait_listening(name, host, port)
        return self

    def _wait_listening(self, name: str, host: str, port: int) -> None:
        wait_for(lambda: _listening(host, port) or self.error, 10, f"{name} listener")
        if self.error:
            raise self.error

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.daemon.stop)
        # The daemon may take its whole drain time to finish accepted mail, then stop.
        self.thread.join(DRAIN_SECONDS + 10)
        assert not self.thread.is_alive(), "daemon did not stop"
        if self.error:
            raise self.error

    def send(
        self,
        raw: bytes,
        sender: str = "alice@customer.test",
        recipients: tuple[str, ...] = ("support@example.test",),
    ) -> None:
        smtp = self.services.settings.smtp
        with smtplib.SMTP(smtp.host, smtp.port, timeout=10) as client:
            client.sendmail(sender, list(recipients), raw)


def _listening(host: str, port: int) -> bool:
    """Whether a listener accepts connections. The probe says it has nothing to send,
    then waits for the server to hang up: a connection still open on the server's
    side would count against `[web] max_connections` in the test that comes next."""
    try:
        with socket.create_connection((host, port), timeout=0.5) as probe:
            probe.shutdown(socket.SHUT_WR)
            probe.settimeout(5)
            while probe.recv(4096):  # an SMTP banner, then the end
                pass
            return True
    except OSError:
        return False


@pytest.fixture
def daemon(services: Services) -> Iterator[RunningDaemon]:
    running = RunningDaemon(services).start()
    yield running
    running.stop()


@contextmanager
def running_daemon(settings: config.Settings, clock: ManualClock) -> Iterator[RunningDaemon]:
    """A daemon on settings a test changed (the `daemon` fixture uses the defaults)."""
    built = build(settings, clock)
    built.prepare()
    running = RunningDaemon(built).start()
    try:
        yield running
    finally:
        running.stop()


def make_mail(
    subject: str = "Printer broken",
    sender: str = "Alice Customer <alice@customer.test>",
    to: str = "support@example.test",
    body: str = "The printer on floor 2 prints only blank pages.",
    message_id: str | None = None,
    **headers: str,
) -> bytes:
    """A plain customer message, as a mail client would send it."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = message_id or f"<{uuid.uuid4().hex}@customer.test>"
    msg["Date"] = email.utils.format_datetime(email.utils.localtime())
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(body)
    return msg.as_bytes(policy=email.policy.SMTP)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """The root logger's handlers and level as they were (for tests that `logs.configure`)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
