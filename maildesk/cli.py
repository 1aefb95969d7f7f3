"""The `maildesk` command: parse options, call a service, print. No business rules here."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import secrets
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import click
from sqlalchemy import select
from sqlalchemy.engine import make_url

from maildesk import config as config_module
from maildesk.app import Daemon, Services, build
from maildesk.cli_templates import templates
from maildesk.clock import SystemClock
from maildesk.config import ConfigError, Settings
from maildesk.db import Database
from maildesk.inbound import importer
from maildesk.inbound.store import Envelope, InboundStore
from maildesk.intake import create_ticket
from maildesk.models import PRIORITIES, STATUSES, Inbound, Organization, Outbox, Person, Ticket
from maildesk.outbound import outbox as outbox_module
from maildesk.tickets import views
from maildesk.tickets.agents import Agents
from maildesk.tickets.service import Tickets

_EMAIL = re.compile(r"^[^@\s<>(),;:\"\[\]\\]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$")

EX_DATAERR = 65
EX_TEMPFAIL = 75  # sysexits.h: the MTA keeps the message and retries


class Context:
    def __init__(self, config_path: str | None) -> None:
        self.path = config_module.config_path(config_path)
        self._settings: Settings | None = None
        self._services: Services | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            try:
                self._settings = config_module.load(self.path)
            except ConfigError as exc:
                raise click.ClickException(str(exc)) from None
        return self._settings

    @property
    def services(self) -> Services:
        if self._services is None:
            try:
                self._services = build(self.settings)
            except ConfigError as exc:
                raise click.ClickException(str(exc)) from None
        return self._services


pass_context = click.make_pass_decorator(Context)


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


# -- tickets ---------------------------------------------------------------


@main.group()
def tickets() -> None:
    """Look at tickets."""


@tickets.command("list")
@click.option("--status", type=click.Choice(STATUSES))
@click.option("--json", "as_json", is_flag=True)
@pass_context
def tickets_list(ctx: Context, status: str | None, as_json: bool) -> None:
    with ctx.services.db.transaction() as session:
        rows = views.list_tickets(session, status)
    if as_json:
        _print_json(rows)
        return
    _table(
        ["#", "status", "type", "prio", "msgs", "requester", "subject"],
        [
            [
                r["number"],
                r["status"],
                r["type"] or "-",
                r["priority"],
                r["message_count"],
                r["requester"],
                r["subject"],
            ]
            for r in rows
        ],
    )


@tickets.command("show")
@click.argument("number", type=int)
@click.option("--json", "as_json", is_flag=True)
@pass_context
def tickets_show(ctx: Context, number: int, as_json: bool) -> None:
    with ctx.services.db.transaction() as session:
        ticket = session.get(Ticket, number)
        if ticket is None:
            raise click.ClickException(f"no ticket {number}")
        data = views.detail(ticket)
    if as_json:
        _print_json(data)
        return
    click.echo(f"Ticket #{data['number']}: {data['subject']}")
    click.echo(
        f"status {data['status']}, type {data['type'] or '-'}, priority {data['priority']}, "
        f"requester {data['requester']}"
    )
    for event in data["events"]:
        click.echo(
            f"  {event['at']} {event['field']}: {event['old'] or '-'} -> {event['new'] or '-'}"
            f" by {event['actor']} ({event['via']})"
        )
    for m in data["messages"]:
        click.echo("")
        arrow = "<-" if m["direction"] == "in" else "->"
        rule = f" [{m['thread_rule']}]" if m["thread_rule"] else ""
        click.echo(f"{arrow} {m['created_at']} {m['kind']} from {m['from']}{rule}")
        click.echo(f"   Subject: {m['subject']}")
        for a in m["attachments"]:
            click.echo(f"   Attachment: {a['filename']} ({a['content_type']}, {a['size']} bytes)")
        for line in m["body_text"].splitlines():
            click.echo(f"   {line}")


@tickets.command("create")
@click.option("--for", "customer", required=True, metavar="EMAIL", help="The customer.")
@click.option("--subject", required=True)
@click.option("--priority", type=click.Choice(PRIORITIES), default="normal")
@click.option("--channel", default="phone", show_default=True, help="How the request came in.")
@click.option("--description", default="", help="What the customer said (kept internal).")
@pass_context
def tickets_create(
    ctx: Context, customer: str, subject: str, priority: str, channel: str, description: str
) -> None:
    """Open a ticket on a customer's behalf; they get the acknowledgement."""
    if not _EMAIL.match(customer):
        raise click.ClickException(f"not an e-mail address: {customer}")
    number = create_ticket(
        ctx.services,
        customer.lower(),
        subject,
        priority=priority,
        channel=channel,
        description=description,
        actor=os.environ.get("USER", "cli"),
    )
    click.echo(f"ticket {number} opened for {customer}")


