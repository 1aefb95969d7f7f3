"""Messages written together: one that fails in the database stages costs the others
nothing. The group is written without a savepoint per message and, when one fails,
rolled back and written again, each in a savepoint (`Processor._write`): nothing the
first try wrote may survive twice, and nothing of the good messages may be lost."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import event, func, select

from maildesk.inbound.store import Envelope
from maildesk.models import Message
from maildesk.services import Services
from maildesk.tickets.search import search
from tests.conftest import eml, make_mail
from tests.helpers import inbound_row, outbox_rows, tickets

SUPPORT = ("support@example.test",)


def test_a_failure_between_good_messages_leaves_each_good_one_stored_once(
    services: Services,
) -> None:
    before = services.store.put(
        make_mail(sender="alice@customer.test", subject="Printer jams", message_id="<a@c.test>"),
        Envelope("smtp", "alice@customer.test", SUPPORT),
    )
    # A report of a failed delivery of mail we never sent: quarantined in the database
    # stages, after the message before it was written in the same transaction.
    bounce = eml("bounce-postfix-dsn.eml").replace(b"{ORIGINAL_ID}", b"never.sent@example.test")
    failing = services.store.put(bounce, Envelope("smtp", "<>", SUPPORT))
    after = services.store.put(
        make_mail(sender="bob@customer.test", subject="Scanner smokes", message_id="<b@c.test>"),
        Envelope("smtp", "bob@customer.test", SUPPORT),
    )

    assert services.processor.process_pending().processed == 3

    held = inbound_row(services, failing)
    assert (held.state, held.reason) == ("quarantined", "bounce for no message maildesk sent")
    assert [inbound_row(services, i).state for i in (before, after)] == ["done", "done"]
    assert sorted(t["subject"] for t in tickets(services)) == ["Printer jams", "Scanner smokes"]
    acks = sorted(
        row.recipients[0] for row in outbox_rows(services) if row.kind == "acknowledgement"
    )
    assert acks == ["alice@customer.test", "bob@customer.test"]
    with services.db.reading() as session:
        stored = session.execute(
            select(Message.inbound_id, func.count())
            .where(Message.direction == "in")
            .group_by(Message.inbound_id)
        ).all()
        assert sorted(stored) == [(before, 1), (after, 1)]
        # The search index holds each good message once, and nothing of the failed try.
        assert [hit.ticket.subject for hit in search(session, "jams")] == ["Printer jams"]
        assert [hit.ticket.subject for hit in search(session, "smokes")] == ["Scanner smokes"]


def test_a_flood_of_failing_mail_is_not_written_twice(
    services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    """Backscatter: bounces of mail we never sent, dozens in a row. After the first
    failure the processor writes each message in its savepoint until some pass without
    one, so only the first group is tried twice, not every group of the storm."""
    storm = [
        eml("bounce-postfix-dsn.eml").replace(b"{ORIGINAL_ID}", b"forged.%d@example.test" % n)
        for n in range(40)
    ]
    ids = [services.store.put(raw, Envelope("smtp", "<>", SUPPORT)) for raw in storm]
    good = services.store.put(
        make_mail(subject="Still here"), Envelope("smtp", "alice@customer.test", SUPPORT)
    )

    with caplog.at_level(logging.INFO, logger="maildesk.pipeline"):
        assert services.processor.process_pending().processed == 41

    assert {inbound_row(services, i).state for i in ids} == {"quarantined"}
    assert inbound_row(services, good).state == "done"
    rewrites = [r for r in caplog.records if "writing them again" in r.getMessage()]
    assert len(rewrites) == 1  # 40 bounces span three groups of 16


def messages_per_write(services: Services, source: str, notify: bool, count: int) -> list[int]:
    """Store `count` messages from `source` and process them: how many messages each
    committed transaction wrote, in order (each message's last statement marks its row
    processed; seen at the driver, as the statements run)."""
    for n in range(count):
        raw = make_mail(sender=f"c{n}@customer.test", subject=f"Case {n}", message_id=f"<{n}@c.t>")
        services.store.put(raw, Envelope(source, f"c{n}@customer.test", SUPPORT, notify=notify))
    written: list[int] = [0]

    def statement(_conn: object, _cursor: object, sql: str, *_: object) -> None:
        if sql.startswith("UPDATE inbound SET") and "processed_at" in sql:
            written[-1] += 1

    def commit(_conn: object) -> None:
        if written[-1]:
            written.append(0)

    engine = services.db.engine
    event.listen(engine, "before_cursor_execute", statement)
    event.listen(engine, "commit", commit)
    try:
        while services.processor.process_pending().processed:
            pass
    finally:
        event.remove(engine, "before_cursor_execute", statement)
        event.remove(engine, "commit", commit)
    return written[:-1]


def test_live_mail_is_written_in_short_groups_and_a_quiet_import_in_one(
    services: Services,
) -> None:
    """Live mail commits every few messages: its acknowledgements go out after that
    commit, and a 250 waiting for the write lock gets it soon. An import without
    --notify queues no mail: a claim of it is written in one transaction."""
    assert messages_per_write(services, "smtp", True, 40) == [16, 16, 8]
    assert messages_per_write(services, "import", False, 40) == [40]
    assert messages_per_write(services, "import", True, 20) == [16, 4]  # acknowledged
