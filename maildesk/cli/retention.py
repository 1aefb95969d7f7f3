"""`maildesk purge [--dry-run]`: run the daemon's retention purge once, now."""

from __future__ import annotations

import click

from maildesk.cli.base import Context, pass_context, print_json
from maildesk.cli.main import main


@main.command()
@click.option("--dry-run", is_flag=True, help="Count what would go; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@pass_context
def purge(ctx: Context, dry_run: bool, as_json: bool) -> None:
    """Forget what [retention] says is old enough (as the daemon does hourly); print what went."""
    from maildesk import retention
    from maildesk.clock import SystemClock
    from maildesk.exclusive import singly

    settings = ctx.settings
    # The daemon's job holds the same lock: on PostgreSQL one purge runs at a time.
    purged = singly(
        ctx.db,
        "maildesk:job:purge",
        lambda: retention.purge(ctx.db, settings, SystemClock().now(), dry_run=dry_run),
    )
    if purged is None:
        raise click.ClickException("another instance is purging now; try again later")
    if as_json:
        print_json({"dry_run": dry_run, **purged.counts})
        return
    verb = "would remove" if dry_run else "removed"
    for kind, count in purged.counts.items():
        click.echo(f"{kind:<17} {verb} {count}")
