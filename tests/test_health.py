"""/healthz and `maildesk status`: "degraded" with the reason, on a running daemon.

The relay is a port that refuses connections; time moves by ManualClock.
The "gone" database is a deleted SQLite file, or a dropped PostgreSQL schema.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from sqlalchemy import create_engine, select, text

from maildesk.cli import main
from maildesk.clock import ManualClock
from maildesk.config import from_mapping
from maildesk.models import Outbox
from tests.conftest import (
    PG_URL,
    RunningDaemon,
    _listening,
    make_mail,
    running_daemon,
    toml,
    wait_for,
)
from tests.smtp_sink import closed_port


def get_health(running: RunningDaemon) -> tuple[int, dict[str, Any]]:
    web = running.services.settings.web
    wait_for(lambda: _listening(web.host, web.port), what="the web listener")
    try:
        with urllib.request.urlopen(f"http://{web.host}:{web.port}/healthz", timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def deferred(running: RunningDaemon) -> int:
    with running.services.db.transaction() as session:
        return len(
            session.scalars(
                select(Outbox).where(Outbox.state == "pending", Outbox.last_error != "")
            ).all()
        )


def test_relay_down_longer_than_the_threshold_degrades_health(
    config_values: dict[str, Any], tmp_path: Path, clock: ManualClock
) -> None:
    config_values["health"] = {"outbox_failing_minutes": 30, "outbox_backlog_minutes": 120}
    with closed_port() as relay_port:
        config_values["outbound"] = {"url": f"smtp://127.0.0.1:{relay_port}"}
        with running_daemon(from_mapping(config_values, base_dir=tmp_path), clock) as running:
            running.send(make_mail())
            wait_for(lambda: deferred(running), what="the acknowledgement to be deferred")

            status, body = get_health(running)
            assert (status, body["status"], body["reasons"]) == (200, "ok", [])
            assert body["outbox_deferred"] == 1

            clock.advance(timedelta(minutes=29))
            assert get_health(running)[0] == 200
            clock.advance(timedelta(minutes=2))
            status, body = get_health(running)
            assert (status, body["status"]) == (503, "degraded")
            [reason] = body["reasons"]
            assert reason.startswith("outbox failing for 31 min")


def test_a_database_that_is_gone_degrades_health_and_status(
    config_values: dict[str, Any], tmp_path: Path, clock: ManualClock, config_file: Path
) -> None:
    settings = from_mapping(config_values, base_dir=tmp_path)
    with running_daemon(settings, clock) as running:
        assert get_health(running)[0] == 200
        assert CliRunner().invoke(main, ["--config", str(config_file), "status"]).exit_code == 0

        restore = _remove_database(settings.database.url, settings.sqlite_path)
        try:
            status, body = get_health(running)
            assert (status, body["status"], body["database"]) == (503, "degraded", "unreachable")
            assert body["reasons"][0].startswith("database unreachable")

            result = CliRunner().invoke(main, ["--config", str(config_file), "status", "--json"])
            assert result.exit_code == 1, result.output
            printed = json.loads(result.stdout)
            assert (printed["status"], printed["reasons"]) == ("degraded", body["reasons"])
            human = CliRunner().invoke(main, ["--config", str(config_file), "status"])
            assert "degraded" in human.stdout and "database unreachable" in human.stdout
        finally:
            restore()


def _remove_database(url: str, sqlite_path: Path | None) -> Any:
    """Make the database go away under the running daemon; returns how to undo that."""
    if sqlite_path is not None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{sqlite_path}{suffix}").unlink(missing_ok=True)
        return lambda: None
    schema = url.rsplit("search_path%3D", 1)[1]
    admin = create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))

    def recreate() -> None:  # the fixture drops it at the end
        with admin.begin() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
        admin.dispose()

    return recreate


def test_free_disk_below_the_threshold_degrades_health(
    config_values: dict[str, Any], tmp_path: Path, clock: ManualClock
) -> None:
    free_mb = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize // (1024 * 1024)
    config_values["health"] = {"min_free_disk_mb": free_mb + 10_000_000}
    with running_daemon(from_mapping(config_values, base_dir=tmp_path), clock) as running:
        status, body = get_health(running)
    assert status == 503
    assert any(r.startswith("free disk") for r in body["reasons"])
    # /healthz is public: it names what a disk holds, never where the files are.
    assert set(body["free_disk_mb"]) <= {"database", "outbox"}
    assert str(tmp_path) not in json.dumps(body)


def test_status_prints_ok_on_a_fresh_install(tmp_path: Path, config_values: dict[str, Any]) -> None:
    path = tmp_path / "maildesk.toml"
    path.write_text(toml(config_values))
    assert CliRunner().invoke(main, ["--config", str(path), "init"]).exit_code == 0
    result = CliRunner().invoke(main, ["--config", str(path), "status", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["status"] == "ok"
