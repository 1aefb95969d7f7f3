"""The `maildesk` group and the commands that run or feed the daemon: init, serve, deliver,
import."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import sys
from pathlib import Path

import click
from sqlalchemy.engine import make_url

from maildesk.app import Daemon
from maildesk.cli.base import EX_DATAERR, EX_TEMPFAIL, Context, pass_context
from maildesk.clock import SystemClock
from maildesk.db import Database
from maildesk.inbound import importer
from maildesk.inbound.store import Envelope, InboundStore


@click.group()
@click.option(
    "--config",
    "config_path",
    metavar="PATH",
    help="Config file (default: $MAILDESK_CONFIG, else config/maildesk.toml).",
)
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
@click.pass_context
def main(ctx: click.Context, config_path: str | None, verbose: bool) -> None:
    """maildesk: an email-first helpdesk daemon."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not verbose:
        for noisy in ("apscheduler", "mail-parser", "mailparser", "aiosmtpd", "mail.log"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    ctx.obj = Context(config_path)


@main.command()
@pass_context
def init(ctx: Context) -> None:
    """Create or migrate the database schema; generate the signing key if needed."""
    settings = ctx.settings
    if not settings.web.secret_key:
        _ensure_secret_key(settings.secret_key_path)
    services = ctx.services
    try:
        services.prepare()
    finally:
        services.db.dispose()
    click.echo(f"database ready: {_safe_url(settings.database.url)}", err=True)


def _ensure_secret_key(path: Path) -> None:
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_urlsafe(48) + "\n")
    click.echo(f"generated a signing key in {path}", err=True)


def _safe_url(url: str) -> str:
    """The database URL without its password, for logs."""
    return make_url(url).render_as_string(hide_password=True)


@main.command()
@pass_context
def serve(ctx: Context) -> None:
    """Run the daemon: SMTP/LMTP in, IMAP polling, the web listener, the outbox."""
    services = ctx.services
    asyncio.run(Daemon(services).run())


@main.command()
@click.option("--sender", "-f", default=None, help="Envelope sender (e.g. $SENDER); '' = null.")
@click.option("--recipient", "-r", multiple=True, help="Envelope recipient (repeatable).")
@pass_context
def deliver(ctx: Context, sender: str | None, recipient: tuple[str, ...]) -> None:
    """Store one message read from stdin (for an MTA pipe or procmail).

    Exit 0 once stored; 75 (EX_TEMPFAIL) when it could not be stored, so the MTA retries.
    """
    raw = sys.stdin.buffer.read()
    try:
        settings = ctx.settings
        if len(raw) > settings.smtp.max_message_size:
            click.echo(f"message of {len(raw)} bytes exceeds the size limit", err=True)
            sys.exit(EX_DATAERR)
        mail_from = "<>" if sender == "" else (sender or "")
        store = InboundStore(Database(settings.database.url), SystemClock())
        spool_id = store.put(raw, Envelope("deliver", mail_from, recipient))
    except SystemExit:
        raise
    except BaseException as exc:  # anything at all: the MTA must keep the message
        click.echo(f"could not store the message: {type(exc).__name__}: {exc}", err=True)
        sys.exit(EX_TEMPFAIL)
    click.echo(f"stored as {spool_id}", err=True)


@main.command("import")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--notify", is_flag=True, help="Send acknowledgements (off: old mail stays quiet).")
@pass_context
def import_(ctx: Context, path: Path, notify: bool) -> None:
    """Import an mbox file or a Maildir folder; safe to re-run."""
    services = ctx.services
    try:
        total = importer.count(path)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    stored = processed = 0
    batch: list[bytes] = []
    with click.progressbar(length=total, label="importing", file=sys.stderr) as bar:
        for raw in importer.read_messages(path):
            batch.append(raw)
            if len(batch) >= importer.BATCH:
                stored += importer.store_batch(services.store, batch, notify)
                processed += services.drain_inbound()
                bar.update(len(batch))
                batch = []
        if batch:
            stored += importer.store_batch(services.store, batch, notify)
            processed += services.drain_inbound()
            bar.update(len(batch))
    click.echo(
        f"{total} messages read, {stored} new, {total - stored} already imported, "
        f"{processed} processed",
        err=True,
    )
