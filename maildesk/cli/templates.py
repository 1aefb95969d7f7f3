"""`maildesk templates ...`: list, preview, check and send-test the notification templates.

Options are parsed and printed here; the sample data is decided in
templates_admin.py, and what counts as a problem in outbound/render.py.
`list`, `check` and `preview` without --ticket need neither the database nor
the signing key, so an admin can check an edit on any machine that has the
config and the templates.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from maildesk.cli.base import Context


@click.group()
def templates() -> None:
    """The notification templates admins edit in place (see templates/README.md)."""


@templates.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: name, languages, parts, who.")
@click.pass_obj
def templates_list(ctx: Context, as_json: bool) -> None:
    """Every template with its languages and parts (text, html)."""
    from maildesk import templates_admin
    from maildesk.outbound import canned
    from maildesk.outbound.render import discover

    path = ctx.settings.templates.path
    if as_json:
        rows = []
        for info in discover(path):
            kind = templates_admin.kind(info.name)
            rows.append(
                {
                    "name": info.name,
                    "languages": {lang: list(p) for lang, p in sorted(info.parts.items())},
                    "audience": str(kind.audience) if kind else None,
                    "language": str(kind.language_rule) if kind else None,
                    "automatic": kind.automatic if kind else None,
                    "sent_by_maildesk": kind is not None,
                }
            )
        replies = [
            {"name": f"replies/{name}", "languages": languages}
            for name, languages in canned.languages_of(path).items()
        ]
        click.echo(json.dumps({"path": str(path), "templates": rows, "replies": replies}, indent=2))
        return
    click.echo(f"templates in {path}", err=True)
    for info in discover(path):
        parts = "  ".join(f"{lang}: {'+'.join(p)}" for lang, p in sorted(info.parts.items()))
        kind = templates_admin.kind(info.name)
        audience = kind.audience if kind else "not sent by maildesk"
        click.echo(f"{info.name:<20} {parts:<32} ({audience})")
    for name, languages in canned.languages_of(path).items():
        click.echo(f"{'replies/' + name:<20} {', '.join(languages):<32} (canned reply: #reply)")


@templates.command("preview")
@click.argument("name")
@click.option("--ticket", "ticket_number", type=int, help="Use ticket N's real data.")
@click.option("--lang", "language", help="Language (default: the ticket's, else [support]).")
@click.option(
    "--html",
    "html_file",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Write the HTML part to FILE.",
)
@click.pass_obj
def templates_preview(
    ctx: Context, name: str, ticket_number: int | None, language: str | None, html_file: Path | None
) -> None:
    """Render NAME: the subject and text to stdout; with --html, the HTML part to a file."""
    from maildesk import templates_admin
    from maildesk.models import Ticket
    from maildesk.outbound.render import describe

    try:
        if ticket_number is None:
            notifier = templates_admin.sample_notifier(ctx.settings)
            rendered = templates_admin.preview(notifier, name, language, None)
        else:
            services = ctx.services
            with services.db.transaction() as session:
                ticket = session.get(Ticket, ticket_number)
                if ticket is None:
                    raise click.ClickException(f"no ticket {ticket_number}")
                rendered = templates_admin.preview(services.notifier, name, language, ticket)
    except click.ClickException:
        raise
    except Exception as exc:
        raise click.ClickException(describe(exc)) from None
    click.echo(f"Subject: {rendered.subject}")
    click.echo(f"Language: {rendered.language}")
    click.echo("")
    click.echo(rendered.text, nl=False)
    if html_file is not None:
        if rendered.html is None:
            raise click.ClickException(f"{name} has no HTML part in {rendered.language}")
        html_file.write_text(rendered.html, encoding="utf-8")
        click.echo(f"HTML part written to {html_file}", err=True)


@templates.command("check")
@click.pass_obj
def templates_check(ctx: Context) -> None:
    """Check every template: the ones maildesk sends exist in the default language, and each
    renders in every language against sample data. Exit 1 on any problem."""
    from maildesk import templates_admin
    from maildesk.outbound.render import discover

    settings = ctx.settings
    problems = templates_admin.problems(settings)
    for problem in problems:
        click.echo(str(problem))
    count = len(discover(settings.templates.path))
    if problems:
        click.echo(f"{len(problems)} problem(s) in the templates", err=True)
        raise SystemExit(1)
    click.echo(f"{count} templates OK", err=True)


@templates.command("send-test")
@click.argument("name")
@click.option("--to", "to", required=True, metavar="ADDR", help="Who gets the sample.")
@click.option("--lang", "language", help="Language (default: [support] language).")
@click.pass_obj
def templates_send_test(ctx: Context, name: str, to: str, language: str | None) -> None:
    """Queue NAME rendered with sample data for ADDR; the daemon sends it from the outbox."""
    from maildesk import templates_admin
    from maildesk.outbound.render import describe

    if "@" not in to or any(c.isspace() for c in to):
        raise click.ClickException(f"not an e-mail address: {to}")
    services = ctx.services
    try:
        outbox_id = templates_admin.send_test(services, name, to, language)
    except Exception as exc:
        raise click.ClickException(describe(exc)) from None
    click.echo(f"queued as outbox {outbox_id} for {to}", err=True)
