"""Two workers meet the same new sender at once (two instances, or two worker processes,
on PostgreSQL): both messages file under one person, and neither transaction fails.

Before, the later insert broke the unique email, so its whole message was rolled back
and retried after a back-off (bench/scaleout.py saw it 66 times in one run).
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select, text

from maildesk.db import Database
from maildesk.models import Person
from maildesk.schema import upgrade
from maildesk.tickets.service import Tickets
from tests.conftest import PG_URL, wait_for

pytestmark = pytest.mark.skipif(
    not PG_URL, reason="SQLite has one writer: two transactions never insert at once"
)

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def test_the_same_new_sender_in_two_concurrent_transactions_is_one_person(db_url: str) -> None:
    db = Database(db_url)
    upgrade(db)
    first_inserted, first_may_commit = threading.Event(), threading.Event()
    ids: dict[str, int] = {}
    errors: list[BaseException] = []

    def first() -> None:
        try:
            with db.transaction() as session:
                ids["first"] = Tickets(session).person("New@Customer.test", "Nová", NOW).id
                first_inserted.set()
                first_may_commit.wait(10)
        except BaseException as exc:
            errors.append(exc)

    def second() -> None:
        try:
            first_inserted.wait(10)
            with db.transaction() as session:
                ids["second"] = Tickets(session).person("new@customer.test", "", NOW).id
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    try:
        # The second insert waits on the first's uncommitted row: let the first commit only
        # once PostgreSQL shows the second transaction blocked on it.
        wait_for(lambda: _blocked_on_a_lock(db), 10, "the second insert to wait")
    finally:
        first_may_commit.set()
        for thread in threads:
            thread.join(20)
    try:
        assert not errors, errors
        assert ids["first"] == ids["second"]
        with db.reading() as session:
            people = session.scalar(
                select(func.count()).select_from(Person).where(Person.email == "new@customer.test")
            )
            name = session.scalar(select(Person.name).where(Person.id == ids["first"]))
        assert people == 1
        assert name == "Nová"
    finally:
        db.dispose()


def _blocked_on_a_lock(db: Database) -> bool:
    with db.engine.connect() as conn:
        waiting = conn.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock' "
                "AND query ILIKE 'INSERT INTO people%'"
            )
        )
    return bool(waiting)
