"""The shipped unit file: systemd itself verifies it and rates its sandbox.

`systemd-analyze` works without systemd running (it reads the file); CI installs the
`systemd` package for it (.ci/run). The unit's ExecStart points at /opt/maildesk, which
does not exist here, so the copy checked points at this checkout's `maildesk`.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from maildesk import config

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "maildesk.service"
WORKER_UNIT = ROOT / "systemd" / "maildesk-worker@.service"
ANALYZE = shutil.which("systemd-analyze")
pytestmark = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


def _local_copy(tmp_path: Path, unit: Path = UNIT, name: str = "maildesk.service") -> Path:
    maildesk = Path(sys.executable).parent / "maildesk"
    text = unit.read_text().replace("/opt/maildesk/.venv/bin/maildesk", str(maildesk))
    copy = tmp_path / name
    copy.write_text(text)
    return copy


def test_systemd_analyze_verify_passes(tmp_path: Path) -> None:
    assert ANALYZE is not None
    result = subprocess.run(
        [ANALYZE, "verify", str(_local_copy(tmp_path))], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""


def test_the_sandbox_rates_2_5_or_better(tmp_path: Path) -> None:
    assert ANALYZE is not None
    result = subprocess.run(
        [ANALYZE, "security", "--offline=yes", str(_local_copy(tmp_path))],
        capture_output=True,
        text=True,
    )
    found = re.search(r"Overall exposure level for maildesk.service: ([\d.]+)", result.stdout)
    assert found, result.stdout + result.stderr
    assert float(found.group(1)) <= 2.5


def test_the_unit_asks_for_what_the_daemon_does() -> None:
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "WatchdogSec=30s",
        "TimeoutStopSec=30s",
        "StateDirectory=maildesk",
        "UMask=0027",
        "CapabilityBoundingSet=\n",
        "SystemCallFilter=@system-service",
        "RestartPreventExitStatus=78",
        "KillMode=mixed",
    ):
        assert line in text


def test_the_worker_unit_verifies_and_rates_2_5_or_better(tmp_path: Path) -> None:
    """systemd/maildesk-worker@.service, as instance 1, beside the main unit it is part of."""
    assert ANALYZE is not None
    _local_copy(tmp_path)
    worker = _local_copy(tmp_path, WORKER_UNIT, "maildesk-worker@1.service")
    verify = subprocess.run([ANALYZE, "verify", str(worker)], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr
    assert verify.stderr.strip() == ""
    security = subprocess.run(
        [ANALYZE, "security", "--offline=yes", str(worker)], capture_output=True, text=True
    )
    found = re.search(
        r"Overall exposure level for maildesk-worker@1.service: ([\d.]+)", security.stdout
    )
    assert found, security.stdout + security.stderr
    assert float(found.group(1)) <= 2.5
    assert "PartOf=maildesk.service" in WORKER_UNIT.read_text()


def test_the_example_config_keeps_everything_under_var_lib_maildesk() -> None:
    settings = config.load(ROOT / "systemd" / "maildesk.example.toml")
    assert settings.database.url == "sqlite:////var/lib/maildesk/maildesk.db"
    assert settings.outbound.url == "maildir:/var/lib/maildesk/outbox"
    assert str(settings.secret_key_path) == "/var/lib/maildesk/secret_key"
    assert Path(settings.templates.path).resolve() == config.PACKAGE_TEMPLATES.resolve()
    assert settings.state_folder == Path("/var/lib/maildesk")  # the kept language model
    # On PostgreSQL (the example's comment), the state directory is still the one the
    # service may write: the secret key file's folder, not `var/` beside /etc/maildesk.
    on_postgresql = dataclasses.replace(
        settings,
        database=dataclasses.replace(
            settings.database, url="postgresql+psycopg://maildesk@/maildesk"
        ),
    )
    assert on_postgresql.state_folder == Path("/var/lib/maildesk")


@pytest.mark.skipif(
    not (shutil.which("systemd-sysusers") and shutil.which("systemd-tmpfiles")),
    reason="systemd-sysusers/systemd-tmpfiles are not installed",
)
def test_sysusers_and_tmpfiles_make_the_user_and_the_folders(tmp_path: Path) -> None:
    """What systemd/README.md's steps do, into a scratch root instead of /."""
    root = tmp_path / "root"
    for folder in ("etc/sysusers.d", "etc/tmpfiles.d", "var/lib"):
        (root / folder).mkdir(parents=True)
    for name in ("passwd", "group", "shadow", "gshadow"):
        (root / "etc" / name).touch()
    shutil.copy(ROOT / "systemd/sysusers.d/maildesk.conf", root / "etc/sysusers.d/")
    shutil.copy(ROOT / "systemd/tmpfiles.d/maildesk.conf", root / "etc/tmpfiles.d/")
    for command in ("systemd-sysusers", "systemd-tmpfiles --create"):
        result = subprocess.run(
            [*command.split(), f"--root={root}", "maildesk.conf"], capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
    user = next(
        line.split(":")
        for line in (root / "etc/passwd").read_text().splitlines()
        if line.startswith("maildesk:")
    )
    uid, gid, home, shell = int(user[2]), int(user[3]), user[5], user[6]
    assert (home, shell) == ("/var/lib/maildesk", "/usr/sbin/nologin")
    etc, state = (root / "etc/maildesk").stat(), (root / "var/lib/maildesk").stat()
    assert (etc.st_uid, etc.st_gid, etc.st_mode & 0o777) == (0, gid, 0o750)
    assert (state.st_uid, state.st_gid, state.st_mode & 0o777) == (uid, gid, 0o750)
