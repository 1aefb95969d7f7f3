"""`maildesk spam list|release`: the mail held as spam, and letting a message through."""

from __future__ import annotations

from typing import Any

import click
from sqlalchemy import select

from maildesk.cli.base import Context, pass_context, print_json, table
from maildesk.cli.main import main
from maildesk.db import rare
from maildesk.models import Inbound, SpamHold
from maildesk.pipeline import spam as spam_stage
from maildesk.states import InboundState
from maildesk.tickets import views


@main.group()
def spam() -> None:
    """Messages held as spam: never acknowledged, never shown to agents."""


@spam.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_context
def spam_list(ctx: Context, as_json: bool) -> None:
    """Messages held as spam, with their scores; `spam release ID` lets one through."""
    with ctx.services.db.reading() as session:
        found = session.execute(
            select(Inbound.id, Inbound.received_at, Inbound.source, Inbound.mail_from, SpamHold)
            .join(SpamHold, SpamHold.inbound_id == Inbound.id)
            .where(rare(Inbound.state == InboundState.HELD))
            .order_by(Inbound.id)
        ).all()
        rows: list[dict[str, Any]] = [
            {
                "id": r.id,
                "received_at": views.iso(r.received_at),
                "source": r.source,
                "mail_from": r.mail_from,
                "from": r.SpamHold.from_addr,
                "subject": r.SpamHold.subject,
                "verdict_by": r.SpamHold.verdict_by,
                "score": r.SpamHold.score,
                "rules": [x for x in r.SpamHold.rules.split(",") if x],
                "held_at": views.iso(r.SpamHold.held_at),
            }
            for r in found
        ]
    if as_json:
        print_json(rows)
        return
    table(
        ["id", "received", "from", "subject", "by", "score", "rules"],
        [
            [
                r["id"],
                r["received_at"],
                r["from"],
                r["subject"],
                r["verdict_by"],
                "-" if r["score"] is None else f"{r['score']:.1f}",
                ",".join(r["rules"]),
            ]
            for r in rows
        ],
    )


@spam.command("release")
@click.argument("inbound_id", metavar="ID", type=int)
@pass_context
def spam_release(ctx: Context, inbound_id: int) -> None:
    """Process a held message as ham: it becomes a ticket, without another spam check."""
    services = ctx.services
    with services.db.transaction() as session:
        released = spam_stage.release(session, inbound_id, services.clock.now())
    if not released:
        raise click.ClickException(f"no message {inbound_id} held as spam")
    click.echo(f"message {inbound_id} released: it will be processed as ham", err=True)
