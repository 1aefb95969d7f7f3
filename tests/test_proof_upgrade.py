"""The upgrade that keeps "the requester proved this ticket hers" on the ticket (migration
0026): a ticket proven before it by the requester's own mail with a proof stays proven
(its words reach her, her organization sees it); one proven by nothing stays unproven.

Runs on SQLite, and on PostgreSQL when MAILDESK_TEST_DATABASE_URL is set.
"""

from __future__ import annotations

from sqlalchemy import text

from maildesk import config
from maildesk.clock import ManualClock
from maildesk.schema import downgrade
from maildesk.services import build
from tests.conftest import make_mail
from tests.helpers import outbox_mail, outbox_rows, receive


def test_tickets_their_requesters_proved_before_the_upgrade_stay_proven(
    settings: config.Settings, clock: ManualClock
) -> None:
    services = build(settings, clock)
    services.prepare()
    try:
        receive(services, make_mail("Printer broken", "Alice <alice@customer.test>"))
        receive(services, make_mail("Scanner broken", "Bob <bob@customer.test>"),
                mail_from="bob@customer.test")  # fmt: skip
        [ack] = [r for r in outbox_rows(services) if r.recipients == ["alice@customer.test"]]
        token = outbox_mail(ack)["Reply-To"].addresses[0].addr_spec
        answer = make_mail("Re: [#1] Your request", "Alice <alice@customer.test>", to=token)
        receive(services, answer, rcpt_to=(token,))
        with services.db.engine.begin() as connection:
            proven = connection.execute(text("SELECT id FROM tickets WHERE sender_proven"))
            assert proven.scalars().all() == [1]  # her answer proved it hers
            # As a desk before 0026 kept it: only an opening mail's proof was kept.
            connection.execute(text("UPDATE tickets SET sender_proven = FALSE"))
        downgrade(services.db, "0025")
        services.prepare()  # `maildesk init` after installing the new version
        with services.db.engine.connect() as connection:
            proven = connection.execute(text("SELECT id FROM tickets WHERE sender_proven"))
            assert proven.scalars().all() == [1]
    finally:
        services.db.dispose()
