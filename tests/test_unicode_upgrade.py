"""The upgrade that turns agents and organizations kept under a Unicode domain into the
A-label form mail uses (migration 0028).

Before 2026-12-03 `[agents] addresses = ["jana@příklad.cz"]` kept Jana so, and her own
mail (From `jana@xn--pklad-zsa96e.cz`) was never hers; the version of 2026-12-03 seeds
her in the A-label form, beside the old row, and she got two copies of every notice.
An organization added as `příklad.cz` grouped nobody. After the upgrade there is one
Jana, with what either row had (her tickets, her watches, her name), told once.

Runs on SQLite, and on PostgreSQL when MAILDESK_TEST_DATABASE_URL is set.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from maildesk import config
from maildesk.cli import main
from maildesk.clock import ManualClock
from maildesk.schema import upgrade
from maildesk.services import build
from maildesk.tickets.agents import Agents
from tests.conftest import make_mail
from tests.helpers import outbox_mail, outbox_rows, receive, ticket

JANA = "jana@xn--pklad-zsa96e.cz"


@pytest.fixture
def config_values(config_values: dict[str, Any]) -> dict[str, Any]:
    config_values["agents"]["addresses"] = ["jana@příklad.cz"]
    return config_values


def cli_json(config_file: Path, *args: str) -> Any:
    result = CliRunner().invoke(main, ["--config", str(config_file), *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def notices_to_jana(services: Any) -> list[str]:
    """The subjects of the agent notices mailed to Jana, one per copy, read from the
    mail's To (the old row's outbox rows name her as configured, the mail as sent)."""
    mails = [outbox_mail(row) for row in outbox_rows(services) if row.kind == "agent_notification"]
    return [str(mail["Subject"]) for mail in mails if mail["To"].addresses[0].addr_spec == JANA]


def test_agents_and_organizations_kept_in_unicode_become_one_in_the_a_label_form(
    settings: config.Settings, clock: ManualClock, config_file: Path
) -> None:
    services = build(settings, clock)
    upgrade(services.db, "0027")  # the schema as the versions before 0028 left it
    try:
        month_ago = clock.now() - timedelta(days=30)
        with services.db.engine.begin() as connection:
            # As versions before 2026-12-03 kept them: as configured or typed, lower case.
            connection.execute(
                text(
                    "INSERT INTO agents (email, name, active, created_at, language) "
                    "VALUES ('jana@příklad.cz', 'Jana', TRUE, :at, 'cs')"
                ),
                {"at": month_ago},
            )
            connection.execute(
                text(
                    "INSERT INTO organizations (domain, name, created_at) VALUES "
                    "('příklad.cz', 'Příklad', :at), ('@acme.test.', 'Acme', :at)"
                ),
                {"at": month_ago},
            )
        # The version of 2026-12-03 started: its seeding added her again, as mail names her.
        with services.db.transaction() as session:
            Agents(session).seed(settings.agents.addresses, clock.now())
        receive(services, make_mail("Printer broken", "Alice <alice@customer.test>"))
        assert len(notices_to_jana(services)) == 2  # one to each row: the bug
        with services.db.engine.begin() as connection:
            rows = connection.execute(text("SELECT email, id FROM agents")).all()
            ids = {email: id_ for email, id_ in rows}
            old, new = ids["jana@příklad.cz"], ids[JANA]
            # The old row owns ticket 1 (assigned on the command line before the change),
            # both rows watch it; each has a console request and a confirmation.
            at = {"at": clock.now(), "until": clock.now() + timedelta(days=1)}
            connection.execute(text(f"UPDATE tickets SET owner_id = {old} WHERE id = 1"))
            connection.execute(
                text(
                    "INSERT INTO watchers (ticket_id, agent_id, created_at) VALUES "
                    f"(1, {old}, :at), (1, {new}, :at)"
                ),
                at,
            )
            connection.execute(
                text(
                    "INSERT INTO console_requests (agent_id, message_id, at, proof) VALUES "
                    f"({old}, '<c1@x.test>', :at, ''), ({new}, '<c2@x.test>', :at, '')"
                ),
                at,
            )
            connection.execute(
                text(
                    "INSERT INTO confirmations (agent_id, ticket_id, commands, created_at, "
                    f"expires_at, used_via) VALUES ({old}, 1, '#close', :at, :until, ''), "
                    f"({new}, 1, '#open', :at, :until, '')"
                ),
                at,
            )

        services.prepare()  # `maildesk init` after installing the new version

        agents = cli_json(config_file, "agents", "list")
        assert [(a["email"], a["name"], a["language"]) for a in agents] == [(JANA, "Jana", "cs")]
        assert agents[0]["since"].startswith(month_ago.date().isoformat())
        assert ticket(services, 1)["owner"] == JANA
        with services.db.engine.connect() as connection:
            [kept] = connection.execute(text("SELECT id FROM agents")).scalars().all()
            for table in ("watchers", "console_requests", "confirmations"):
                pointed = connection.execute(text(f"SELECT agent_id FROM {table}")).scalars()
                expected = [kept] if table == "watchers" else [kept, kept]
                assert pointed.all() == expected, table
        # A new ticket reaches every agent once; the customer's reply, its owner once.
        before = len(notices_to_jana(services))
        receive(services, make_mail("Scanner broken", "Bob <bob@customer.test>"),
                mail_from="bob@customer.test")  # fmt: skip
        assert [s for s in notices_to_jana(services)[before:] if "[#2]" in s] != []
        assert len(notices_to_jana(services)) == before + 1

        orgs = cli_json(config_file, "orgs", "list")
        assert [(o["domain"], o["name"]) for o in orgs] == [
            ("acme.test", "Acme"),
            ("xn--pklad-zsa96e.cz", "Příklad"),
        ]
        receive(services, make_mail("Invoice", "Petr <petr@xn--pklad-zsa96e.cz>"),
                mail_from="petr@xn--pklad-zsa96e.cz")  # fmt: skip
        people = {p["email"]: p["organization"] for p in cli_json(config_file, "people", "list")}
        assert people["petr@xn--pklad-zsa96e.cz"] == "xn--pklad-zsa96e.cz"
    finally:
        services.db.dispose()


def test_an_organization_added_again_in_the_a_label_form_keeps_that_row(
    settings: config.Settings, clock: ManualClock, config_file: Path
) -> None:
    """An admin who found `příklad.cz` grouped nobody and added it again once `orgs add`
    kept the A-label: two rows for one domain; the newer name, given since, stays."""
    services = build(settings, clock)
    upgrade(services.db, "0027")
    try:
        with services.db.engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO organizations (domain, name, created_at) VALUES "
                    "('příklad.cz', 'Old name', :at), ('xn--pklad-zsa96e.cz', 'Příklad a.s.', :at)"
                ),
                {"at": clock.now()},
            )
        services.prepare()
        orgs = cli_json(config_file, "orgs", "list")
        assert [(o["domain"], o["name"]) for o in orgs] == [("xn--pklad-zsa96e.cz", "Příklad a.s.")]
    finally:
        services.db.dispose()
