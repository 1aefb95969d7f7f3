"""The landing: on SQLite, accepted mail is committed to a database file of its own.

SQLite has one writer per file. With accepted mail in the main database, every
250 waited for the processing transaction under way to commit (a flood was
accepted at 0.2-0.3 of bare aiosmtpd's rate). In `<database>.landing` the group
commit's only other writer is the mover's short delete, so a 250 waits for its
own fsync and little else.

The mover runs ahead of each worker's claim (`InboundStore.claim`): in a
transaction of its own on the main database it copies what landed into
`inbound` and `inbound_raw`, then, once that committed, deletes it here. One
process moves at a time (`<landing>.mover`, an flock; the others just claim).

Spool ids are handed out here and kept for good: the landing's `inbound` table
is AUTOINCREMENT, its sequence lifted to the main spool's highest id whenever a
process finds it below (`ready`), and the mover inserts each row under its
landed id. So "250 queued as N" names row N of the spool before and after the
move, and a move repeated after a crash (between the main commit and the delete
here) finds the id already there, with the same digest, and only deletes. A row
whose id the main spool holds with other bytes (a database restored from an
older backup beside a newer landing) moves under a new id, and the log says so:
it is never dropped.

PostgreSQL has no such landing: it locks rows, and the group commit writes to
`inbound` directly.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Dialect, MetaData, Select, bindparam, func, inspect, select, text
from sqlalchemy.exc import NoSuchTableError

from maildesk import logs
from maildesk.clock import as_utc
from maildesk.db import Database
from maildesk.inbound import lanes, rawbytes
from maildesk.models import Inbound, InboundRaw

# What it did is logged once its transaction committed (logs.transactional).
log = logs.transactional("maildesk.spool")

# One move copies at most this much: its transaction holds the main database's write
# lock. A larger message moves alone.
MOVE_ROWS = 500
MOVE_BYTES = 8 * 1024 * 1024

_SCHEMA = MetaData()
# The main spool's two tables, without their indexes (nothing here is looked up but
# by id, and an index is one more write under the lock a 250 waits for), and with
# AUTOINCREMENT: an id is never handed out twice, even after its row moved away.
LANDED = Inbound.__table__.to_metadata(_SCHEMA)  # type: ignore[attr-defined]
LANDED.indexes.clear()
for _column in LANDED.columns:
    _column.index = None
LANDED.dialect_kwargs["sqlite_autoincrement"] = True
LANDED_RAW = InboundRaw.__table__.to_metadata(_SCHEMA)  # type: ignore[attr-defined]
_COLUMNS = [column.name for column in LANDED.columns]
# Which of the rows being moved the spool holds already (a move repeated after a crash).
_PRESENT = select(Inbound.id, Inbound.digest).where(
    Inbound.id.in_(bindparam("ids", expanding=True))
)


def path_of(database: Path) -> Path:
    return Path(f"{database}.landing")


def sqlite_file(url: str) -> Path | None:
    """The file of an SQLite URL on disk; None for `:memory:` or another database."""
    if not url.startswith("sqlite"):
        return None
    path = url.split("///", 1)[1] if "///" in url else ""
    if not path or path == ":memory:" or path.startswith("file:"):
        return None
    return Path(path)


@dataclass(frozen=True)
class Waiting:
    """What the landing holds now (for the spool's counts)."""

    count: int
    oldest: datetime | None


class Landing:
    """`<database>.landing` beside an SQLite database `main`: where accepted mail lands."""

    def __init__(self, main: Database, path: Path) -> None:
        self.path = path
        self._main = main
        self.db = Database(f"sqlite:///{path}")
        self._ready = False
        self._mover_fd: int | None = None
        self._driver: sqlite3.Connection | None = None
        self._oldest: tuple[int, Select[Any]] | None = None  # (schema version, statement)

    # -- the door's side ------------------------------------------------------

    @contextmanager
    def door(self, urgent: bool = False) -> Iterator[sqlite3.Connection]:
        """A write transaction on the landing (`urgent`: a 250 waits on it), on the
        driver's connection, kept open for the process: SQLAlchemy's connection,
        BEGIN and COMMIT cost the group commit more CPU than its rows."""
        self.ready()
        with self.db.turn(urgent):
            driver = self._door_connection()
            driver.execute("BEGIN IMMEDIATE")
            try:
                yield driver
            except BaseException:
                driver.rollback()
                raise
            driver.commit()

    def _door_connection(self) -> sqlite3.Connection:
        if self._driver is None:
            # As `db.py` opens SQLite (the file exists: `ready` made it).
            driver = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
            driver.isolation_level = None
            for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON"):
                driver.execute(f"PRAGMA {pragma}")
            self._driver = driver
        return self._driver

    @property
    def dialect(self) -> Dialect:
        return self.db.engine.dialect

    def ready(self) -> None:
        """Create the tables, or make them this version's, once per process; lift the id
        sequence to the main spool's ids.

        A landing written by another version of maildesk (whose spool had other columns)
        is moved into the spool with the columns both know, then made again: the door
        writes every column of this version's."""
        if not self._ready and self._current():
            self._ready = True
        while not self._ready:
            older = False
            with self.db.writing() as connection:
                _SCHEMA.create_all(connection)
                if _columns(connection) != set(_COLUMNS):
                    older = connection.scalar(select(LANDED.c.id).limit(1)) is not None
                    if not older:
                        _SCHEMA.drop_all(connection)
                        _SCHEMA.create_all(connection)
                if not older:
                    _raise_sequence(connection, _main_top(self._main))
                    self._ready = True
            if older:
                self._drain_with(self._moving_as_is)

    def oldest_rows(self, landed: Connection) -> Select[Any]:
        """The statement that reads the oldest landed rows, by the columns the landing
        and the spool share. A move runs it for every claim: it is built again only when
        the landing's schema changed (SQLite counts every change), since reading the
        columns anew cost a quarter of a claim."""
        version = int(landed.exec_driver_sql("PRAGMA schema_version").scalar() or 0)
        if self._oldest is None or self._oldest[0] != version:
            columns = [LANDED.c[name] for name in _shared_columns(landed)]
            self._oldest = (version, select(*columns).order_by(LANDED.c.id).limit(MOVE_ROWS))
        return self._oldest[1]

    def _current(self) -> bool:
        """Whether the landing is already this version's and ahead of the spool's ids,
        read without a write (`maildesk deliver` runs once per message)."""
        if not self.path.exists():
            return False
        with self.db.reading_connection() as connection:
            if _columns(connection) != set(_COLUMNS):
                return False
            seq = connection.scalar(
                text("SELECT seq FROM sqlite_sequence WHERE name = :name"), {"name": LANDED.name}
            )
        return seq is not None and int(seq) >= _main_top(self._main)

    def empty(self) -> bool:
        """Whether nothing waits here (one indexed read; no landing: nothing waits)."""
        if not self.path.exists():
            return True
        self.ready()
        with self.db.reading_connection() as connection:
            return connection.scalar(select(LANDED.c.id).limit(1)) is None

    def known_digests(self, digests: Sequence[str]) -> set[str]:
        if not self.path.exists():
            return set()
        found: set[str] = set()
        self.ready()
        with self.db.reading_connection() as connection:
            for start in range(0, len(digests), 500):
                chunk = list(digests[start : start + 500])
                found.update(
                    connection.scalars(select(LANDED.c.digest).where(LANDED.c.digest.in_(chunk)))
                )
        return found

    # -- the mover's side -----------------------------------------------------

    @contextmanager
    def moving(self) -> Iterator[Move | None]:
        """The mover's turn, or None when another process has it (or there is no landing).

        Use: `move.into(connection)` in the main transaction; after it committed,
        the `with` block's end deletes what moved."""
        if not self.path.exists():
            yield None
            return
        self.ready()
        with self._moving_as_is(wait=False) as move:
            yield move

    @contextmanager
    def _moving_as_is(self, wait: bool = True) -> Iterator[Move | None]:
        """The mover's turn on the landing as it is (`ready` moves an older one this way)."""
        fd = self._mover()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield None
            return
        try:
            move = Move(self)
            yield move
            if move.moved:
                self._forget(move.moved, move.raise_to)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def drain(self) -> int:
        """Move everything that landed into the main spool now; returns how many rows
        moved."""
        if not self.path.exists():
            return 0
        self.ready()
        return self._drain_with(self._moving_as_is)

    def _drain_with(self, moving: Callable[[], AbstractContextManager[Move | None]]) -> int:
        total = 0
        while True:
            with moving() as move:
                if move is None:
                    return total
                with self._main.writing() as connection:
                    n = move.into(connection)
            if not n:
                return total
            total += n

    def _mover(self) -> int:
        if self._mover_fd is None:
            self._mover_fd = os.open(
                f"{self.path}.mover", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
            )
        return self._mover_fd

    def _forget(self, ids: list[int], raise_to: int) -> None:
        # Not urgent: it is short, and a 250 waiting goes first.
        with self.db.writing() as connection:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                connection.execute(LANDED_RAW.delete().where(LANDED_RAW.c.inbound_id.in_(chunk)))
                connection.execute(LANDED.delete().where(LANDED.c.id.in_(chunk)))
            if raise_to:
                _raise_sequence(connection, raise_to)

    def close(self) -> None:
        if self._driver is not None:
            self._driver.close()
            self._driver = None
        self.db.dispose()
        if self._mover_fd is not None:
            os.close(self._mover_fd)
            self._mover_fd = None


class Move:
    """One turn of the mover: what it copied, to delete once the copy committed."""

    def __init__(self, landing: Landing) -> None:
        self._landing = landing
        self.moved: list[int] = []
        self.raise_to = 0  # a new id was given out in the main spool: lift the sequence

    def into(self, main: Connection) -> int:
        """Copy the oldest landed rows (up to `MOVE_ROWS` / `MOVE_BYTES`) into `main`'s
        spool, in its transaction; returns how many were taken."""
        with self._landing.db.reading_connection() as landed:
            rows = landed.execute(self._landing.oldest_rows(landed)).all()
            rows = _within_bytes(rows)
            if not rows:
                return 0
            ids = [row.id for row in rows]
            found = main.execute(_PRESENT, {"ids": ids})
            present = {row_id: digest for row_id, digest in found}
            copies: list[tuple[int, int]] = []  # (landed id, spool id)
            fresh: list[dict[str, Any]] = []
            renumbered: list[dict[str, Any]] = []
            for row in rows:
                values = dict(row._mapping)
                digest = present.get(row.id)
                if digest is None:
                    fresh.append(values)
                    copies.append((row.id, row.id))
                elif digest != row.digest:
                    renumbered.append(values)
            # Turns are the spool's to give: they depend on what waits there.
            entering = sorted(fresh + renumbered, key=lambda values: values["id"])
            lanes.assign(main, entering)
            if fresh:
                main.execute(Inbound.__table__.insert(), fresh)  # type: ignore[attr-defined]
            for values in renumbered:
                landed_id = values.pop("id")
                new_id = main.execute(
                    Inbound.__table__.insert().returning(Inbound.id),  # type: ignore[attr-defined]
                    values,
                ).scalar_one()
                log.warning(
                    "landed message %d moved to the spool as %d: the spool already held "
                    "another message %d (a database restored beside a newer landing?)",
                    landed_id,
                    new_id,
                    landed_id,
                )
                copies.append((landed_id, new_id))
                self.raise_to = max(self.raise_to, new_id)
            for missing in rawbytes.copy_sqlite(landed, main, copies):
                # Only a damaged file loses a row's bytes: moved without them, the message
                # is quarantined by its processing ("no stored bytes"), and the mail behind
                # it moves on instead of waiting behind it for good.
                log.error("landed message %d has no bytes: moved without them", missing)
        self.moved.extend(ids)
        return len(ids)


def _within_bytes(rows: Sequence[Any]) -> list[Any]:
    taken: list[Any] = []
    size = 0
    for row in rows:
        if taken and size + row.size > MOVE_BYTES:
            break
        taken.append(row)
        size += row.size
    return taken


def _columns(landed: Connection) -> set[str]:
    try:
        return {column["name"] for column in inspect(landed).get_columns(LANDED.name)}
    except NoSuchTableError:
        return set()


def _shared_columns(landed: Connection) -> list[str]:
    """The columns of the landing's table that the spool has too: a landing written by
    another version of maildesk moves with what both know (the rest take defaults)."""
    have = _columns(landed)
    return [name for name in _COLUMNS if name in have]


def _main_top(main: Database) -> int:
    with main.reading_connection() as connection:
        return int(connection.scalar(select(func.max(Inbound.id))) or 0)


def _raise_sequence(connection: Connection, top: int) -> None:
    """Never hand out an id at or below `top` (SQLite keeps AUTOINCREMENT's high-water
    mark in `sqlite_sequence`, an ordinary table)."""
    updated = connection.execute(
        text("UPDATE sqlite_sequence SET seq = max(seq, :top) WHERE name = :name"),
        {"top": top, "name": LANDED.name},
    )
    if not updated.rowcount:
        connection.execute(
            text("INSERT INTO sqlite_sequence (name, seq) VALUES (:name, :top)"),
            {"top": top, "name": LANDED.name},
        )


def waiting(path: Path) -> Waiting:
    """How many messages wait in the landing at `path`, and since when (a read that
    takes no lock; no file: nothing waits)."""
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    except sqlite3.OperationalError:
        return Waiting(0, None)
    try:
        count, oldest = connection.execute(
            f"SELECT count(*), min(received_at) FROM {LANDED.name}"
        ).fetchone()
    except sqlite3.OperationalError:  # created, tables not yet
        return Waiting(0, None)
    finally:
        connection.close()
    if oldest is None:
        return Waiting(int(count), None)
    return Waiting(int(count), as_utc(datetime.fromisoformat(oldest)))


def waiting_by_lane(path: Path) -> dict[str, int]:
    """How many messages of each lane (`lanes.py`) wait in the landing at `path` (a
    read that takes no lock; no file, or one written before lanes: none)."""
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    except sqlite3.OperationalError:
        return {}
    try:
        rows = connection.execute(
            f"SELECT lane, count(*) FROM {LANDED.name} GROUP BY lane"
        ).fetchall()
    except sqlite3.OperationalError:  # created, tables not yet; or no lane column
        return {}
    finally:
        connection.close()
    return {lane: int(count) for lane, count in rows}
