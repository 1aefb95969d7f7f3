"""The upgrade that records where a person's name came from (migration 0019): every name
stored before it counts as given by unproven mail, so a forger's first mail from before
the upgrade gives way to the customer's proven mail after it; the downgrade keeps names.

Runs on SQLite, and on PostgreSQL when MAILDESK_TEST_DATABASE_URL is set.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import inspect, text

from maildesk import config
from maildesk.clock import ManualClock
from maildesk.db import Database
from maildesk.schema import downgrade, upgrade
from maildesk.services import build
from tests.conftest import make_mail
from tests.helpers import outbox_mail, outbox_rows, outbox_text, receive

FORGED_NAME = "URGENT call +1 555 0100 to keep your account"
_PERSON = (
    "INSERT INTO people (id, email, name, created_at, session_version)"
    " VALUES (:id, :email, :name, :now, 0)"
)


@pytest.fixture
def config_values(config_values: dict[str, Any]) -> dict[str, Any]:
    config_values["trust"]["authserv_ids"] = ["mx.example.test"]
    return config_values


def test_names_from_before_the_upgrade_give_way_to_proven_mail_only(
    settings: config.Settings, clock: ManualClock
) -> None:
    db = Database(settings.database.url)
    upgrade(db, "0018")
    with db.engine.begin() as connection:
        for values in (
            {"id": 1, "email": "alice@customer.test", "name": FORGED_NAME},
            {"id": 2, "email": "bob@customer.test", "name": "Bob Builder"},
        ):
            connection.execute(text(_PERSON), {**values, "now": clock.now()})
    db.dispose()

    services = build(settings, clock)
    services.prepare()  # `maildesk init` after installing the new version
    try:
        with services.db.engine.connect() as connection:
            stored = connection.execute(text("SELECT name_source FROM people ORDER BY id"))
            assert [source for (source,) in stored] == ["unproven", "unproven"]
            # Migration 0025 gives the people of before it their domain.
            domains = connection.execute(text("SELECT domain FROM people ORDER BY id"))
            assert domains.scalars().all() == ["customer.test", "customer.test"]
        signed = "mx.example.test; dkim=pass header.d=customer.test"
        mail = make_mail(
            sender="Alice Customer <alice@customer.test>", Authentication_Results=signed
        )
        receive(services, mail, source="deliver")  # through our MTA, which verified it
        receive(services, make_mail(sender="Bobby <bob@customer.test>"), mail_from="x@evil.test")
        by_recipient = {row.recipients[0]: row for row in outbox_rows(services)}
        alice, bob = by_recipient["alice@customer.test"], by_recipient["bob@customer.test"]
        assert str(outbox_mail(alice)["To"]) == "Alice Customer <alice@customer.test>"
        assert "Hello Alice Customer," in outbox_text(alice)
        assert "Hello Bob Builder," in outbox_text(bob)  # unproven mail renames nobody
    finally:
        services.db.dispose()

    downgrade(db, "0018")  # on SQLite a copy of the table, which tickets point at
    with db.engine.connect() as connection:
        assert "name_source" not in {c["name"] for c in inspect(connection).get_columns("people")}
        names = connection.execute(text("SELECT name FROM people ORDER BY id")).scalars().all()
    db.dispose()
    assert names == ["Alice Customer", "Bob Builder"]
