"""What maildesk writes to disk is private whatever the umask (issue 7, #13).

The SQLite file holds raw mail, password hashes and live links; with the
usual umask 022 it used to be created world-readable, and its -wal and -shm
files with it.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from maildesk.db import Database
from tests.conftest import PG_URL, toml


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.skipif(bool(PG_URL), reason="file modes are SQLite's")
def test_init_creates_the_database_and_the_key_private_under_umask_000(
    tmp_path: Path, config_values: dict[str, Any]
) -> None:
    config_values["web"].pop("secret_key")
    config = tmp_path / "maildesk.toml"
    config.write_text(toml(config_values))
    subprocess.run(
        [sys.executable, "-m", "maildesk", "--config", str(config), "init"],
        check=True,
        capture_output=True,
        preexec_fn=lambda: os.umask(0),  # noqa: PLW1509 (a test's own child process)
    )
    database = tmp_path / "maildesk.db"
    assert mode(database) == 0o600
    assert mode(tmp_path / "secret_key") == 0o600

    # The daemon's own connections: -wal and -shm follow the database's mode.
    old = os.umask(0)
    try:
        db = Database(f"sqlite:///{database}")
        with db.transaction() as session:
            session.execute(text("CREATE TABLE IF NOT EXISTS probe (x INTEGER)"))
            session.execute(text("INSERT INTO probe VALUES (1)"))
        for suffix in ("-wal", "-shm"):
            extra = Path(f"{database}{suffix}")
            if extra.exists():
                assert mode(extra) == 0o600, suffix
        db.dispose()
    finally:
        os.umask(old)


@pytest.mark.skipif(bool(PG_URL), reason="file modes are SQLite's")
def test_an_existing_world_readable_database_is_narrowed(tmp_path: Path) -> None:
    database = tmp_path / "old.db"
    database.touch()
    database.chmod(0o644)
    db = Database(f"sqlite:///{database}")
    with db.transaction() as session:
        session.execute(text("SELECT 1"))
    db.dispose()
    assert mode(database) == 0o600
