"""The hourly caps on automatic replies (RFC 3834) count to the second, from any process,
and the total cap's check reads minutes, not every reply of the hour."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import cast

from sqlalchemy import Table, func, insert, select, text

from maildesk import config, retention
from maildesk.clock import ManualClock
from maildesk.models import AutoReplyMinute, Outbox
from maildesk.outbound import caps
from maildesk.schema import downgrade
from maildesk.services import Services, build
from maildesk.states import OutboxState
from tests.conftest import make_mail
from tests.helpers import receive

OUTBOX = cast(Table, Outbox.__table__)
SINCE = datetime(2026, 11, 30, 10, 0, 30, tzinfo=UTC)  # half a minute into 10:00


def queue_automatic(services: Services, at: datetime, recipient: str) -> None:
    """An automatic reply's outbox row, counted as the notifier counts it."""
    with services.db.transaction() as session:
        connection = session.connection()
        connection.execute(
            insert(OUTBOX),
            {
                "ticket_id": None,
                "message_id": f"md.{at.timestamp()}.{recipient}",
                "kind": "acknowledgement",
                "sender": "support@example.test",
                "recipients": [recipient],
                "auto_to": recipient,
                "state": OutboxState.PENDING,
                "attempts": 0,
                "next_attempt_at": at,
                "last_error": "",
                "created_at": at,
            },
        )
        caps.count_automatic(connection, at, "")


def total_reached(services: Services, cap: int) -> bool:
    with services.db.reading() as session:
        return caps.caps_reached(
            session, "someone@customer.test", 100, cap, SINCE, proven=False, share=cap
        ).total


def test_the_total_cap_counts_the_hour_to_the_second_and_every_process(
    services: Services,
) -> None:
    queue_automatic(services, SINCE - timedelta(seconds=1), "early@customer.test")  # before
    queue_automatic(services, SINCE + timedelta(seconds=1), "a@customer.test")  # 10:00:31
    queue_automatic(services, SINCE + timedelta(seconds=30), "b@customer.test")  # 10:01:00
    queue_automatic(services, SINCE + timedelta(minutes=59), "c@customer.test")
    # Another worker's two replies at 10:20: a row of its own for that minute.
    with services.db.transaction() as session:
        minute = caps.minute_of(SINCE + timedelta(minutes=20))
        session.add(AutoReplyMinute(minute=minute, shard=1, lane="", count=2))
    assert total_reached(services, 5)
    assert not total_reached(services, 6)
    # The minute rows sum what the outbox holds, however the minutes were counted.
    with services.db.reading() as session:
        counted = session.scalar(select(func.sum(AutoReplyMinute.count)))
    assert counted == 4 + 2


def test_a_counters_old_minutes_are_forgotten_as_it_counts(services: Services) -> None:
    queue_automatic(services, SINCE, "old@customer.test")
    queue_automatic(services, SINCE + timedelta(hours=3), "new@customer.test")
    with services.db.reading() as session:
        minutes = session.scalars(select(AutoReplyMinute.minute)).all()
    assert minutes == [caps.minute_of(SINCE + timedelta(hours=3))]


def test_the_purge_forgets_the_minutes_of_threads_that_ended(services: Services) -> None:
    """A thread forgets its own old minutes as it counts; those of a thread that ended
    go at the hourly purge, three hours on, and the last hour's stay."""
    now = SINCE + timedelta(hours=5)
    with services.db.transaction() as session:
        for hours_ago, shard in ((4, 7), (1, 7), (0, 8)):
            minute = caps.minute_of(now - timedelta(hours=hours_ago))
            session.add(AutoReplyMinute(minute=minute, shard=shard, lane="", count=1))
    purged = retention.purge(services.db, services.settings, now)
    assert purged.counts["reply_minutes"] == 1
    with services.db.reading() as session:
        left = session.scalars(select(AutoReplyMinute.minute).order_by(AutoReplyMinute.minute))
        assert list(left) == [caps.minute_of(now - timedelta(hours=1)), caps.minute_of(now)]


def test_the_hours_automatic_replies_still_count_after_the_lanes_upgrade(
    settings: config.Settings, clock: ManualClock
) -> None:
    """Migration 0027 gave each minute's count a lane (the key changed, so the table is
    made again): the hour's replies counted before it still count after it, in the
    unproven lane, and a downgrade sums the lanes back. On SQLite, and on PostgreSQL
    when MAILDESK_TEST_DATABASE_URL is set."""
    services = build(settings, clock)
    services.prepare()
    try:
        receive(services, make_mail("Printer broken", "Alice <alice@customer.test>"))
        receive(services, make_mail("Scanner broken", "Bob <bob@customer.test>"))

        def counted(columns: str) -> list[tuple[object, ...]]:
            with services.db.engine.connect() as connection:
                found = connection.execute(text(f"SELECT {columns} FROM auto_reply_minutes"))
                return [tuple(row) for row in found]

        assert counted("lane, count") == [("", 2)]  # two acknowledgements, nothing proven
        downgrade(services.db, "0026")
        assert counted("count") == [(2,)]
        services.prepare()  # `maildesk init` after installing the new version
        assert counted("lane, count") == [("", 2)]
        with services.db.transaction() as session:
            hour_ago = clock.now() - timedelta(hours=1)
            assert caps.caps_reached(session, "", 0, 2, hour_ago, proven=False, share=2).total
    finally:
        services.db.dispose()
