"""`maildesk status|backup|restore`: what ops run by hand or from cron.

`status` prints what /healthz answers (the same module computes both) and
exits 1 when degraded, so a cron job or a monitoring check can act on it.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from maildesk.cli.base import Context, pass_context
from maildesk.cli.main import main


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the /healthz JSON.")
@pass_context
def status(ctx: Context, as_json: bool) -> None:
    """Say whether maildesk is healthy, and why not: exit 0 when ok, 1 when degraded."""
    from maildesk import health
    from maildesk.clock import SystemClock
    from maildesk.db import Database
    from maildesk.inbound.store import busiest_senders
    from maildesk.message import clean_text
    from maildesk.pipeline.quiet import Quiet, quiet_senders

    settings = ctx.settings
    clock = SystemClock()
    # Opening a SQLite URL would create an empty file where the database went missing.
    db = None if health.database_gone(settings) else Database(settings.database.url)
    busiest: list[tuple[str, int]] = []
    quiet: list[Quiet] = []
    try:
        result = health.check(settings, db, clock)
        if db is not None and result.backlog is not None:  # the database answered
            with db.reading() as session:
                if result.backlog.inbound_pending:
                    busiest = busiest_senders(session)
                quiet = quiet_senders(session, clock.now())
    finally:
        if db is not None:
            db.dispose()
    if as_json:
        body = result.as_json()
        body["busiest_senders"] = [{"sender": lane, "waiting": n} for lane, n in busiest]
        body["quiet_senders"] = [
            {"sender": q.sender, "since": q.since.isoformat(), "proven": q.proven} for q in quiet
        ]
        click.echo(json.dumps(body, indent=2))
    else:
        click.echo(result.status)
        for reason in result.reasons:
            click.echo(f"  - {reason}")
        backlog = result.backlog
        if backlog is not None:
            click.echo(
                f"inbound: {backlog.inbound_pending} pending, {backlog.quarantined} quarantined; "
                f"outbox: {backlog.outbox_pending} unsent ({backlog.outbox_deferred} deferred)"
            )
        if busiest:
            # Lanes are envelope senders, which strangers write: no control characters.
            named = (f"{clean_text(lane) or '(no sender)'} {n}" for lane, n in busiest)
            click.echo(f"busiest senders waiting: {', '.join(named)}")
        if quiet:
            told = (
                f"{clean_text(q.sender)} ({'proven' if q.proven else 'unproven'} mail,"
                f" since {q.since:%H:%M} UTC)"
                for q in quiet
            )
            click.echo(f"new tickets filed quietly, agents told once: {', '.join(told)}")
        for role, free in result.free_disk_mb.items():
            click.echo(f"free disk for the {role}: {free} MB")
    if not result.ok:
        raise SystemExit(1)


@main.command()
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@pass_context
def backup(ctx: Context, folder: Path) -> None:
    """Copy the database, the signing key and the config into FOLDER, while the daemon runs.

    SQLite is copied with its online backup API (one consistent snapshot). For
    PostgreSQL the command prints the pg_dump line to run; the rest is copied.
    Every file is 0600. Run it as the user the daemon runs as.
    """
    from maildesk.backup import BackupError
    from maildesk.backup import backup as take_backup
    from maildesk.clock import SystemClock

    try:
        result = take_backup(ctx.settings, ctx.path, folder, SystemClock().now())
    except BackupError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"backed up {', '.join(result.files)} to {result.folder}", err=True)
    if result.pg_dump:
        click.echo("the database is PostgreSQL: dump it with", err=True)
        click.echo(f"  {result.pg_dump}", err=True)


@main.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Replace an existing database (stop the daemon first).")
@pass_context
def restore(ctx: Context, folder: Path, force: bool) -> None:
    """Put a backup's database and keys where this config expects them.

    Then run `maildesk init` (it upgrades an older schema) and start the daemon.
    For PostgreSQL, restore the dump with pg_restore first.
    """
    from maildesk.backup import BackupError
    from maildesk.backup import restore as restore_backup

    try:
        written = restore_backup(ctx.settings, folder, force=force)
    except BackupError as exc:
        raise click.ClickException(str(exc)) from None
    for path in written:
        click.echo(f"restored {path}", err=True)
    click.echo("now run `maildesk init`, then start the daemon", err=True)