@tickets.command("export")
@pass_context
def tickets_export(ctx: Context) -> None:
    """Every ticket with its messages, one JSON object per line."""
    with ctx.services.db.transaction() as session:
        for record in views.export(session):
            click.echo(json.dumps(record, ensure_ascii=False))


# -- agents ----------------------------------------------------------------


@main.group()
def agents() -> None:
    """The people who answer tickets from their mail client."""


@agents.command("add")
@click.argument("email")
@click.option("--name", default="", help="Shown to customers as 'Name (Support name)'.")
@pass_context
def agents_add(ctx: Context, email: str, name: str) -> None:
    if not _EMAIL.match(email):
        raise click.ClickException(f"not an e-mail address: {email}")
    services = ctx.services
    with services.db.transaction() as session:
        Agents(session).add(email, name, services.clock.now())
    click.echo(f"agent {email.lower()} added", err=True)


@agents.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_context
def agents_list(ctx: Context, as_json: bool) -> None:
    with ctx.services.db.transaction() as session:
        rows = [
            {"email": a.email, "name": a.name, "since": views.iso(a.created_at)}
            for a in Agents(session).active()
        ]
    if as_json:
        _print_json(rows)
        return
    _table(["email", "name", "since"], [[r["email"], r["name"], r["since"]] for r in rows])


@agents.command("remove")
@click.argument("email")
@pass_context
def agents_remove(ctx: Context, email: str) -> None:
    with ctx.services.db.transaction() as session:
        removed = Agents(session).remove(email)
    if not removed:
        raise click.ClickException(f"no agent {email}")
    click.echo(f"agent {email.lower()} removed", err=True)


# -- people and organizations ------------------------------------------------


@main.group()
def people() -> None:
    """Customers, and their optional web accounts."""


@people.command("invite")
@click.argument("email")
@pass_context
def people_invite(ctx: Context, email: str) -> None:
    """Mail EMAIL a fresh set-password link (older links stop working)."""
    if not _EMAIL.match(email):
        raise click.ClickException(f"not an e-mail address: {email}")
    services = ctx.services
    with services.db.transaction() as session:
        person = Tickets(session).person(email, "", services.clock.now())
        services.notices.invitation(session, person)
    click.echo(f"invitation queued for {email.lower()}", err=True)


@people.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_context
def people_list(ctx: Context, as_json: bool) -> None:
    services = ctx.services
    with services.db.transaction() as session:
        accounts = services.accounts(session)
        rows = []
        for person in session.scalars(select(Person).order_by(Person.id)):
            org = accounts.organization_of(person)
            rows.append(
                {
                    "email": person.email,
                    "name": person.name,
                    "language": person.language,
                    "account": person.password_hash is not None,
                    "invited_at": views.iso(person.invited_at),
                    "organization": org.domain if org else None,
                }
            )
    if as_json:
        _print_json(rows)
        return
    _table(
        ["email", "name", "account", "organization"],
        [
            [r["email"], r["name"], "yes" if r["account"] else "no", r["organization"] or "-"]
            for r in rows
        ],
    )


@main.group()
def orgs() -> None:
    """Organizations: people of one e-mail domain see each other's tickets."""


@orgs.command("add")
@click.argument("domain")
@click.option("--name", required=True)
@pass_context
def orgs_add(ctx: Context, domain: str, name: str) -> None:
    services = ctx.services
    try:
        with services.db.transaction() as session:
            services.accounts(session).add_organization(domain, name, services.clock.now())
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"organization {domain.lower()} added", err=True)


