"""What stops the daemon from starting, said in one line with a sysexits code.

Every check here names the setting at fault and the cause, so that
`systemctl status maildesk` or a terminal shows what to fix without a
traceback (`maildesk --debug` keeps it). The exit code follows sysexits(3):
- 78 EX_CONFIG: the configuration is wrong (a bad value, a folder maildesk may
  not write, missing or broken templates, a port below 1024 without the right);
- 69 EX_UNAVAILABLE: a service maildesk needs does not answer (the database);
- 75 EX_TEMPFAIL: a port is in use, often by an instance still stopping, or the
  clock disagrees with PostgreSQL's (NTP may not have synced yet after a boot); a
  later restart may well succeed (systemd's `Restart=on-failure` retries).
"""

from __future__ import annotations

import errno
import os
import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from maildesk.clock import Clock
    from maildesk.config import Settings

EX_UNAVAILABLE = 69
EX_TEMPFAIL = 75
EX_CONFIG = 78


class StartupError(Exception):
    """The daemon cannot start: `str(error)` is the one line, `exit_code` the status."""

    def __init__(self, message: str, exit_code: int = EX_CONFIG) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def bind_failure(section: str, host: str, port: int, exc: OSError) -> StartupError:
    """A listener could not bind `host:port`: which setting, why, and whether to retry."""
    where = f"[{section}] port {port} on {host}"
    if exc.errno == errno.EADDRINUSE:
        return StartupError(f"{where}: address already in use", EX_TEMPFAIL)
    if exc.errno == errno.EACCES:
        return StartupError(
            f"{where}: permission denied (ports below 1024 need CAP_NET_BIND_SERVICE, "
            "see systemd/README.md)"
        )
    if exc.errno == errno.EADDRNOTAVAIL or isinstance(exc, socket.gaierror):
        return StartupError(f"[{section}] host {host}: not an address of this machine")
    return StartupError(f"{where}: {exc.strerror or exc}", EX_UNAVAILABLE)


def check_database_folder(settings: Settings) -> None:
    """SQLite: the database's folder exists (or can be made) and maildesk may write in it."""
    path = settings.sqlite_path
    if path is None:
        return
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StartupError(
            f"[database] url: cannot create the folder {folder}: {exc.strerror}"
        ) from None
    # SQLite writes its -wal and -shm files beside the database, so the folder must be
    # writable, not only the file.
    if not os.access(folder, os.W_OK | os.X_OK):
        raise StartupError(f"[database] url: the folder {folder} is not writable by {_user()}")
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise StartupError(f"[database] url: the file {path} is not writable by {_user()}")


def database_failure(url: str, exc: BaseException) -> StartupError:
    """The database did not answer: the URL without its password, and the driver's reason."""
    from sqlalchemy.engine import make_url

    try:
        shown = make_url(url).render_as_string(hide_password=True)
    except Exception:
        shown = "(unparsable URL)"
    orig = getattr(exc, "orig", None) or exc
    reason = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    if url.startswith("sqlite"):
        return StartupError(f"[database] url: cannot open {shown}: {reason}")
    return StartupError(f"[database] url: cannot connect to {shown}: {reason}", EX_UNAVAILABLE)


def check_database(url: str) -> None:
    """Open the database and ask it one trivial question."""
    from sqlalchemy import text

    from maildesk.db import make_engine

    try:
        engine = make_engine(url)
    except Exception as exc:
        raise database_failure(url, exc) from exc
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        raise database_failure(url, exc) from exc
    finally:
        engine.dispose()


def check_clock(settings: Settings, wall: Clock | None = None) -> None:
    """On PostgreSQL, this machine's clock agrees with the database's.

    Each instance stamps and judges leases by its own clock: one running ahead by
    most of a lease took a live instance's claims and sent its mail again. A live
    holder's lease has at least two thirds of `[workers] lease_seconds` left, so any
    two instances must agree within a third: each within a sixth of the database's.
    One that does not is a start-up error, as NTP is the fix, not maildesk.
    `wall`: the clock leases use here (the system's).
    """
    if not settings.database.url.startswith("postgresql"):
        return  # SQLite: one machine, one clock
    from sqlalchemy import text

    from maildesk.clock import SystemClock
    from maildesk.db import make_engine

    wall = wall or SystemClock()
    engine = make_engine(settings.database.url)
    try:
        with engine.connect() as conn:
            before = wall.now()
            theirs = conn.execute(text("SELECT clock_timestamp()")).scalar_one()
            after = wall.now()
    except Exception as exc:
        raise database_failure(settings.database.url, exc) from exc
    finally:
        engine.dispose()
    ours = before + (after - before) / 2
    skew = (ours - theirs).total_seconds()
    allowed = settings.workers.lease_seconds / 6
    if abs(skew) > allowed:
        way = "ahead of" if skew > 0 else "behind"
        raise StartupError(
            f"this machine's clock is {abs(skew):.1f} s {way} the database's; instances "
            f"judge each other's leases by their own clocks, so they must agree within "
            f"{allowed:.0f} s (a sixth of [workers] lease_seconds): keep them in time "
            "with NTP (systemd-timesyncd, chrony)",
            EX_TEMPFAIL,
        )


def check_templates(settings: Settings) -> None:
    """Every template maildesk sends exists, and every template compiles."""
    from maildesk import templates_admin

    problems = templates_admin.unusable(settings)
    if problems:
        more = f" (and {len(problems) - 1} more: `maildesk templates check`)"
        raise StartupError(f"[templates] path: {problems[0]}{more if len(problems) > 1 else ''}")


def check_secret_key(settings: Settings) -> None:
    from maildesk.config import ConfigError

    try:
        settings.secret_key()
    except ConfigError as exc:
        raise StartupError(str(exc)) from None
    except OSError as exc:
        raise StartupError(
            f"[web] secret_key_file: cannot read {settings.secret_key_path}: {exc.strerror}"
        ) from None


def check_all(settings: Settings) -> None:
    """What can be checked before any listener binds, cheapest first."""
    check_secret_key(settings)
    check_database_folder(settings)
    check_templates(settings)
    check_database(settings.database.url)
    check_clock(settings)


def _user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        return f"uid {os.getuid()}"
