"""How a message's bytes go into `inbound_raw`: a slice at a time, never copied whole.

Binding the bytes as a parameter copies them whole in the driver, and keeps copies:
- SQLite copied a bound blob (keeping that copy in the cached statement until the
  next insert), then copied it again to build the row: a 24 MB message cost 50 MB
  more while stored, and 25 MB stayed after;
- libpq copied the bound value into its send buffer, which stays at the largest
  size it ever sent for as long as the connection lives: each pooled connection
  that once carried a 24 MB message kept 25 MB.
So SQLite gets a zero-filled blob of the right size, filled through its incremental
blob I/O; PostgreSQL gets the rows by `COPY … FROM STDIN (FORMAT BINARY)`. Both
run inside the caller's transaction and cost one slice of memory.

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
from dataclasses import dataclass

from sqlalchemy import Connection, bindparam, func, insert, text
from sqlalchemy.orm import Session

from maildesk.models import InboundRaw

SLICE = 1 << 20
_ZEROED_ROW = insert(InboundRaw).values(raw=func.zeroblob(bindparam("size")))
_COPY = "COPY inbound_raw (inbound_id, raw) FROM STDIN (FORMAT BINARY)"
# PostgreSQL's binary COPY: signature, flags, header extension length; -1 fields ends it.
_COPY_HEADER = b"PGCOPY\n\xff\r\n\0" + struct.pack("!ii", 0, 0)
_COPY_TRAILER = struct.pack("!h", -1)
# Per row: 2 fields; inbound_id an int4 (migration 0012's Integer), then raw's length.
_COPY_ROW = struct.Struct("!hiii")


@dataclass(frozen=True)
class Stored:
    """Where a `raw` column to read lives: its table and its INTEGER PRIMARY KEY
    (SQLite's rowid, by which the blob opens)."""

    table: str
    key: str


INBOUND = Stored("inbound_raw", "inbound_id")
# The outbox's composed mail (written whole by its insert; read here, as sending
# reads it, because PostgreSQL's hex text of a 25 MB bytea cost 144 MB more).
OUTBOX = Stored("outbox", "id")


def write(session: Session, bodies: Sequence[tuple[int, bytes]]) -> None:
    """Store each (inbound id, bytes) in `inbound_raw`, in the session's transaction."""
    if session.get_bind().dialect.name == "sqlite":
        _write_sqlite(session, bodies)
    else:
        _copy_postgresql(session, bodies)


def _slices(raw: bytes) -> list[memoryview]:
    view = memoryview(raw)
    return [view[start : start + SLICE] for start in range(0, len(view), SLICE)]


def _write_sqlite(session: Session, bodies: Sequence[tuple[int, bytes]]) -> None:
    connection = session.connection()
    driver = connection.connection.driver_connection
    assert driver is not None
    for inbound_id, raw in bodies:
        size = {"inbound_id": inbound_id, "size": len(raw)}
        rowid = connection.execute(_ZEROED_ROW, size).lastrowid
        with driver.blobopen("inbound_raw", "raw", rowid) as blob:
            for piece in _slices(raw):
                blob.write(piece)


def _copy_postgresql(session: Session, bodies: Sequence[tuple[int, bytes]]) -> None:
    driver = session.connection().connection.driver_connection
    assert driver is not None
    with driver.cursor() as cursor, cursor.copy(_COPY) as copy:
        copy.write(_COPY_HEADER)
        for inbound_id, raw in bodies:
            copy.write(_COPY_ROW.pack(2, 4, inbound_id, len(raw)))
            for piece in _slices(raw):
                copy.write(piece)
        copy.write(_COPY_TRAILER)


def read(connection: Connection, row_id: int, where: Stored = INBOUND) -> bytes | None:
    """The bytes stored for `row_id` (None: no row), read a slice at a time."""
    if connection.dialect.name == "sqlite":
        return _read_sqlite(connection, row_id, where)
    return _read_postgresql(connection, row_id, where)


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
