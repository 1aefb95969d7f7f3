"""A message that kills or hangs the processor is quarantined at claim time, never retried forever.

The real daemon runs as a subprocess. To stop it deterministically in the middle of one
message, its spam check points at a "spamd" on loopback that accepts and never answers:
the daemon has claimed the message (its attempt committed) and waits inside processing
when the connection arrives, and that is when the test SIGKILLs it. After `MAX_ATTEMPTS`
such deaths the next start quarantines the message when it claims it, with the reason,
and the mail behind it is processed as usual.
"""

from __future__ import annotations

import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from maildesk import config
from maildesk.db import Database
from maildesk.inbound.store import MAX_ATTEMPTS
from maildesk.models import Inbound
from tests.conftest import make_mail, toml, wait_for
from tests.test_crash import MAILDESK, DaemonProcess, start_daemon


class SilentSpamd:
    """Accepts connections on loopback and never answers: processing waits inside a message."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.accepted.append(conn)

    def connections(self) -> int:
        with self.lock:
            return len(self.accepted)

    def close(self) -> None:
        """From now on the port refuses: the daemon scores nothing and goes on."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes accept(); close alone would not
        except OSError:
            pass
        self.sock.close()
        self.thread.join(10)
        with self.lock:
            for conn in self.accepted:
                conn.close()


@pytest.fixture
def spamd() -> Iterator[SilentSpamd]:
    server = SilentSpamd()
    yield server
    server.close()


@pytest.fixture
def daemons() -> Iterator[list[DaemonProcess]]:
    started: list[DaemonProcess] = []
    yield started
    for daemon in started:
        daemon.kill()


def send(settings: config.Settings, subject: str, sender: str) -> None:
    import smtplib

    raw = make_mail(subject=subject, sender=sender, body="Hello.")
    with smtplib.SMTP(settings.smtp.host, settings.smtp.port, timeout=30) as client:
        client.sendmail(sender, ["support@example.test"], raw)


def test_a_message_killed_mid_processing_is_quarantined_at_claim_after_max_attempts(
    config_values: dict[str, Any],
    tmp_path: Path,
    spamd: SilentSpamd,
    daemons: list[DaemonProcess],
) -> None:
    config_values["spam"] = {
        "spamd_host": "127.0.0.1",
        "spamd_port": spamd.port,
        "spamd_timeout": 600,
    }
    config_file = tmp_path / "maildesk.toml"
    config_file.write_text(toml(config_values))
    settings = config.from_mapping(config_values, base_dir=tmp_path)
    init = subprocess.run(
        [*MAILDESK, "--config", str(config_file), "init"], capture_output=True, timeout=60
    )
    assert init.returncode == 0, init.stderr.decode(errors="replace")

    daemon = start_daemon(daemons, config_file, settings, tmp_path)
    send(settings, "Poison", "poison@customer.test")
    for attempt in range(1, MAX_ATTEMPTS + 1):
        # The daemon is inside processing the poison message: kill it there.
        wait_for(lambda n=attempt: spamd.connections() >= n, 60, f"processing attempt {attempt}")
        daemon.kill()
        if attempt < MAX_ATTEMPTS:
            daemon = start_daemon(daemons, config_file, settings, tmp_path)

    spamd.close()  # whatever comes next is not stopped by the spam check
    db = Database(settings.database.url)
    try:
        with db.transaction() as session:
            [row] = session.execute(select(Inbound.state, Inbound.attempts)).all()
        assert tuple(row) == ("pending", MAX_ATTEMPTS)

        daemon = start_daemon(daemons, config_file, settings, tmp_path)
        send(settings, "Printer broken", "alice@customer.test")

        def settled() -> list[Any] | None:
            with db.transaction() as session:
                rows = session.execute(
                    select(Inbound.id, Inbound.state, Inbound.attempts, Inbound.reason).order_by(
                        Inbound.id
                    )
                ).all()
            return rows if all(r.state != "pending" for r in rows) and len(rows) == 2 else None

        poison, innocent = wait_for(settled, 90, "both messages to leave the spool")
    finally:
        db.dispose()
    # Held with its reason after MAX_ATTEMPTS claims, not tried a fourth time.
    assert poison.state == "quarantined"
    assert poison.attempts == MAX_ATTEMPTS
    assert f"did not finish in {MAX_ATTEMPTS} attempts" in poison.reason
    assert spamd.connections() == MAX_ATTEMPTS
    # The mail behind it is not blocked.
    assert innocent.state == "done"
    health = daemon.health()
    assert health is not None and health["quarantined"] == 1, health
    assert daemon.terminate() == 0, daemon.log()
