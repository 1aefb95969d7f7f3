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
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from sqlalchemy import bindparam, func, insert
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
