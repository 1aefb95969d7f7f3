"""How a message's bytes go into `inbound_raw` and `outbox_raw`: a slice at a time,
never copied whole. Both tables are written once, with their row, and never
updated: SQLite writes a whole row again on every update.

Binding the bytes as a parameter copies them whole in the driver, and keeps copies:
- SQLite copied a bound blob (keeping that copy in the cached statement until the
  next insert), then copied it again to build the row: a 24 MB message cost 50 MB
  more while stored, and 25 MB stayed after;
- libpq copied the bound value into its send buffer, which stays at the largest
  size it ever sent for as long as the connection lives: each pooled connection
  that once carried a 24 MB message kept 25 MB.
So SQLite gets a zero-filled blob of the right size, filled through its incremental
blob I/O; PostgreSQL gets the rows by `COPY … FROM STDIN (FORMAT BINARY)`. Both
run inside the caller's transaction and cost one slice of memory. Bytes no longer
than a slice are simply bound: the copy is a slice at most.

Attachments' content (`blobs`, keyed by its SHA-256) is written the same way
(`write_blob`): through the ORM, a 17 MB attachment cost a worker the bound copy
and SQLite's record, about 12 MB more at its peak, and the copy stayed in the
cached statement.

Reading back is the same in reverse (`read`). Fetching the value whole cost
PostgreSQL 144 MB more at the peak for a 24 MB message (bytea comes as hex
text), and libpq's receive buffer kept 49 MB in the pooled connection after.
So the bytes come a slice at a time (SQLite's blob I/O, PostgreSQL's
`substring()` in binary form), each written into one buffer of the final size:
the message once, plus a slice.
"""

from __future__ import annotations

import io
import sqlite3
import struct
from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.orm import Session

from maildesk.hotsql import connection_of

SLICE = 1 << 20
# A message as one bytes object, or as pieces to store one after the other (a composed
# mail's header block and the content it shares with other mails: never joined here).
Raw = bytes | tuple[bytes, ...]
# PostgreSQL's binary COPY: signature, flags, header extension length; -1 fields ends it.
_COPY_HEADER = b"PGCOPY\n\xff\r\n\0" + struct.pack("!ii", 0, 0)
_COPY_TRAILER = struct.pack("!h", -1)
# Per row: 2 fields; the key an int4 (migrations 0012 and 0014: Integer), then raw's length.
_COPY_ROW = struct.Struct("!hiii")


class Stored:
    """A table of bytes: its `raw` column and its key, an INTEGER PRIMARY KEY (SQLite's
    rowid, by which the blob opens) that is the `id` of the row in `owner` the bytes
    belong to, which `named` (a unique column) also identifies."""

    def __init__(self, table: str, key: str, owner: str, named: str = "") -> None:
        self.table, self.key = table, key
        # Run on the driver's cursor, in its own parameter style: through SQLAlchemy
        # these inserts cost twice as much CPU.
        self.bound_rows = {
            "sqlite": f"INSERT INTO {table} ({key}, raw) VALUES (?, ?)",
            "postgresql": f"INSERT INTO {table} ({key}, raw) VALUES (%s, %s)",
        }
        by_name = (
            f"INSERT INTO {table} ({key}, raw) SELECT id, {{}} FROM {owner} WHERE {named} = {{}}"
        )
        self.named_rows = {
            "sqlite": by_name.format("?", "?"),
            "postgresql": by_name.format("%s", "%s"),
        }
        self.id_named = text(f"SELECT id FROM {owner} WHERE {named} = :named")
        self.zeroed_sqlite = f"INSERT INTO {table} ({key}, raw) VALUES (?, zeroblob(?))"
        self.copy = f"COPY {table} ({key}, raw) FROM STDIN (FORMAT BINARY)"


INBOUND = Stored("inbound_raw", "inbound_id", "inbound")
OUTBOX = Stored("outbox_raw", "outbox_id", "outbox", named="message_id")


def write(
    session: Session | Connection, bodies: Sequence[tuple[int, Raw]], where: Stored = INBOUND
) -> None:
    """Store each (row id, bytes) in `where`, in the session's (or connection's) transaction.

    Bytes that fit in one slice are bound as parameters, all in one statement: their
    copy costs no more memory than a slice, and a stream per row cost more CPU than
    the rest of queueing a notification."""
    connection = connection_of(session) if isinstance(session, Session) else session
    if connection.dialect.name == "sqlite":
        driver = connection.connection.driver_connection
        assert driver is not None
        write_sqlite(driver, bodies, where)
        return
    small = [(row_id, _whole(raw)) for row_id, raw in bodies if size(raw) <= SLICE]
    if small:
        _executemany(connection, where.bound_rows, small)
    large = [(row_id, raw) for row_id, raw in bodies if size(raw) > SLICE]
    if large:
        _copy_postgresql(connection, large, where)


def write_sqlite(
    driver: sqlite3.Connection, bodies: Sequence[tuple[int, Raw]], where: Stored = INBOUND
) -> None:
    """`write` on an SQLite driver connection of the caller's (in its transaction)."""
    small = [(row_id, _whole(raw)) for row_id, raw in bodies if size(raw) <= SLICE]
    if small:
        driver.executemany(where.bound_rows["sqlite"], small)
    _write_large_sqlite(driver, [(i, raw) for i, raw in bodies if size(raw) > SLICE], where)


