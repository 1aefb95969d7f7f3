"""`maildesk tickets ...`: list, show, create, close, export.

Reading commands open the database only (`ctx.db`); imports sit inside the
commands, so listing the commands imports nothing of the daemon.
"""

from __future__ import annotations

import os
from typing import Any

import click

from maildesk.cli.base import (
    Context,
    LazyChoice,
    pass_context,
    print_json,
    printable,
    stored_address,
    table,
)
from maildesk.cli.main import main

STATUSES = LazyChoice("maildesk.models:STATUSES")
PRIORITIES = LazyChoice("maildesk.models:PRIORITIES")


@main.group()
def tickets() -> None:
    """Look at, open and export tickets."""


@tickets.command("list")
@click.option("--status", type=STATUSES, help="Only tickets in this status.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_context
def tickets_list(ctx: Context, status: str | None, as_json: bool) -> None:
    """Every ticket (or those in --status), newest activity last."""
    from maildesk.tickets import views

    with ctx.db.reading() as session:
        rows = views.list_tickets(session, status)
        if as_json and ctx.settings.sla.enabled:
            _add_sla(ctx, session, rows)
    if as_json:
        print_json(rows)
        return
    table(
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


def _add_sla(ctx: Context, session: Any, rows: list[dict[str, Any]]) -> None:
    """Each row gets `sla`: due times, breached flags, share used, paused (tickets/sla.py)."""
    from sqlalchemy import select

    from maildesk.clock import SystemClock
    from maildesk.models import Ticket
    from maildesk.tickets import sla

    policy = sla.policy_from(ctx.settings.sla)
    now = SystemClock().now()
    for first in range(0, len(rows), 500):
        chunk = rows[first : first + 500]
        query = select(Ticket).where(Ticket.id.in_([r["number"] for r in chunk]))
        states = sla.states(session, policy, now, list(session.scalars(query)))
        for row in chunk:
            row["sla"] = states[row["number"]].as_json()


@tickets.command("search")
@click.argument("words", nargs=-1, required=True)
@click.option("--limit", default=20, show_default=True, help="At most this many tickets.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_context
def tickets_search(ctx: Context, words: tuple[str, ...], limit: int, as_json: bool) -> None:
    """Tickets whose subject or messages hold every one of WORDS (diacritics optional)."""
    from maildesk.redaction import redact_links
    from maildesk.tickets import views
    from maildesk.tickets.search import search

    with ctx.db.reading() as session:
        rows = [
            {**views.summary(hit.ticket, 0), "snippet": redact_links(hit.snippet)}
            for hit in search(session, " ".join(words), limit)
        ]
    for row in rows:
        del row["message_count"]
    if as_json:
        print_json(rows)
        return
    table(
        ["#", "status", "prio", "requester", "subject", "match"],
        [
            [r["number"], r["status"], r["priority"], r["requester"], r["subject"], r["snippet"]]
            for r in rows
        ],
    )


@tickets.command("show")
@click.argument("number", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (the shape of `export`).")
@pass_context
def tickets_show(ctx: Context, number: int, as_json: bool) -> None:
    """Ticket NUMBER with its events and messages."""
    from maildesk.models import Ticket
    from maildesk.tickets import views

    with ctx.db.reading() as session:
        ticket = session.get(Ticket, number)
        if ticket is None:
            raise click.ClickException(f"no ticket {number}")
        data = views.detail(ticket)
    if as_json:
        print_json(data)
        return
    # Each line through `printable`: subjects, names, filenames and bodies are
    # strangers' words.
    say = [f"Ticket #{data['number']}: {data['subject']}"]
    say.append(
        f"status {data['status']}, type {data['type'] or '-'}, priority {data['priority']}, "
        f"requester {data['requester']}"
    )
    for event in data["events"]:
        say.append(
            f"  {event['at']} {event['field']}: {event['old'] or '-'} -> {event['new'] or '-'}"
            f" by {event['actor']} ({event['via']})"
        )
    for m in data["messages"]:
        say.append("")
        arrow = "<-" if m["direction"] == "in" else "->"
        rule = f" [{m['thread_rule']}]" if m["thread_rule"] else ""
        say.append(f"{arrow} {m['created_at']} {m['kind']} from {m['from']}{rule}")
        say.append(f"   Subject: {m['subject']}")
        for a in m["attachments"]:
            say.append(f"   Attachment: {a['filename']} ({a['content_type']}, {a['size']} bytes)")
        say += (f"   {line}" for line in m["body_text"].splitlines())
    for line in say:
        click.echo(printable(line))


@tickets.command("create")
@click.option("--for", "customer", required=True, metavar="EMAIL", help="The customer.")
@click.option("--subject", required=True, help="The ticket's subject.")
@click.option("--priority", type=PRIORITIES, default="normal", show_default=True, help="Priority.")
@click.option("--channel", default="phone", show_default=True, help="How the request came in.")
@click.option("--description", default="", help="What the customer said (kept internal).")
@pass_context
def tickets_create(
    ctx: Context, customer: str, subject: str, priority: str, channel: str, description: str
) -> None:
    """Open a ticket on a customer's behalf; they get the acknowledgement."""
    from maildesk.intake import create_ticket

    customer = stored_address(customer)
    number = create_ticket(
        ctx.services,
        customer,
        subject,
        priority=priority,
        channel=channel,
        description=description,
        actor=os.environ.get("USER", "cli"),
    )
    click.echo(f"ticket {number} opened for {customer}")


@tickets.command("close")
@click.option("--from", "requester", required=True, metavar="EMAIL", help="Whose tickets to close.")
@click.option("--dry-run", is_flag=True, help="List the tickets; close nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_context
def tickets_close(ctx: Context, requester: str, dry_run: bool, as_json: bool) -> None:
    """Close every ticket EMAIL opened that is not closed yet, mailing no one: the clean-up
    after a flood (a monitor's alerts, a mail loop). Each gets a status event by $USER."""
    from maildesk.clock import SystemClock
    from maildesk.tickets import cleanup

    requester = stored_address(requester)
    if dry_run:
        with ctx.db.reading() as session:
            numbers = [t.id for t in cleanup.open_tickets_of(session, requester)]
    else:
        actor = os.environ.get("USER", "cli")
        numbers = cleanup.close_all_from(ctx.db, requester, SystemClock().now(), actor)
    if as_json:
        print_json(
            {"closed": [] if dry_run else numbers, "would_close": numbers if dry_run else []}
        )
        return
    verb = "would close" if dry_run else "closed"
    listed = " ".join(f"#{n}" for n in numbers[:20]) + (" …" if len(numbers) > 20 else "")
    click.echo(f"{verb} {len(numbers)} tickets of {requester}{': ' if numbers else ''}{listed}")


@tickets.command("export")
@click.option(
    "--attachments", is_flag=True, help="Include each attachment's content, base64-encoded."
)
@pass_context
def tickets_export(ctx: Context, attachments: bool) -> None:
    """Every ticket with its messages, one JSON object per line."""
    from maildesk.logs import json_text
    from maildesk.tickets import views

    # A read: an export of every ticket takes minutes, and must not hold the write lock.
    with ctx.db.reading() as session:
        for record in views.export(session):
            if attachments:
                views.add_attachment_contents(session, record)
            click.echo(json_text(record))
