"""Every start-up failure is one line on stderr naming the setting and the cause, with a
sysexits code: 78 for configuration, 69 for a service that does not answer, 75 for a port
in use. `--debug` keeps the traceback. Each case runs the real `maildesk serve`."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from maildesk import config
from maildesk.clock import ManualClock
from maildesk.config import PACKAGE_TEMPLATES
from maildesk.startup import EX_TEMPFAIL, StartupError, check_clock
from tests.conftest import PG_URL, free_port, toml
from tests.service_process import MAILDESK


def run(values: dict[str, Any], tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "maildesk.toml"
    config.write_text(toml(values))
    return subprocess.run(
        [*MAILDESK, "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The failure line; nothing else on stderr looks like one, and there is no traceback."""
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("maildesk: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_port_in_use_names_the_setting(config_values: dict[str, Any], tmp_path: Path) -> None:
    smtp = config_values["smtp"]
    with socket.socket() as taken:
        taken.bind((smtp["host"], smtp["port"]))
        taken.listen()
        result = run(config_values, tmp_path, "serve")
    assert result.returncode == 75
    assert one_line(result) == (
        f"maildesk: [smtp] port {smtp['port']} on 127.0.0.1: address already in use"
    )


def test_debug_keeps_the_traceback(config_values: dict[str, Any], tmp_path: Path) -> None:
    web = config_values["web"]
    with socket.socket() as taken:
        taken.bind((web["host"], web["port"]))
        taken.listen()
        result = run(config_values, tmp_path, "--debug", "serve")
    assert result.returncode == 75
    assert "Traceback" in result.stderr
    assert f"maildesk: [web] port {web['port']} on 127.0.0.1: address already in use" in (
        result.stderr.splitlines()
    )


def test_out_of_range_port_is_refused_when_the_config_loads(
    config_values: dict[str, Any], tmp_path: Path
) -> None:
    config_values["smtp"]["port"] = 99999
    result = run(config_values, tmp_path, "serve")
    assert result.returncode == 78
    assert one_line(result) == "maildesk: [smtp] port must be between 1 and 65535, not 99999"
    # Any command, not only serve: the config is refused where it is read.
    assert run(config_values, tmp_path, "tickets", "list").returncode == 78


def test_a_database_folder_that_cannot_be_made_names_the_path(
    config_values: dict[str, Any], tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the database folder should be")
    config_values["database"]["url"] = f"sqlite:///{blocker}/var/maildesk.db"
    result = run(config_values, tmp_path, "serve")
    assert result.returncode == 78
    assert one_line(result) == (
        f"maildesk: [database] url: cannot create the folder {blocker}/var: Not a directory"
    )


def test_unreachable_postgresql_is_unavailable(
    config_values: dict[str, Any], tmp_path: Path
) -> None:
    port = free_port()  # nothing listens there
    config_values["database"]["url"] = f"postgresql+psycopg://maildesk:s3cret@127.0.0.1:{port}/x"
    result = run(config_values, tmp_path, "serve")
    assert result.returncode == 69
    line = one_line(result)
    assert line.startswith(
        f"maildesk: [database] url: cannot connect to "
        f"postgresql+psycopg://maildesk:***@127.0.0.1:{port}/x: "
    )
    assert "s3cret" not in result.stderr


def test_mysql_is_refused_as_unsupported(config_values: dict[str, Any], tmp_path: Path) -> None:
    config_values["database"]["url"] = "mysql://maildesk:s3cret@db.example.test/maildesk"
    result = run(config_values, tmp_path, "serve")
    assert result.returncode == 78
    assert one_line(result).startswith("maildesk: [database] url: unsupported database 'mysql'")
    assert "s3cret" not in result.stderr


def test_missing_templates_stop_the_start_and_fail_templates_check(
    config_values: dict[str, Any], tmp_path: Path
) -> None:
    config_values["templates"] = {"path": "nowhere"}
    result = run(config_values, tmp_path, "serve")
    assert result.returncode == 78
    assert one_line(result) == f"maildesk: [templates] path: {tmp_path / 'nowhere'}: no such folder"
    # Before, `templates check` said "0 templates OK" and exited 0.
    check = run(config_values, tmp_path, "templates", "check")
    assert check.returncode == 1
    assert "no such folder" in check.stdout


def test_one_missing_template_is_named(config_values: dict[str, Any], tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(PACKAGE_TEMPLATES, templates)
    (templates / "en" / "resolved.txt.j2").unlink()
    config_values["templates"] = {"path": str(templates)}
    result = run(config_values, tmp_path, "serve")
    assert result.returncode == 78
    assert one_line(result) == (
        f"maildesk: [templates] path: {templates / 'en' / 'resolved.txt.j2'}: "
        "missing (maildesk sends it)"
    )
    check = run(config_values, tmp_path, "templates", "check")
    assert check.returncode == 1
    assert "resolved.txt.j2: missing" in check.stdout


def test_a_broken_template_is_named_with_its_line(
    config_values: dict[str, Any], tmp_path: Path
) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(PACKAGE_TEMPLATES, templates)
    closed = templates / "cs" / "closed.txt.j2"
    closed.write_text(closed.read_text() + "\n{% if %}\n")
    lines = closed.read_text().count("\n")
    config_values["templates"] = {"path": str(templates)}
    result = run(config_values, tmp_path, "serve")
    assert result.returncode == 78
    assert one_line(result).startswith(f"maildesk: [templates] path: {closed}:{lines}: ")


@pytest.mark.parametrize("key", ["secret_key"])
def test_no_signing_key_says_to_run_init(
    config_values: dict[str, Any], tmp_path: Path, key: str
) -> None:
    del config_values["web"][key]
    result = run(config_values, tmp_path, "serve")
    assert result.returncode == 78
    assert "run `maildesk init` first" in one_line(result)


@pytest.mark.skipif(not PG_URL, reason="needs PostgreSQL (MAILDESK_TEST_DATABASE_URL)")
@pytest.mark.parametrize(("offset", "way"), [(25, "ahead of"), (-6, "behind")])
def test_a_clock_off_the_databases_by_most_of_a_lease_stops_the_start(
    config_values: dict[str, Any], tmp_path: Path, offset: int, way: str
) -> None:
    """Instances judge each other's leases by their own clocks: one 25 s ahead took a
    live instance's claims 9 s after they were made, and sent its mail again. No
    machine's clock can be set wrong here, so the clock leases use is passed in."""
    config_values["database"]["url"] = PG_URL
    settings = config.from_mapping(config_values, base_dir=tmp_path)
    skewed = ManualClock(datetime.now(UTC) + timedelta(seconds=offset))
    with pytest.raises(StartupError) as refused:
        check_clock(settings, skewed)
    assert refused.value.exit_code == EX_TEMPFAIL  # NTP may sync it: a later restart may start
    assert re.search(rf"clock is ({abs(offset)}\.|{abs(offset) - 1}\.9)", str(refused.value))
    assert way in str(refused.value) and "NTP" in str(refused.value)

    check_clock(settings)  # this machine's own clock agrees with its PostgreSQL
    check_clock(settings, ManualClock(datetime.now(UTC) + timedelta(seconds=4)))


def test_sqlite_has_no_other_clock_to_agree_with(
    config_values: dict[str, Any], tmp_path: Path
) -> None:
    config_values["database"]["url"] = f"sqlite:///{tmp_path / 'maildesk.db'}"
    settings = config.from_mapping(config_values, base_dir=tmp_path)
    check_clock(settings, ManualClock(datetime.now(UTC) + timedelta(hours=3)))
