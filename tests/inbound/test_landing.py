"""The landing (SQLite): accepted mail waits in a file of its own until a worker's claim
moves it into the spool, under the id its 250 named. Whatever happens between the two
files (a crash after the spool's commit, a landing from another version, a database
restored beside a newer landing), every accepted message becomes one ticket."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from maildesk.clock import ManualClock
from maildesk.inbound import landing
from maildesk.inbound.store import Envelope
from maildesk.models import Inbound
from maildesk.services import Services
from maildesk.states import InboundState
from tests.conftest import make_mail
from tests.helpers import inbound_row, outbox_rows, tickets


@pytest.fixture
def spool(services: Services) -> Iterator[Services]:
    if not services.db.is_sqlite:
        pytest.skip("the landing is SQLite's: PostgreSQL takes accepted mail in the spool")
    yield services


def landing_file(services: Services) -> sqlite3.Connection:
    file = landing.sqlite_file(services.db.url)
    assert file is not None
    return sqlite3.connect(landing.path_of(file), isolation_level=None)


def landing_of(services: Services) -> landing.Landing:
    file = landing.sqlite_file(services.db.url)
    assert file is not None
    return landing.Landing(services.db, landing.path_of(file))


def move_once(services: Services, mover: landing.Landing) -> int:
    """One turn of the mover, as a claim takes it; how many messages it moved."""
    with mover.moving() as move:
        assert move is not None
        with services.db.writing() as connection:
            return move.into(connection)


def put(services: Services, n: int) -> int:
    raw = make_mail(message_id=f"<landed{n}@customer.test>", sender=f"c{n}@customer.test")
    return services.store.put(raw, Envelope("smtp", f"c{n}@customer.test", ("support@x.test",)))


def test_accepted_mail_counts_as_pending_until_it_is_processed(
    spool: Services, clock: ManualClock
) -> None:
    first = clock.now()
    put(spool, 1)
    clock.advance(timedelta(minutes=5))
    put(spool, 2)
    waiting = spool.store.counts()
    assert waiting[InboundState.PENDING] == 2
    assert waiting.oldest_pending == first

    assert spool.drain_inbound() == 2
    assert spool.store.counts()[InboundState.PENDING] == 0
    assert len(tickets(spool)) == 2


def test_a_move_whose_landing_delete_was_lost_is_not_moved_twice(spool: Services) -> None:
    """Killed after the spool's commit, before the landing forgot the rows: the next
    claim finds their ids in the spool with the same bytes and only deletes them."""
    ids = [put(spool, n) for n in range(3)]
    mover = landing_of(spool)
    with pytest.raises(RuntimeError), mover.moving() as move:
        assert move is not None
        with spool.db.writing() as connection:
            assert move.into(connection) == 3
        raise RuntimeError("killed before the landing's delete")
    mover.close()
    with landing_file(spool) as still:
        assert [r[0] for r in still.execute("SELECT id FROM inbound ORDER BY id")] == ids

    assert spool.drain_inbound() == 3
    assert len(tickets(spool)) == 3
    assert [row.kind for row in outbox_rows(spool)].count("acknowledgement") == 3
    with landing_file(spool) as after:
        assert after.execute("SELECT count(*) FROM inbound").fetchone() == (0,)


def test_a_landed_id_taken_by_other_mail_moves_under_a_new_id(spool: Services) -> None:
    """A database restored from a backup beside a newer landing: the landing's ids may
    name other messages in the spool. The landed message is moved under a new id, not
    taken for one already moved."""
    first = put(spool, 1)
    spool.drain_inbound()
    with landing_file(spool) as file:  # the landing's high-water mark, as an older file's
        file.execute("UPDATE sqlite_sequence SET seq = 0 WHERE name = 'inbound'")
    clash = put(spool, 2)
    assert clash == first

    spool.drain_inbound()
    subjects = sorted(t["subject"] for t in tickets(spool))
    assert len(subjects) == 2
    moved = spool.store.load(first + 1)
    assert b"<landed2@customer.test>" in moved.raw
    assert put(spool, 3) > first + 1  # and the sequence was lifted past it


def test_a_landing_left_by_another_version_is_moved_then_made_again(
    settings: object, spool: Services
) -> None:
    """An upgrade adds a column to the spool while mail waits in the landing: that mail
    moves with the columns both know, and the landing takes this version's rows after."""
    file = landing.sqlite_file(spool.db.url)
    assert file is not None
    spool.db.dispose()
    with sqlite3.connect(landing.path_of(file), isolation_level=None) as older:
        older.execute("DROP TABLE IF EXISTS inbound_raw")
        older.execute("DROP TABLE IF EXISTS inbound")
        older.execute(
            "CREATE TABLE inbound (id INTEGER PRIMARY KEY AUTOINCREMENT, received_at DATETIME,"
            " source VARCHAR(16), mail_from VARCHAR(512), rcpt_to JSON, size INTEGER,"
            " digest VARCHAR(64), notify BOOLEAN, state VARCHAR(16), attempts INTEGER,"
            " next_attempt_at DATETIME, claim VARCHAR(32), reason TEXT, error TEXT,"
            " processed_at DATETIME)"  # no `peer`: an older spool's
        )
        older.execute("CREATE TABLE inbound_raw (inbound_id INTEGER PRIMARY KEY, raw BLOB)")
        raw = make_mail(message_id="<older@customer.test>", sender="old@customer.test")
        older.execute(
            "INSERT INTO inbound VALUES (7, '2026-11-30 04:00:00.000000', 'smtp',"
            " 'old@customer.test', '[]', ?, 'x', 1, 'pending', 0, NULL, NULL, '', '', NULL)",
            (len(raw),),
        )
        older.execute("INSERT INTO inbound_raw VALUES (7, ?)", (raw,))

    from maildesk.services import build

    again = build(spool.settings, spool.clock)
    try:
        raw = make_mail(message_id="<landed8@customer.test>", sender="c8@customer.test")
        envelope = Envelope("smtp", "c8@customer.test", ("support@x.test",), peer="192.0.2.8")
        newer = again.store.put(raw, envelope)
        assert newer > 7
        assert again.drain_inbound() == 2
        assert inbound_row(again, 7).peer == ""
        # The mover read the older landing by its columns; the landing made again moves
        # with all of this version's.
        assert inbound_row(again, newer).peer == "192.0.2.8"
        assert sorted(t["requester"] for t in tickets(again)) == [
            "c8@customer.test",
            "old@customer.test",
        ]
    finally:
        again.db.dispose()


