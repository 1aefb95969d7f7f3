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

from sqlalchemy import Connection, bindparam, func, insert, select
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
_SQLITE_ROW = select(InboundRaw.inbound_id).where(InboundRaw.inbound_id == bindparam("id"))
_PG_SIZE = "SELECT octet_length(raw) FROM inbound_raw WHERE inbound_id = %s"
_PG_SLICE = "SELECT substring(raw FROM %s FOR %s) FROM inbound_raw WHERE inbound_id = %s"


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


def read(connection: Connection, inbound_id: int) -> bytes | None:
    """The bytes stored for `inbound_id` (None: no row), read a slice at a time."""
    if connection.dialect.name == "sqlite":
        return _read_sqlite(connection, inbound_id)
    return _read_postgresql(connection, inbound_id)


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


def _read_sqlite(connection: Connection, inbound_id: int) -> bytes | None:
    driver = connection.connection.driver_connection
    assert driver is not None
    # `inbound_id`, the table's INTEGER PRIMARY KEY, is SQLite's rowid: the blob opens
    # by it, without a query first (that query cost more than reading 4 KB).
    try:
        blob = driver.blobopen("inbound_raw", "raw", inbound_id, readonly=True)
    except sqlite3.OperationalError:
        if connection.execute(_SQLITE_ROW, {"id": inbound_id}).first() is None:
            return None
        raise
    with blob:
        size = len(blob)

        def pieces() -> Iterator[bytes]:
            while piece := blob.read(SLICE):
                yield piece

        return _assemble(size, pieces()) if size else b""


def _read_postgresql(connection: Connection, inbound_id: int) -> bytes | None:
    driver = connection.connection.driver_connection
    assert driver is not None
    # binary=True: bytea comes as its bytes, not as hex text twice their size.
    with driver.cursor(binary=True) as cursor:
        found = cursor.execute(_PG_SIZE, (inbound_id,)).fetchone()
        if found is None:
            return None
        size = int(found[0] or 0)

        def pieces() -> Iterator[bytes]:
            for start in range(0, size, SLICE):
                found = cursor.execute(_PG_SLICE, (start + 1, SLICE, inbound_id)).fetchone()
                if found is None:  # READ COMMITTED: each slice is a statement of its own
                    raise LookupError(f"inbound {inbound_id}'s bytes went while being read")
                yield bytes(found[0])

        return _assemble(size, pieces()) if size else b""
