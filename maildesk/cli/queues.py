"""`maildesk outbox|quarantine ...`: see and replay every place a message can wait."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import click

from maildesk.cli.base import Context, pass_context, print_json, printable, table
from maildesk.cli.main import main
from maildesk.db import rare

if TYPE_CHECKING:
    from maildesk.models import Inbound, QuarantineRetry


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
    """Held messages with their reasons; `quarantine show ID` tells one's story (its
    traceback, why it was held before each retry), `quarantine retry ID` replays it."""
    from sqlalchemy import select

    from maildesk.models import Inbound, QuarantineRetry
    from maildesk.states import InboundState

    held = rare(Inbound.state == InboundState.QUARANTINED)
    with ctx.db.reading() as session:
        earlier = _earlier(
            session.scalars(
                select(QuarantineRetry)
                .join(Inbound, Inbound.id == QuarantineRetry.inbound_id)
                .where(held)
                .order_by(QuarantineRetry.id)
            )
        )
        rows = [
            _held(row, earlier.get(row.id, []), traceback=False)
            for row in session.scalars(select(Inbound).where(held).order_by(Inbound.id))
        ]
    if as_json:
        print_json(rows)
        return
    table(
        ["id", "received", "source", "from", "size", "retried", "reason"],
        [
            [
                r["id"],
                r["received_at"],
                r["source"],
                r["mail_from"],
                r["size"],
                len(r["earlier"]) or "-",
                r["reason"],
            ]
            for r in rows
        ],
    )


@quarantine.command("show")
@click.argument("inbound_id", metavar="ID", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@pass_context
def quarantine_show(ctx: Context, inbound_id: int, as_json: bool) -> None:
    """A held message: why, its traceback, and why it was held before each retry (also
    for a message retried since, while it waits or once it went through)."""
    from sqlalchemy import select

    from maildesk.models import Inbound, QuarantineRetry
    from maildesk.states import InboundState

    with ctx.db.reading() as session:
        row = session.get(Inbound, inbound_id)
        earlier = _earlier(
            session.scalars(
                select(QuarantineRetry)
                .where(QuarantineRetry.inbound_id == inbound_id)
                .order_by(QuarantineRetry.id)
            )
        ).get(inbound_id, [])
        if row is None or (row.state != InboundState.QUARANTINED and not earlier):
            raise click.ClickException(f"no quarantined message {inbound_id}")
        shown = _held(row, earlier, traceback=True)
    if as_json:
        print_json(shown)
        return
    lines = [
        f"message {shown['id']}: {shown['state']}",
        f"received {shown['received_at']} by {shown['source']} from {shown['mail_from'] or '<>'}"
        f", {shown['size']} bytes",
    ]
    for before in shown["earlier"]:
        lines += [
            f"held {before['quarantined_at']}: {before['reason']}",
            f"retried {before['retried_at']} by {before['retried_by'] or '?'}",
        ]
    if shown["state"] == InboundState.QUARANTINED:
        lines.append(f"held {shown['quarantined_at']}: {shown['reason']}")
        if shown["error"]:
            lines += ["", *shown["error"].rstrip("\n").splitlines()]
    # Reasons and tracebacks hold strangers' words (an address, a header): nothing in
    # them may move the terminal's cursor or start a line of its own.
    for line in lines:
        click.echo(printable(line))


def _earlier(retries: Iterable[QuarantineRetry]) -> dict[int, list[dict[str, Any]]]:
    """The quarantines retried since, by message, oldest first."""
    from maildesk.tickets import views

    found: dict[int, list[dict[str, Any]]] = {}
    for retry in retries:
        found.setdefault(retry.inbound_id, []).append(
            {
                "quarantined_at": views.iso(retry.quarantined_at),
                "reason": retry.reason,
                "error": retry.error,
                "retried_at": views.iso(retry.retried_at),
                "retried_by": retry.retried_by,
            }
        )
    return found


def _held(row: Inbound, earlier: list[dict[str, Any]], *, traceback: bool) -> dict[str, Any]:
    """One message as `quarantine list` and `show` print it (`traceback`: its own and
    those of the quarantines before, for `show`)."""
    from maildesk.states import InboundState
    from maildesk.tickets import views

    held = row.state == InboundState.QUARANTINED
    shown: dict[str, Any] = {
        "id": row.id,
        "received_at": views.iso(row.received_at),
        "source": row.source,
        "mail_from": row.mail_from,
        "size": row.size,
        "state": row.state,
        "reason": row.reason if held else "",
        "attempts": row.attempts,
        "quarantined_at": views.iso(row.processed_at) if held else None,
        "earlier": [
            before if traceback else {k: v for k, v in before.items() if k != "error"}
            for before in earlier
        ],
    }
    if traceback:
        shown["error"] = row.error if held else ""
    return shown


@quarantine.command("retry")
@click.argument("inbound_id", metavar="ID", type=int)
@pass_context
def quarantine_retry(ctx: Context, inbound_id: int) -> None:
    """Put a held message back into the pipeline (after a fix or a config change); why
    it was held stays in `quarantine show`."""
    import os

    if not ctx.services.store.requeue(inbound_id, by=os.environ.get("USER", "cli")):
        raise click.ClickException(f"no quarantined message {inbound_id}")
    click.echo(f"message {inbound_id} queued for processing", err=True)
