"""Mail waiting in the spool survives the upgrade that moves its bytes (migration 0012).

Runs on SQLite, and on PostgreSQL when MAILDESK_TEST_DATABASE_URL is set.
"""

from __future__ import annotations

from alembic import command
from sqlalchemy import text

from maildesk import config
from maildesk.clock import ManualClock
from maildesk.db import Database
from maildesk.schema import alembic_config
from maildesk.services import build
from tests.conftest import make_mail
from tests.helpers import tickets


def test_a_message_stored_before_the_upgrade_is_processed_after_it(
    settings: config.Settings, clock: ManualClock
) -> None:
    raw = make_mail("Invoice 2041 is wrong", body="The total misses the discount.")
    db = Database(settings.database.url)
    migrations = alembic_config(db)
    with db.engine.begin() as connection:
        migrations.attributes["connection"] = connection
        command.upgrade(migrations, "0011")
        connection.execute(
            text(
                "INSERT INTO inbound (id, received_at, source, mail_from, peer, rcpt_to, raw, "
                "size, digest, notify, state, attempts, reason, error) VALUES (7, :now, "
                "'smtp', 'alice@customer.test', '', '[\"support@example.test\"]', :raw, :size, "
                "'', true, 'pending', 0, '', '')"
            ),
            {"now": clock.now(), "raw": raw, "size": len(raw)},
        )
    db.dispose()

    services = build(settings, clock)
    services.prepare()  # `maildesk init` after installing the new version
    try:
        assert services.drain_inbound() == 1
        assert [t["subject"] for t in tickets(services)] == ["Invoice 2041 is wrong"]
        assert services.store.load(7).raw == raw  # byte-identical in its new place
    finally:
        services.db.dispose()