def write_named(session: Session, bodies: Sequence[tuple[str, Raw]], where: Stored) -> None:
    """`write` for rows named by `where.named` (the outbox's Message-ID) instead of their
    id: an executemany that returned the ids of the rows it inserted cost more CPU than
    the insert itself, and these inserts find the id on their own."""
    connection = connection_of(session)
    small = [(_whole(raw), name) for name, raw in bodies if size(raw) <= SLICE]
    if small and _executemany(connection, where.named_rows, small) != len(small):
        raise LookupError(f"{where.table}: a row named for bytes is missing")
    large = [(name, raw) for name, raw in bodies if size(raw) > SLICE]
    ids = [connection.execute(where.id_named, {"named": name}).scalar_one() for name, _ in large]
    write(session, list(zip(ids, (raw for _, raw in large), strict=True)), where)


def _executemany(connection: Connection, sql: dict[str, str], rows: list[Any]) -> int:
    """Run `sql` (by dialect) for each of `rows` on the driver's cursor; rows inserted."""
    driver = connection.connection.driver_connection
    assert driver is not None
    cursor = driver.cursor()
    try:
        cursor.executemany(sql[connection.dialect.name], rows)
        return int(cursor.rowcount)
    finally:
        cursor.close()


# A received message may be a bytearray (serve's DATA buffer, stored as it is): only a
# tuple is pieces.
def size(raw: Raw) -> int:
    return sum(map(len, raw)) if isinstance(raw, tuple) else len(raw)


def _whole(raw: Raw) -> bytes:
    return b"".join(raw) if isinstance(raw, tuple) else raw


def _slices(raw: Raw) -> list[memoryview]:
    views = [memoryview(p) for p in raw] if isinstance(raw, tuple) else [memoryview(raw)]
    return [view[at : at + SLICE] for view in views for at in range(0, len(view), SLICE)]


def _write_large_sqlite(driver: Any, bodies: Sequence[tuple[int, Raw]], where: Stored) -> None:
    for row_id, raw in bodies:
        driver.execute(where.zeroed_sqlite, (row_id, size(raw)))
        with driver.blobopen(where.table, "raw", row_id) as blob:
            for piece in _slices(raw):
                blob.write(piece)


def _copy_postgresql(
    connection: Connection, bodies: Sequence[tuple[int, Raw]], where: Stored
) -> None:
    driver = connection.connection.driver_connection
    assert driver is not None
    with driver.cursor() as cursor, cursor.copy(where.copy) as copy:
        copy.write(_COPY_HEADER)
        for row_id, raw in bodies:
            copy.write(_COPY_ROW.pack(2, 4, row_id, size(raw)))
            for piece in _slices(raw):
                copy.write(piece)
        copy.write(_COPY_TRAILER)


def copy_sqlite(
    source: Connection, target: Connection, ids: Sequence[tuple[int, int]], where: Stored = INBOUND
) -> list[int]:
    """Copy the bytes of rows from one SQLite database's `where` table to another's, as
    (source id, target id) pairs, inside the target's transaction: a slice at a time,
    as `write` stores them (the landing's move, `inbound/landing.py`). Returns the
    source ids that have no bytes row (none are copied for them)."""
    reader, writer = source.connection.driver_connection, target.connection.driver_connection
    assert reader is not None and writer is not None
    small: list[tuple[int, bytes]] = []
    missing: list[int] = []
    exists = text(f"SELECT 1 FROM {where.table} WHERE {where.key} = :id")
    for from_id, to_id in ids:
        try:
            opened = reader.blobopen(where.table, "raw", from_id, readonly=True)
        except sqlite3.OperationalError:
            if source.execute(exists, {"id": from_id}).first() is None:
                missing.append(from_id)
                continue
            raise
        with opened as blob:
            length = len(blob)
            if length <= SLICE:
                small.append((to_id, blob.read()))
                continue
            writer.execute(where.zeroed_sqlite, (to_id, length))
            with writer.blobopen(where.table, "raw", to_id) as copy:
                while piece := blob.read(SLICE):
                    copy.write(piece)
    if small:
        _executemany(target, where.bound_rows, small)
    return missing


_BLOB_SMALL = text("INSERT INTO blobs (sha256, size, data) VALUES (:sha256, :size, :data)")
_BLOB_ZEROED = "INSERT INTO blobs (sha256, size, data) VALUES (?, ?, zeroblob(?))"
_BLOB_COPY = "COPY blobs (sha256, size, data) FROM STDIN (FORMAT BINARY)"


