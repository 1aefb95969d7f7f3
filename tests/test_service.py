"""maildesk under a service manager: readiness, watchdog, reload and a draining stop.

Each test runs the real `maildesk serve` in a subprocess whose NOTIFY_SOCKET is a
datagram socket the test owns (tests/service_process.py), and talks to it over
real SMTP. What the test reads on that socket is what systemd would read.
"""

from __future__ import annotations

import shutil
import signal
import smtplib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from maildesk.config import PACKAGE_TEMPLATES
from maildesk.db import Database
from maildesk.models import Message
from tests.conftest import Outbox, make_mail, toml, wait_for
from tests.service_process import NotifySocket, ServiceProcess

SUPPORT = "support@example.test"


@pytest.fixture
def templates(tmp_path: Path) -> Path:
    """An admin's own copy of the templates, which the tests edit."""
    path = tmp_path / "templates"
    shutil.copytree(PACKAGE_TEMPLATES, path)
    return path


@pytest.fixture
def service_config(config_values: dict[str, Any], tmp_path: Path, templates: Path) -> Path:
    values = {**config_values, "templates": {"path": str(templates)}}
    path = tmp_path / "maildesk.toml"
    path.write_text(toml(values))
    return path


@pytest.fixture
def notify() -> Iterator[NotifySocket]:
    sock = NotifySocket()
    yield sock
    sock.close()


@pytest.fixture
def service(service_config: Path, notify: NotifySocket) -> Iterator[ServiceProcess]:
    # A 1 s watchdog: pings every 0.5 s.
    proc = ServiceProcess(service_config, notify, watchdog_usec=1_000_000)
    yield proc
    proc.kill()


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def _send(config_values: dict[str, Any], subject: str, sender: str = "alice@customer.test") -> None:
    smtp = config_values["smtp"]
    with smtplib.SMTP(smtp["host"], smtp["port"], timeout=30) as client:
        client.sendmail(sender, [SUPPORT], make_mail(subject=subject, sender=sender))


def _error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if '"level": "error"' in line]


def test_ready_comes_after_the_listeners_answer_then_watchdog_pings_and_status(
    service: ServiceProcess, notify: NotifySocket, config_values: dict[str, Any]
) -> None:
    ready = notify.wait("READY", "1")
    # The moment systemd hears READY=1, both listeners already answer.
    smtp, web = config_values["smtp"], config_values["web"]
    assert _answers(smtp["host"], smtp["port"])
    assert _answers(web["host"], web["port"])
    assert ready["STATUS"] == "0 pending, 0 quarantined, 0 to send"
    assert ready["MAINPID"] == str(service.proc.pid)
    # The watchdog is fed from the event loop, again and again.
    notify.wait("WATCHDOG", "1", count=3)


def test_sigterm_says_stopping_and_exits_0(service: ServiceProcess, notify: NotifySocket) -> None:
    notify.wait("READY", "1")
    service.signal(signal.SIGTERM)
    assert service.wait() == 0
    assert notify.seen("STOPPING", "1")


def test_sighup_applies_an_edited_template_to_the_next_mail(
    service: ServiceProcess,
    notify: NotifySocket,
    config_values: dict[str, Any],
    templates: Path,
    outbox: Outbox,
) -> None:
    notify.wait("READY", "1")
    _send(config_values, "Before the edit")
    assert outbox.wait(1)[0]["Subject"] == "[#1] Before the edit"

    # A session opened before the reload, used after it: a reload never drops one.
    smtp = config_values["smtp"]
    session = smtplib.SMTP(smtp["host"], smtp["port"], timeout=30)
    session.ehlo()

    ack = templates / "en" / "acknowledgement.txt.j2"
    ack.write_text(ack.read_text().replace("{{ ticket.tag }} {{", "{{ ticket.tag }} EDITED {{", 1))
    service.signal(signal.SIGHUP)
    notify.wait("RELOADING", "1")
    notify.wait("READY", "1", count=2)

    sender = "bob@customer.test"
    with session:
        session.sendmail(sender, [SUPPORT], make_mail(subject="After the edit", sender=sender))
    subjects = [m["Subject"] for m in outbox.wait(2)]
    assert "[#2] EDITED After the edit" in subjects
    assert _error_lines(service.stderr()) == []


