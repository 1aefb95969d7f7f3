"""`maildesk backup` while mail flows, `maildesk restore` into a fresh folder, and the same
tickets (attachments included) on both sides.

SQLite only: that is the backend whose file the backup copies (PostgreSQL is pg_dump's).
"""

from __future__ import annotations

import email.policy
import json
import stat
import threading
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from maildesk.cli import main
from maildesk.config import load
from maildesk.services import build
from tests.conftest import RunningDaemon, toml, wait_for
from tests.helpers import tickets


def run(config: Path, *args: str) -> Result:
    result = CliRunner().invoke(main, ["--config", str(config), *args])
    assert result.exit_code == 0, result.output
    return result


def mail_with_attachment(n: int) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"customer{n}@customer.test"
    msg["To"] = "support@example.test"
    msg["Subject"] = f"Invoice {n}"
    msg["Message-ID"] = f"<flow{n}@customer.test>"
    msg.set_content(f"See the attached scan number {n}.")
    msg.add_attachment(bytes(range(256)) * (n + 1), "application", "pdf", filename=f"{n}.pdf")
    return msg.as_bytes(policy=email.policy.SMTP)


def write_config(values: dict[str, Any], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    values = json.loads(json.dumps(values))
    values["database"] = {"url": f"sqlite:///{folder / 'maildesk.db'}"}
    values["web"].pop("secret_key")  # `init` writes the key file beside the database
    path = folder / "maildesk.toml"
    path.write_text(toml(values))
    return path


def test_backup_while_mail_flows_restores_the_same_tickets(
    config_values: dict[str, Any], tmp_path: Path
) -> None:
    source = write_config(config_values, tmp_path / "live")
    run(source, "init")
    services = build(load(source))
    running = RunningDaemon(services).start()
    stop, sent = threading.Event(), []

    def flow() -> None:
        while not stop.is_set():
            running.send(mail_with_attachment(len(sent)), sender=f"customer{len(sent)}@x.test")
            sent.append(1)

    sender = threading.Thread(target=flow)
    sender.start()
    try:
        wait_for(lambda: len(tickets(services)) >= 3, what="mail flowing")
        run(source, "backup", str(tmp_path / "backup"))
        during = len(sent)
        wait_for(lambda: len(sent) > during, what="mail still flowing after the backup")
    finally:
        stop.set()
        sender.join(30)
        wait_for(lambda: len(tickets(services)) == len(sent), 30, "every mail to be a ticket")
        running.stop()

    backup = tmp_path / "backup"
    for name in ("maildesk.db", "secret_key", "maildesk.toml", "manifest.json"):
        assert stat.S_IMODE((backup / name).stat().st_mode) == 0o600, name
    assert stat.S_IMODE(backup.stat().st_mode) == 0o700

    fresh = write_config(config_values, tmp_path / "fresh")
    run(fresh, "restore", str(backup))
    run(fresh, "init")  # idempotent; upgrades an older schema
    assert (tmp_path / "fresh" / "secret_key").read_text() == (
        tmp_path / "live" / "secret_key"
    ).read_text()

    restored = export(fresh)
    live = export(source)
    # The copy is one consistent moment: the first tickets, whole, and none half-written.
    assert 3 <= len(restored) < len(live)
    assert restored == live[: len(restored)]
    first = restored[0]["messages"][0]["attachments"][0]
    assert first["filename"] == "0.pdf"
    assert first["content_base64"].startswith("AAECAwQF")


def export(config: Path) -> list[dict[str, Any]]:
    lines = run(config, "tickets", "export", "--attachments").stdout.splitlines()
    return [json.loads(line) for line in lines]


def test_restore_refuses_to_overwrite_a_database(
    config_values: dict[str, Any], tmp_path: Path
) -> None:
    source = write_config(config_values, tmp_path / "live")
    run(source, "init")
    run(source, "backup", str(tmp_path / "backup"))
    result = CliRunner().invoke(
        main, ["--config", str(source), "restore", str(tmp_path / "backup")]
    )
    assert result.exit_code != 0
    assert "exists" in result.output and "--force" in result.output
    # A backup never lands in a folder that already holds something.
    again = CliRunner().invoke(main, ["--config", str(source), "backup", str(tmp_path / "backup")])
    assert again.exit_code != 0 and "not empty" in again.output


def test_mail_accepted_but_not_yet_processed_is_in_the_backup(
    config_values: dict[str, Any], tmp_path: Path
) -> None:
    """The MTA hands a message to `maildesk deliver` while no worker runs: it waits where
    accepted mail waits (on SQLite, the landing beside the database), and a backup
    taken then restores it, to become a ticket once processing runs."""
    source = write_config(config_values, tmp_path / "live")
    run(source, "init")
    delivered = CliRunner().invoke(
        main,
        ["--config", str(source), "deliver", "--sender", "late@customer.test"],
        input=mail_with_attachment(7),
    )
    assert delivered.exit_code == 0, delivered.output
    run(source, "backup", str(tmp_path / "backup"))

    fresh = write_config(config_values, tmp_path / "fresh")
    run(fresh, "restore", str(tmp_path / "backup"))
    run(fresh, "init")
    restored = build(load(fresh))
    try:
        assert restored.drain_inbound() == 1
        [ticket] = tickets(restored)
        assert ticket["subject"] == "Invoice 7"
    finally:
        restored.db.dispose()