def write_blob(connection: Connection, sha256: str, data: bytes) -> None:
    """Store one attachment's content under its hash, in the connection's transaction,
    a slice at a time when it is larger than one (as `write` stores mail)."""
    if len(data) <= SLICE:
        connection.execute(_BLOB_SMALL, {"sha256": sha256, "size": len(data), "data": data})
        return
    driver = connection.connection.driver_connection
    assert driver is not None
    if connection.dialect.name == "sqlite":
        rowid = driver.execute(_BLOB_ZEROED, (sha256, len(data), len(data))).lastrowid
        with driver.blobopen("blobs", "data", rowid) as blob:
            for piece in _slices(data):
                blob.write(piece)
        return
    key = sha256.encode("ascii")
    with driver.cursor() as cursor, cursor.copy(_BLOB_COPY) as copy:
        copy.write(_COPY_HEADER)
        # Three fields: the hash as text, the size as int4, then the content's length.
        copy.write(struct.pack(f"!hi{len(key)}siii", 3, len(key), key, 4, len(data), len(data)))
        for piece in _slices(data):
            copy.write(piece)
        copy.write(_COPY_TRAILER)


def read_blob_slice(connection: Connection, sha256: str, start: int, length: int) -> bytes | None:
    """`length` bytes of the attachment content stored under `sha256` from `start` (fewer
    at its end); None when nothing is stored under it. Content is stored once under its
    hash and never changed, so slices read in separate transactions make one whole: a
    download reads one per turn and never holds the whole content (nor a transaction
    open while the client is slow)."""
    driver = connection.connection.driver_connection
    assert driver is not None
    if connection.dialect.name == "sqlite":
        found = driver.execute("SELECT rowid FROM blobs WHERE sha256 = ?", (sha256,)).fetchone()
        if found is None:
            return None
        with driver.blobopen("blobs", "data", found[0], readonly=True) as blob:
            blob.seek(min(start, len(blob)))
            return bytes(blob.read(length))
    with driver.cursor(binary=True) as cursor:
        found = cursor.execute(
            "SELECT substring(data FROM %s FOR %s) FROM blobs WHERE sha256 = %s",
            (start + 1, length, sha256),
        ).fetchone()
    return None if found is None else bytes(found[0])


def read(connection: Connection, row_id: int, where: Stored = INBOUND) -> bytes | None:
    """The bytes stored for `row_id` (None: no row), read a slice at a time."""
    if connection.dialect.name == "sqlite":
        return _read_sqlite(connection, row_id, where)
    return _read_postgresql(connection, row_id, where)


def end_reads(connection: Connection) -> None:
    """End what `read` may have begun on `connection`, which stays checked out: a
    statement run through it (SQLite's check for a missing row) and the driver's own
    transaction (PostgreSQL's reads run on the driver's cursor). SQLite's blob reads
    begin none."""
    if connection.in_transaction():
        connection.rollback()
    if connection.dialect.name != "sqlite":
        driver = connection.connection.driver_connection
        assert driver is not None
        driver.rollback()


def _assemble(size: int, pieces: Iterator[bytes]) -> bytes:
    """Write the pieces into one buffer of `size` bytes and hand that buffer out as bytes.

    A BytesIO that owns a zero-filled bytes object of the final size writes into it in
    place, and `getvalue()` returns that same object (CPython): no copy at the end, as
    joining the pieces or converting a bytearray would make (the message twice).
    """
    buffer = io.BytesIO(bytes(size))
    for piece in pieces:
        buffer.write(piece)
    if buffer.tell() != size:
        raise RuntimeError(f"read {buffer.tell()} bytes of a {size}-byte message")
    return buffer.getvalue()


def _read_sqlite(connection: Connection, row_id: int, where: Stored) -> bytes | None:
    driver = connection.connection.driver_connection
    assert driver is not None
    # The key, the table's INTEGER PRIMARY KEY, is SQLite's rowid: the blob opens
    # by it, without a query first (that query cost more than reading 4 KB).
    try:
        blob = driver.blobopen(where.table, "raw", row_id, readonly=True)
    except sqlite3.OperationalError:
        exists = text(f"SELECT 1 FROM {where.table} WHERE {where.key} = :id")
        if connection.execute(exists, {"id": row_id}).first() is None:
            return None
        raise
    with blob:
        size = len(blob)

        def pieces() -> Iterator[bytes]:
            while piece := blob.read(SLICE):
                yield piece

        return _assemble(size, pieces()) if size else b""


def _read_postgresql(connection: Connection, row_id: int, where: Stored) -> bytes | None:
    driver = connection.connection.driver_connection
    assert driver is not None
    size_query = f"SELECT octet_length(raw) FROM {where.table} WHERE {where.key} = %s"
    slice_query = f"SELECT substring(raw FROM %s FOR %s) FROM {where.table} WHERE {where.key} = %s"
    # binary=True: bytea comes as its bytes, not as hex text twice their size.
    with driver.cursor(binary=True) as cursor:
        found = cursor.execute(size_query, (row_id,)).fetchone()
        if found is None:
            return None
        size = int(found[0] or 0)

        def pieces() -> Iterator[bytes]:
            for start in range(0, size, SLICE):
                found = cursor.execute(slice_query, (start + 1, SLICE, row_id)).fetchone()
                if found is None:  # READ COMMITTED: each slice is a statement of its own
                    raise LookupError(f"{where.table} {row_id}'s bytes went while being read")
                yield bytes(found[0])

        return _assemble(size, pieces()) if size else b""
