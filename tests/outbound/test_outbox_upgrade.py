"""Mail waiting in the outbox survives the upgrade that moves its bytes (migration 0014),
and the downgrade puts them back.

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
from tests.conftest import Outbox, make_mail
from tests.helpers import outbox_rows
from tests.mailclient import sent

_ROW = (
    "INSERT INTO outbox (id, message_id, kind, sender, recipients, raw, auto_to, state, "
    "attempts, next_attempt_at, last_error, created_at, sent_at) VALUES (:id, :mid, "
    "'acknowledgement', 'support@example.test', '[\"alice@customer.test\"]', :raw, '', "
    ":state, 0, :now, '', :now, :sent_at)"
)


def test_mail_queued_before_the_upgrade_is_sent_after_it_and_can_go_back(
    settings: config.Settings, clock: ManualClock, outbox: Outbox
) -> None:
    raw = make_mail("Re: Invoice 2041", sender="support@example.test", to="alice@customer.test")
    db = Database(settings.database.url)
    migrations = alembic_config(db)
    with db.engine.begin() as connection:
        migrations.attributes["connection"] = connection
        command.upgrade(migrations, "0013")
        now = clock.now()
        for values in (
            {"id": 3, "mid": "old@example.test", "raw": b"", "state": "sent", "sent_at": now},
            {"id": 4, "mid": "md.1@example.test", "raw": raw, "state": "pending", "sent_at": None},
        ):
            connection.execute(text(_ROW), {**values, "now": now})
    db.dispose()

    services = build(settings, clock)
    services.prepare()  # `maildesk init` after installing the new version
    try:
        assert services.sender().send_due() == 1
        assert [mail.raw for mail in sent(outbox)] == [raw]  # byte-identical from its new place
        assert [row.raw for row in outbox_rows(services)] == [b"", raw]
    finally:
        services.db.dispose()

    with db.engine.begin() as connection:
        migrations.attributes["connection"] = connection
        command.downgrade(migrations, "0013")
        back = connection.execute(text("SELECT id, raw FROM outbox ORDER BY id")).all()
    db.dispose()
    assert [(row.id, bytes(row.raw)) for row in back] == [(3, b""), (4, raw)]
