"""`maildesk agents|people|orgs ...`: who answers, who asks, who belongs together."""

from __future__ import annotations

import click

from maildesk.cli.base import Context, pass_context, print_json, stored_address, table
from maildesk.cli.main import main
from maildesk.config import LANGUAGES


@main.group()
def agents() -> None:
    """The people who answer tickets from their mail client."""


@agents.command("add")
@click.argument("email")
@click.option("--name", default="", help="Shown to customers as 'Name (Support name)'.")
@click.option(
    "--language",
    type=click.Choice(LANGUAGES),
    default=None,
    help="What the agent reads: labels, status names, errors (default: [support] language).",
)
@pass_context
def agents_add(ctx: Context, email: str, name: str, language: str | None) -> None:
    """Make EMAIL an agent (again, if it was removed)."""
    from maildesk.tickets.agents import Agents

    stored = stored_address(email)  # as `[agents] addresses` are kept
    services = ctx.services
    with services.db.transaction() as session:
        Agents(session).add(stored, name, services.clock.now(), language)
    click.echo(f"agent {stored} added", err=True)


@agents.command("language")
@click.argument("email")
@click.argument("language", type=click.Choice([*LANGUAGES, "default"]))
@pass_context
def agents_language(ctx: Context, email: str, language: str) -> None:
    """Set the language EMAIL reads maildesk's mail in ('default': [support] language)."""
    from maildesk.tickets.agents import Agents

    with ctx.db.transaction() as session:
        found = Agents(session).set_language(email, None if language == "default" else language)
    if not found:
        raise click.ClickException(f"no agent {email}")
    click.echo(f"agent {email.lower()} reads {language}", err=True)


@agents.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_context
def agents_list(ctx: Context, as_json: bool) -> None:
    """The active agents and since when."""
    from maildesk.tickets import views
    from maildesk.tickets.agents import Agents

    with ctx.db.transaction() as session:
        rows = [
            {
                "email": a.email,
                "name": a.name,
                "language": a.language,
                "since": views.iso(a.created_at),
            }
            for a in Agents(session).active()
        ]
    if as_json:
        print_json(rows)
        return
    table(
        ["email", "name", "language", "since"],
        [[r["email"], r["name"], r["language"] or "-", r["since"]] for r in rows],
    )


@agents.command("remove")
@click.argument("email")
@pass_context
def agents_remove(ctx: Context, email: str) -> None:
    """Stop treating EMAIL as an agent (their tickets keep their history)."""
    from maildesk.tickets.agents import Agents

    with ctx.db.transaction() as session:
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
    from maildesk.tickets.service import Tickets

    stored = stored_address(email)
    services = ctx.services
    with services.db.transaction() as session:
        person = Tickets(session).person(stored, "", services.clock.now())
        services.notices.invitation(session, person)
    click.echo(f"invitation queued for {stored}", err=True)


@people.command("language")
@click.argument("email")
@click.argument("language", type=click.Choice([*LANGUAGES, "default"]))
@pass_context
def people_language(ctx: Context, email: str, language: str) -> None:
    """Set the language EMAIL gets our mail in ('default': detected per ticket), as the portal's
    language page does."""
    from sqlalchemy import select

    from maildesk.models import Person
    from maildesk.outbound.headers import as_stored

    with ctx.db.transaction() as session:
        person = session.scalar(select(Person).where(Person.email == as_stored(email)))
        if person is not None:
            person.language = None if language == "default" else language
    if person is None:
        raise click.ClickException(f"no person {email}")
    click.echo(f"{as_stored(email)} gets mail in {language}", err=True)


@people.command("name")
@click.argument("email")
@click.argument("name", required=False)
@click.option(
    "--from-mail",
    is_flag=True,
    help="Let their next mail that proves its sender name them again, instead of NAME.",
)
@pass_context
def people_name(ctx: Context, email: str, name: str | None, from_mail: bool) -> None:
    """Set the name our mail greets EMAIL by ('' for none), as the portal's name page does.
    No mail changes it afterwards, not even their own, until `--from-mail` hands it back:
    the name stays until mail that proves its sender brings another."""
    from sqlalchemy import select

    from maildesk.models import Person
    from maildesk.outbound.headers import as_stored
    from maildesk.tickets.service import Tickets

    if from_mail == (name is not None):
        raise click.UsageError("give either NAME or --from-mail")
    with ctx.db.transaction() as session:
        person = session.scalar(select(Person).where(Person.email == as_stored(email)))
        if person is not None:
            if name is None:
                Tickets(session).name_from_mail(person)
                kept = person.name
            else:
                name = Tickets(session).set_name(person, name)
    if person is None:
        raise click.ClickException(f"no person {email}")
    if name is None:
        click.echo(f"{as_stored(email)} is named {kept!r} until proven mail names them", err=True)
    else:
        click.echo(f"{as_stored(email)} is named {name!r}", err=True)


@people.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_context
def people_list(ctx: Context, as_json: bool) -> None:
    """Everyone who wrote in, whether they have an account, and their organization."""
    from sqlalchemy import select

    from maildesk.models import Person
    from maildesk.tickets import views

    services = ctx.services
    with services.db.reading() as session:
        accounts = services.accounts(session)
        rows = []
        for person in session.scalars(select(Person).order_by(Person.id)):
            org = accounts.organization_of(person)
            rows.append(
                {
                    "email": person.email,
                    "name": person.name,
                    "name_source": person.name_source,
                    "language": person.language,
                    "account": person.password_hash is not None,
                    "invited_at": views.iso(person.invited_at),
                    "organization": org.domain if org else None,
                }
            )
    if as_json:
        print_json(rows)
        return
    table(
        ["email", "name", "language", "account", "organization"],
        [
            [
                r["email"],
                r["name"],
                r["language"] or "-",
                "yes" if r["account"] else "no",
                r["organization"] or "-",
            ]
            for r in rows
        ],
    )


@main.group()
def orgs() -> None:
    """Organizations: people of one e-mail domain see each other's tickets."""


@orgs.command("add")
@click.argument("domain")
@click.option("--name", required=True, help="The organization's name, shown in the portal.")
@pass_context
def orgs_add(ctx: Context, domain: str, name: str) -> None:
    """Group the people of DOMAIN (never a public mail provider's) into one organization."""
    services = ctx.services
    try:
        with services.db.transaction() as session:
            org = services.accounts(session).add_organization(domain, name, services.clock.now())
            added = org.domain  # as stored: a Unicode domain in its ASCII form
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"organization {added} added", err=True)


@orgs.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_context
def orgs_list(ctx: Context, as_json: bool) -> None:
    """The organizations and their domains."""
    from sqlalchemy import select

    from maildesk.models import Organization
    from maildesk.tickets import views

    with ctx.db.reading() as session:
        rows = [
            {"domain": o.domain, "name": o.name, "created_at": views.iso(o.created_at)}
            for o in session.scalars(select(Organization).order_by(Organization.domain))
        ]
    if as_json:
        print_json(rows)
        return
    table(["domain", "name"], [[r["domain"], r["name"]] for r in rows])