@orgs.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_context
def orgs_list(ctx: Context, as_json: bool) -> None:
    with ctx.services.db.transaction() as session:
        rows = [
            {"domain": o.domain, "name": o.name, "created_at": views.iso(o.created_at)}
            for o in session.scalars(select(Organization).order_by(Organization.domain))
        ]
    if as_json:
        _print_json(rows)
        return
    _table(["domain", "name"], [[r["domain"], r["name"]] for r in rows])


# -- outbox ----------------------------------------------------------------


@main.group()
def outbox() -> None:
    """Look at and retry outbound mail."""


@outbox.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.option("--all", "show_all", is_flag=True, help="Include sent messages.")
@pass_context
def outbox_list(ctx: Context, as_json: bool, show_all: bool) -> None:
    with ctx.services.db.transaction() as session:
        query = select(Outbox).order_by(Outbox.id)
        if not show_all:
            query = query.where(Outbox.state != "sent")
        rows: list[dict[str, Any]] = [
            {
                "id": o.id,
                "ticket": o.ticket_id,
                "kind": o.kind,
                "state": o.state,
                "recipients": list(o.recipients),
                "message_id": o.message_id,
                "attempts": o.attempts,
                "next_attempt_at": views.iso(o.next_attempt_at) if o.state == "pending" else None,
                "last_error": o.last_error,
                "created_at": views.iso(o.created_at),
                "sent_at": views.iso(o.sent_at),
            }
            for o in session.scalars(query)
        ]
    if as_json:
        _print_json(rows)
        return
    _table(
        ["id", "ticket", "state", "tries", "to", "kind", "last error"],
        [
            [
                r["id"],
                r["ticket"] or "-",
                r["state"],
                r["attempts"],
                ", ".join(r["recipients"]),
                r["kind"],
                r["last_error"],
            ]
            for r in rows
        ],
    )


@outbox.command("retry")
@click.argument("outbox_id", metavar="ID", type=int)
@pass_context
def outbox_retry(ctx: Context, outbox_id: int) -> None:
    """Send a failed or deferred message again now."""
    services = ctx.services
    if not outbox_module.retry(services.db, services.clock, outbox_id):
        raise click.ClickException(f"no unsent outbox message {outbox_id}")
    click.echo(f"outbox {outbox_id} queued", err=True)


# -- quarantine ------------------------------------------------------------


@main.group()
def quarantine() -> None:
    """Messages held because they could not be processed."""


@quarantine.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_context
def quarantine_list(ctx: Context, as_json: bool) -> None:
    with ctx.services.db.transaction() as session:
        rows = [
            {
                "id": row.id,
                "received_at": views.iso(row.received_at),
                "source": row.source,
                "mail_from": row.mail_from,
                "size": row.size,
                "reason": row.reason,
                "attempts": row.attempts,
            }
            for row in session.scalars(
                select(Inbound).where(Inbound.state == "quarantined").order_by(Inbound.id)
            )
        ]
    if as_json:
        _print_json(rows)
        return
    _table(
        ["id", "received", "source", "from", "size", "reason"],
        [
            [r["id"], r["received_at"], r["source"], r["mail_from"], r["size"], r["reason"]]
            for r in rows
        ],
    )


@quarantine.command("retry")
@click.argument("inbound_id", metavar="ID", type=int)
@pass_context
def quarantine_retry(ctx: Context, inbound_id: int) -> None:
    """Put a held message back into the pipeline (after a fix or a config change)."""
    if not ctx.services.store.requeue(inbound_id):
        raise click.ClickException(f"no quarantined message {inbound_id}")
    click.echo(f"message {inbound_id} queued for processing", err=True)


# -- output helpers ----------------------------------------------------------


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, ensure_ascii=False, indent=2))


def _table(headers: list[str], rows: Iterable[list[Any]]) -> None:
    rows = [[str(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [min(max(w, len(c)), 60) for w, c in zip(widths, row, strict=True)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in rows:
        click.echo("  ".join(c[:w].ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


main.add_command(templates)
