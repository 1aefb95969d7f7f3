"""`maildesk outbox|quarantine ...`: see and replay every place a message can wait."""

from __future__ import annotations

from typing import Any

import click

from maildesk.cli.base import Context, pass_context, print_json, table
from maildesk.cli.main import main
from maildesk.db import rare


@main.group()
def outbox() -> None:
    """Look at and retry outbound mail."""


@outbox.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--all", "show_all", is_flag=True, help="Include sent messages.")
@pass_context
def outbox_list(ctx: Context, as_json: bool, show_all: bool) -> None:
    """Unsent outbound mail (or all with --all): attempts, next try, last error."""
    from sqlalchemy import select

    from maildesk.models import Outbox
    from maildesk.states import OutboxState
    from maildesk.tickets import views

    with ctx.db.reading() as session:
        # The rows' text, not their bytes: a list must not load every queued message.
        query = select(Outbox).order_by(Outbox.id)
        if not show_all:
            query = query.where(Outbox.state != OutboxState.SENT)
        rows: list[dict[str, Any]] = [
            {
                "id": o.id,
                "ticket": o.ticket_id,
                "kind": o.kind,
                "state": o.state,
                "recipients": list(o.recipients),
                "message_id": o.message_id,
                "attempts": o.attempts,
                "next_attempt_at": (
                    views.iso(o.next_attempt_at) if o.state == OutboxState.PENDING else None
                ),
                "last_error": o.last_error,
                "created_at": views.iso(o.created_at),
                "sent_at": views.iso(o.sent_at),
            }
            for o in session.scalars(query)
        ]
    if as_json:
        print_json(rows)
        return
    table(
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
    """Send the failed or deferred message ID again now."""
    from maildesk.clock import SystemClock
    from maildesk.outbound import outbox as outbox_module

    try:
        queued = outbox_module.retry(ctx.db, SystemClock(), outbox_id)
    except outbox_module.Sending as exc:
        raise click.ClickException(f"{exc}; nothing changed") from exc
    if not queued:
        raise click.ClickException(f"no unsent outbox message {outbox_id}")
    click.echo(f"outbox {outbox_id} queued", err=True)


# -- quarantine ------------------------------------------------------------


@main.group()
def quarantine() -> None:
    """Messages held because they could not be processed."""


@quarantine.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_context
def quarantine_list(ctx: Context, as_json: bool) -> None:
    """Held messages with their reasons; `quarantine retry ID` replays one."""
    from sqlalchemy import select

    from maildesk.models import Inbound
    from maildesk.states import InboundState
    from maildesk.tickets import views

    with ctx.db.reading() as session:
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
                select(Inbound)
                .where(rare(Inbound.state == InboundState.QUARANTINED))
                .order_by(Inbound.id)
            )
        ]
    if as_json:
        print_json(rows)
        return
    table(
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