def test_mail_larger_than_a_move_moves_alone_and_intact(spool: Services) -> None:
    """A move copies at most `MOVE_BYTES` under the spool's write lock, a slice at a
    time; a message larger than that moves alone, and every byte arrives."""
    sizes = [landing.MOVE_BYTES // 3, landing.MOVE_BYTES + 5, 1000, landing.MOVE_BYTES // 2]
    raws = [os.urandom(n) for n in sizes]
    ids = [spool.store.put(raw, Envelope("smtp", "c@customer.test")) for raw in raws]
    mover = landing_of(spool)
    moved = []
    while n := move_once(spool, mover):
        moved.append(n)
    mover.close()
    # The first alone (with the next it would pass the cap), the large one alone, the rest.
    assert moved == [1, 1, 2]
    assert [spool.store.load(i).raw for i in ids] == raws


def test_a_landing_that_cannot_be_read_does_not_stop_the_spool(
    spool: Services, caplog: pytest.LogCaptureFixture
) -> None:
    """Mail already moved is processed even while the landing cannot be read (its file
    damaged): the claim logs it and goes on."""
    moved = put(spool, 1)
    mover = landing_of(spool)
    assert move_once(spool, mover) == 1
    mover.close()
    spool.db.dispose()  # nothing holds the landing open while it is damaged
    file = landing.path_of(landing.sqlite_file(spool.db.url))  # type: ignore[arg-type]
    for part in (file, Path(f"{file}-wal"), Path(f"{file}-shm")):
        part.unlink(missing_ok=True)
    file.write_bytes(b"not a database" * 100)

    assert spool.drain_inbound() == 1
    assert [t["requester"] for t in tickets(spool)] == ["c1@customer.test"]
    assert inbound_row(spool, moved).state == InboundState.DONE
    assert "could not move accepted mail from the landing" in caplog.text


def test_a_landed_message_without_its_bytes_is_quarantined_and_the_rest_moves_on(
    spool: Services, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A landed row that lost its bytes (only a damaged file does that) must not hold
    back the mail behind it: it moves without them and its processing quarantines it,
    where `maildesk quarantine list` shows it."""
    first, lost, last = put(spool, 1), put(spool, 2), put(spool, 3)
    with landing_file(spool) as file:
        file.execute("DELETE FROM inbound_raw WHERE inbound_id = ?", (lost,))

    spool.drain_inbound()
    assert sorted(t["requester"] for t in tickets(spool)) == [
        "c1@customer.test",
        "c3@customer.test",
    ]
    assert f"landed message {lost} has no bytes" in caplog.text
    for _ in range(3):  # its retries, each after its back-off
        clock.advance(timedelta(minutes=5))
        spool.drain_inbound()
    row = inbound_row(spool, lost)
    assert row.state == InboundState.QUARANTINED
    assert "no stored bytes" in row.reason
    assert {inbound_row(spool, i).state for i in (first, last)} == {InboundState.DONE}


def test_a_move_that_fails_halfway_is_undone_and_the_claim_goes_on(
    spool: Services, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The move runs in the claim's transaction (one turn of the write lock), in a
    savepoint: a copy that fails after writing part of it (a full disk, say; injected
    here) is undone, the landing keeps the mail, and the mail already in the spool is
    claimed all the same. The next claim moves the rest, each message once."""
    moved = put(spool, 1)
    mover = landing_of(spool)
    assert move_once(spool, mover) == 1
    mover.close()
    waiting = put(spool, 2)
    real_into = landing.Move.into

    def fails_after_copying(move: landing.Move, main: object) -> int:
        real_into(move, main)  # type: ignore[arg-type]
        raise OSError("database or disk is full")

    monkeypatch.setattr(landing.Move, "into", fails_after_copying)
    batch = spool.store.claim(10)
    assert [row.id for row in batch.rows] == [moved]
    assert "could not move accepted mail from the landing" in caplog.text
    with landing_file(spool) as file:
        assert [row[0] for row in file.execute("SELECT id FROM inbound")] == [waiting]

    monkeypatch.setattr(landing.Move, "into", real_into)
    assert [row.id for row in spool.store.claim(10).rows] == [waiting]
    with landing_file(spool) as file:
        assert list(file.execute("SELECT id FROM inbound")) == []
    with spool.db.reading() as session:
        ids = session.scalars(select(Inbound.id).order_by(Inbound.id)).all()
        assert ids == [moved, waiting]
