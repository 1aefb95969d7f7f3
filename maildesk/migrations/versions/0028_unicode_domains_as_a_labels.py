"""Agents' addresses and organizations' domains kept in Unicode become their A-labels

Since 2026-12-03 an agent's address and an organization's domain are kept as mail
writes them: a Unicode domain as its IDNA A-label (`jana@příklad.cz` is
`jana@xn--pklad-zsa96e.cz`). Rows kept before that stayed in Unicode: they never
matched mail (her own mail was a customer's; the organization grouped nobody), and
the config's seeding then added the agent a second time in the A-label form, so she
got two copies of each notice. Here every such row takes the A-label form, and rows
that then name one agent (or one domain) become one:

- Agents: the row already in the A-label form is kept when there is one (every
  command since the change, and any workaround typed in that form before it, acted
  on it), so its `active`, name and language stand; the others only fill in an
  empty name or language and the earliest `created_at`. Without one, the oldest row
  is kept, active if any of them was. The tickets they own, their `#watch`es,
  console requests and confirmations move to the kept row.
- Organizations: nothing points at them (they match people by domain); the row
  already in the A-label form is kept (it was added or renamed since the change),
  else the oldest. Leading `@` and a root dot go too, as `orgs add` now writes them.

A domain with no A-label (not a valid IDNA name) is left as it was: it matches
nothing, as before. The rule is copied here, not imported, so that this upgrade
does the same whatever the code later does with addresses.

Revision ID: 0028
Revises: 0027
Create Date: 2026-12-03
"""

from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import idna
import sqlalchemy as sa
from alembic import op

revision = "0028"
down_revision = "0027"
branch_labels = None
depends_on = None

_agents = sa.table(
    "agents",
    sa.column("id", sa.Integer),
    sa.column("email", sa.String),
    sa.column("name", sa.String),
    sa.column("active", sa.Boolean),
    sa.column("created_at"),  # as the database gives it: only compared and written back
    sa.column("language", sa.String),
)
_organizations = sa.table(
    "organizations", sa.column("id", sa.Integer), sa.column("domain", sa.String)
)
_watchers = sa.table("watchers", sa.column("ticket_id"), sa.column("agent_id"))
# The other columns that point at agents.id (models.py); watchers' is part of its key.
_AGENT_REFERENCES = (
    ("tickets", "owner_id"),
    ("console_requests", "agent_id"),
    ("confirmations", "agent_id"),
)


def _a_label(domain: str) -> str:
    """As `outbound.headers.a_label` (IDNA 2008 with UTS #46); the domain unchanged
    when it has none."""
    if domain.isascii() or len(domain) > 253:
        return domain
    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except UnicodeError:
        return domain


def _stored_address(address: str) -> str:
    """As `headers.as_stored`."""
    local, at, domain = address.strip().lower().rpartition("@")
    return f"{local}{at}{_a_label(domain) if at else domain}"


def _stored_domain(domain: str) -> str:
    """As `accounts.organization_domain`."""
    return _a_label(domain.strip().lower().removeprefix("@").removesuffix("."))


def _to_convert(
    rows: Sequence[Any], value: Callable[[Any], str], form: Callable[[str], str]
) -> Iterator[tuple[str, list[Any], Any | None]]:
    """The rows by the form they should be kept in, for forms some row is not in yet;
    each group's rows oldest first, then which one to keep: the row already in that
    form if any, else the oldest."""
    groups: dict[str, list[Any]] = defaultdict(list)
    for row in sorted(rows, key=lambda row: row.id):
        groups[form(value(row))].append(row)
    for stored, group in groups.items():
        if all(value(row) == stored for row in group):
            continue
        in_form = [row for row in group if value(row) == stored]
        yield stored, group, (in_form[0] if in_form else None)


def _merge_agents(bind: sa.Connection) -> None:
    rows = bind.execute(sa.select(_agents)).all()
    for stored, group, in_form in _to_convert(rows, lambda row: row.email, _stored_address):
        kept = in_form or group[0]
        others = [row for row in group if row.id != kept.id]
        dropped = [row.id for row in others]
        if dropped:
            for name, column in _AGENT_REFERENCES:
                table = sa.table(name, sa.column(column))
                bind.execute(
                    sa.update(table).where(table.c[column].in_(dropped)).values({column: kept.id})
                )
            # A ticket both rows watched is watched once: (ticket, agent) is the key.
            kept_watches = sa.select(_watchers.c.ticket_id).where(_watchers.c.agent_id == kept.id)
            bind.execute(
                sa.delete(_watchers).where(
                    _watchers.c.agent_id.in_(dropped),
                    _watchers.c.ticket_id.in_(kept_watches.scalar_subquery()),
                )
            )
            bind.execute(
                sa.update(_watchers)
                .where(_watchers.c.agent_id.in_(dropped))
                .values(agent_id=kept.id)
            )
            bind.execute(sa.delete(_agents).where(_agents.c.id.in_(dropped)))
        bind.execute(
            sa.update(_agents)
            .where(_agents.c.id == kept.id)
            .values(
                email=stored,
                name=kept.name or next((row.name for row in others if row.name), ""),
                language=kept.language or next((r.language for r in others if r.language), None),
                active=kept.active if in_form else any(row.active for row in group),
                created_at=min(row.created_at for row in group),
            )
        )


def _merge_organizations(bind: sa.Connection) -> None:
    rows = bind.execute(sa.select(_organizations)).all()
    for stored, group, in_form in _to_convert(rows, lambda row: row.domain, _stored_domain):
        kept = in_form or group[0]
        dropped = [row.id for row in group if row.id != kept.id]
        if dropped:
            bind.execute(sa.delete(_organizations).where(_organizations.c.id.in_(dropped)))
        bind.execute(
            sa.update(_organizations).where(_organizations.c.id == kept.id).values(domain=stored)
        )


def upgrade() -> None:
    bind = op.get_bind()
    _merge_agents(bind)
    _merge_organizations(bind)


def downgrade() -> None:
    """Nothing to undo: the Unicode forms matched nothing, and merged rows stay merged."""