def test_sighup_with_a_broken_template_keeps_the_old_one_and_keeps_serving(
    service: ServiceProcess,
    notify: NotifySocket,
    config_values: dict[str, Any],
    templates: Path,
    outbox: Outbox,
) -> None:
    notify.wait("READY", "1")
    _send(config_values, "Before the typo")
    outbox.wait(1)

    ack = templates / "en" / "acknowledgement.txt.j2"
    ack.write_text("{% block subject %}{{ ticket.tag }{% endblock %}\n" + ack.read_text())
    service.signal(signal.SIGHUP)
    notify.wait("READY", "1", count=2)

    errors = wait_for(lambda: _error_lines(service.stderr()), 10, "the reload's error line")
    assert len(errors) == 1
    assert "reload refused" in errors[0]
    assert f"{ack}:1" in errors[0]
    assert service.proc.poll() is None

    # Still serving, with the acknowledgement that worked before the typo.
    _send(config_values, "After the typo", sender="bob@customer.test")
    subjects = [m["Subject"] for m in outbox.wait(2)]
    assert "[#2] After the typo" in subjects


def test_sigterm_during_a_stream_of_mail_every_250_ends_in_a_ticket(
    service: ServiceProcess, notify: NotifySocket, config_values: dict[str, Any], db_url: str
) -> None:
    notify.wait("READY", "1")
    smtp = config_values["smtp"]
    accepted: list[str] = []
    started = threading.Event()

    def stream(client_id: int) -> None:
        """One persistent SMTP connection sending until the daemon turns it away."""
        try:
            with smtplib.SMTP(smtp["host"], smtp["port"], timeout=30) as client:
                for i in range(10_000):
                    message_id = f"drain-{client_id}-{i}@customer.test"
                    sender = f"c{client_id}x{i}@customer.test"
                    raw = make_mail(
                        subject=f"stream {client_id}/{i}",
                        sender=sender,
                        message_id=f"<{message_id}>",
                    )
                    client.sendmail(sender, [SUPPORT], raw)
                    accepted.append(message_id)
                    if len(accepted) >= 20:
                        started.set()
        except (smtplib.SMTPException, OSError):
            return  # 421 or a closed connection: the daemon is stopping

    clients = [threading.Thread(target=stream, args=(n,)) for n in range(3)]
    for thread in clients:
        thread.start()
    assert started.wait(60), "the stream never got going"
    service.signal(signal.SIGTERM)
    for thread in clients:
        thread.join(60)
    assert service.wait() == 0
    assert notify.seen("STOPPING", "1")

    db = Database(db_url)
    try:
        with db.transaction() as session:
            stored = set(
                session.scalars(select(Message.message_id).where(Message.direction == "in"))
            )
    finally:
        db.dispose()
    missing = [m for m in accepted if m not in stored]
    assert accepted and missing == []


def test_sighup_with_an_invalid_config_keeps_the_running_one(
    service: ServiceProcess,
    notify: NotifySocket,
    config_values: dict[str, Any],
    service_config: Path,
    outbox: Outbox,
) -> None:
    notify.wait("READY", "1")
    good = service_config.read_text()
    service_config.write_text(
        good.replace(f"port = {config_values['smtp']['port']}", "port = 99999")
    )
    service.signal(signal.SIGHUP)
    notify.wait("READY", "1", count=2)
    errors = wait_for(lambda: _error_lines(service.stderr()), 10, "the reload's error line")
    assert len(errors) == 1
    assert "reload refused" in errors[0]
    assert "[smtp] port must be between 1 and 65535, not 99999" in errors[0]
    _send(config_values, "Still here")
    assert outbox.wait(1)[0]["Subject"] == "[#1] Still here"
