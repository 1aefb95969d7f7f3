"""Backups: a consistent copy of everything maildesk keeps, taken while it runs.

What a backup holds (each file 0600, the folder 0700):
- `maildesk.db`: the SQLite database, copied with SQLite's online backup API
  in one step. Under WAL that reads one consistent snapshot without stopping
  writers, so mail keeps flowing. Raw mail, tickets, attachments (the `blobs`
  table), accounts, the outbox and the quarantine are all in it.
- `maildesk.db.landing`: accepted mail not yet moved into the database
  (`inbound/landing.py`), copied the same way, before the database.
  For PostgreSQL there is no file: `pg_dump` is the tool (the manifest says the
  command), and the backup holds the rest.
- `secret_key`: the key that signs reply addresses, links and sessions.
  Without it, every reply address and link already sent stops working.
- `dkim.key`: the DKIM private key, when `[outbound] dkim_key` is set.
- `maildesk.toml`: the config file (it may hold passwords, hence 0600).
- `manifest.json`: what was copied, when, from which database, with sha256 sums.

Restore (SQLite) puts the database and keys where the *current* config
expects them, refusing to overwrite an existing database unless forced; then
`maildesk init` brings the schema up to date.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from maildesk.config import Settings
from maildesk.inbound import landing

DATABASE = "maildesk.db"
LANDING = "maildesk.db.landing"
SECRET_KEY = "secret_key"  # noqa: S105 - a file name
DKIM_KEY = "dkim.key"
CONFIG = "maildesk.toml"
MANIFEST = "manifest.json"


class BackupError(Exception):
    """The backup or restore cannot be done; the message says why."""


@dataclass(frozen=True)
class BackupResult:
    folder: Path
    files: tuple[str, ...]
    # For PostgreSQL: the command that dumps the database (not run by us).
    pg_dump: str = ""


def backup(
    settings: Settings, config_file: Path | None, folder: Path, now: datetime
) -> BackupResult:
    """Write a backup into `folder` (created 0700; must be empty if it exists)."""
    if folder.exists() and any(folder.iterdir()):
        raise BackupError(f"{folder} is not empty: back up into a new folder")
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    files: dict[str, str] = {}
    pg_dump = ""
    database = settings.sqlite_path
    if database is not None:
        if not database.exists():
            raise BackupError(f"no database at {database}")
        landed = landing.path_of(database)
        if landed.exists():
            # First: a row moved between the two copies is then in both (the move
            # skips it), never in neither.
            _sqlite_backup(landed, folder / LANDING)
            files[LANDING] = _sha256(folder / LANDING)
        _sqlite_backup(database, folder / DATABASE)
        files[DATABASE] = _sha256(folder / DATABASE)
    else:
        pg_dump = _pg_dump_command(settings.database.url, folder)
    if not settings.web.secret_key and settings.secret_key_path.exists():
        _copy_private(settings.secret_key_path, folder / SECRET_KEY)
        files[SECRET_KEY] = _sha256(folder / SECRET_KEY)
    if settings.outbound.dkim_key:
        _copy_private(Path(settings.outbound.dkim_key), folder / DKIM_KEY)
        files[DKIM_KEY] = _sha256(folder / DKIM_KEY)
    if config_file is not None and config_file.exists():
        _copy_private(config_file, folder / CONFIG)
        files[CONFIG] = _sha256(folder / CONFIG)
    manifest: dict[str, Any] = {
        "created_at": now.isoformat(),
        "database": "sqlite" if database is not None else "postgresql",
        "files": files,
    }
    if pg_dump:
        manifest["pg_dump"] = pg_dump
    _write_private(folder / MANIFEST, json.dumps(manifest, indent=2).encode() + b"\n")
    return BackupResult(folder, tuple(files), pg_dump)


def restore(settings: Settings, folder: Path, *, force: bool = False) -> list[Path]:
    """Put a backup's database and keys where `settings` expects them; returns what was written."""
    manifest = _manifest(folder)
    written: list[Path] = []
    target = settings.sqlite_path
    if manifest.get("database") == "sqlite":
        if target is None:
            raise BackupError(
                "this backup holds a SQLite database, but [database] url is not SQLite"
            )
        if target.exists() and not force:
            raise BackupError(f"{target} exists: stop the daemon and pass --force to replace it")
        target.parent.mkdir(parents=True, exist_ok=True)
        landed = landing.path_of(target)
        for file in (target, landed):
            for suffix in ("-wal", "-shm"):  # they belong to the database being replaced
                Path(f"{file}{suffix}").unlink(missing_ok=True)
        _copy_private(folder / DATABASE, target)
        written.append(target)
        if (folder / LANDING).exists():
            _copy_private(folder / LANDING, landed)
            written.append(landed)
        else:
            landed.unlink(missing_ok=True)
    if (folder / SECRET_KEY).exists() and not settings.web.secret_key:
        _copy_private(folder / SECRET_KEY, settings.secret_key_path)
        written.append(settings.secret_key_path)
    if (folder / DKIM_KEY).exists() and settings.outbound.dkim_key:
        _copy_private(folder / DKIM_KEY, Path(settings.outbound.dkim_key))
        written.append(Path(settings.outbound.dkim_key))
    return written


def _manifest(folder: Path) -> dict[str, Any]:
    try:
        manifest: dict[str, Any] = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        raise BackupError(f"{folder} holds no {MANIFEST}: not a maildesk backup") from None
    for name, digest in manifest.get("files", {}).items():
        if _sha256(folder / name) != digest:
            raise BackupError(f"{folder / name} does not match its checksum in {MANIFEST}")
    return manifest


def _sqlite_backup(source: Path, target: Path) -> None:
    """SQLite's online backup in one step: one consistent snapshot, writers never blocked."""
    _write_private(target, b"")
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst, pages=-1)
        # A standalone file: no WAL beside it.
        dst.execute("PRAGMA journal_mode=DELETE")
        check = dst.execute("PRAGMA quick_check").fetchone()
        if not check or check[0] != "ok":
            raise BackupError(f"the copy failed its integrity check: {check}")
    finally:
        dst.close()
        src.close()
    os.chmod(target, 0o600)


def _pg_dump_command(url: str, folder: Path) -> str:
    parsed = make_url(url)
    parts = ["pg_dump", "--format=custom", f"--file={folder / 'maildesk.pgdump'}"]
    if parsed.host:
        parts.append(f"--host={parsed.host}")
    if parsed.port:
        parts.append(f"--port={parsed.port}")
    if parsed.username:
        parts.append(f"--username={parsed.username}")
    parts.append(parsed.database or "")
    return " ".join(parts)


def _copy_private(source: Path, target: Path) -> None:
    _write_private(target, b"")
    with source.open("rb") as src, target.open("wb") as dst:
        shutil.copyfileobj(src, dst)
        dst.flush()
        os.fsync(dst.fileno())


def _write_private(path: Path, data: bytes) -> None:
    """Create or truncate `path` as 0600 whatever the umask, and write `data`."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
