"""The statements every processed message runs, on the driver's cursor.

SQLAlchemy's execution machinery (execution context, parameter checks, result
object) costs some 40-70 µs of CPU per statement on these machines; on SQLite
the statement itself costs 5-10. A processed message runs about fifteen, so
that machinery was a fifth of the processing. A `Hot` statement is a Core
statement compiled once per dialect (and, for an insert, per set of columns
given), whose parameters pass through the same bind processors SQLAlchemy
would apply (dates to SQLite's text, JSON to text), then straight to a cursor
of the connection's DB-API connection, in its transaction. `rawbytes.py` does
the same for the stored bytes.

The engine's `before_cursor_execute` listeners still see each statement (a
benchmark counting statements, `bench/threading_lookup.py` explaining them),
with no execution context; without a listener that costs one attribute test.

What such a statement may be: no expanding IN. Result columns pass through
the result processors SQLAlchemy would apply (SQLite's text to dates); a row
of integers and strings costs no more than the driver's. A parameter the
statement needs and the caller left out is an error here, never a default
filled in: `Hot` does not run Python-side column defaults.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.dialects.sqlite import DATETIME as SQLiteDateTime
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

BindProcessor = Callable[[Any], Any] | None  # SQLAlchemy's, per type and dialect


_HELD = "maildesk.hotsql.connection"  # the key of `connection_of`'s memory in `Session.info`


def connection_of(session: Session) -> Connection:
    """`session.connection()`, remembered for the transaction it belongs to.

    SQLAlchemy's answer walks its transaction's state machinery each time (some 2 µs);
    a processed message asks for it about seventeen times. The connection found is
    given again while the same transaction (and the same savepoint, if any) is active
    in `session`; any other time, and first, the session is asked.
    """
    held: tuple[Any, Any, Connection] | None = session.info.get(_HELD)
    if held is not None:
        root, nested, connection = held
        if (
            root is not None
            and root.is_active
            and (nested is None or nested.is_active)
            and root is session.get_transaction()
            and nested is session.get_nested_transaction()
        ):
            return connection
    connection = session.connection()
    session.info[_HELD] = (session.get_transaction(), session.get_nested_transaction(), connection)
    return connection


class Hot:
    """A Core statement run on the driver's cursor (see the module's docstring)."""

    def __init__(self, statement: ClauseElement) -> None:
        self.statement = statement
        self._forms: dict[tuple[str, tuple[str, ...]], _Form] = {}

    def first(self, connection: Connection, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """The first row the statement returns, None if none."""
        form = self._form(connection, tuple(params))
        row = _execute(connection, form.sql, form.parameters(params), fetch=True)
        return None if row is None else form.result(row)

    def all(self, connection: Connection, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """Every row the statement returns."""
        form = self._form(connection, tuple(params))
        rows = _execute(connection, form.sql, form.parameters(params), fetch_all=True)
        return [form.result(row) for row in rows]

    def scalar(self, connection: Connection, params: Mapping[str, Any]) -> Any:
        """The first column of the first row the statement returns; None without a row."""
        row = self.first(connection, params)
        return None if row is None else row[0]

    def run(self, connection: Connection, params: Mapping[str, Any]) -> None:
        form = self._form(connection, tuple(params))
        _execute(connection, form.sql, form.parameters(params))

    def run_many(self, connection: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """The statement once per row of parameters (all rows name the same columns)."""
        if rows:
            form = self._form(connection, tuple(rows[0]))
            _execute(connection, form.sql, [form.parameters(row) for row in rows], many=True)

    def _form(self, connection: Connection, keys: tuple[str, ...]) -> _Form:
        dialect = connection.dialect
        form = self._forms.get((dialect.name, keys))
        if form is None:
            form = self._forms[(dialect.name, keys)] = _Form(self.statement, dialect, keys)
        return form


def _execute(
    connection: Connection,
    sql: str,
    parameters: Any,
    *,
    many: bool = False,
    fetch: bool = False,
    fetch_all: bool = False,
) -> Any:
    """Run `sql` on a cursor of the connection's DB-API connection, in its transaction;
    the first row with `fetch`, every row with `fetch_all`. A driver's error is raised
    as SQLAlchemy raises it (an IntegrityError, a DBAPIError carrying PostgreSQL's
    sqlstate), so callers handle one kind of error whichever way their statement ran."""
    cursor = connection.connection.cursor()
    try:
        if connection._has_events or connection.engine._has_events:
            for listener in connection.dispatch.before_cursor_execute:
                sql, parameters = listener(connection, cursor, sql, parameters, None, many)
        if many:
            cursor.executemany(sql, parameters)
        else:
            cursor.execute(sql, parameters)
        if fetch_all:
            return cursor.fetchall()
        return cursor.fetchone() if fetch else None
    except connection.dialect.loaded_dbapi.Error as exc:
        raise DBAPIError.instance(
            sql,
            parameters,
            exc,
            connection.dialect.loaded_dbapi.Error,
            hide_parameters=connection.engine.hide_parameters,
            dialect=connection.dialect,
        ) from exc
    finally:
        cursor.close()


def _bind_processor(type_: Any, dialect: Dialect) -> BindProcessor:
    """SQLAlchemy's bind processor of `type_` for `dialect`; SQLite's datetime text is
    made the same way at half the cost (`_sqlite_datetime`)."""
    impl = type_.dialect_impl(dialect)
    process = impl.bind_processor(dialect)
    if isinstance(impl, SQLiteDateTime) and impl._storage_format == _SQLITE_DATETIME_FORMAT:
        return _sqlite_datetime(process)
    return process


# SQLite's DATETIME stores this text (SQLAlchemy's default storage format), which its
# bind processor fills from a dict of seven fields: 18,000 instructions a value, about
# seventeen values a processed message. The same text from a tuple: 10,600.
_SQLITE_DATETIME_FORMAT = (
    "%(year)04d-%(month)02d-%(day)02d %(hour)02d:%(minute)02d:%(second)02d.%(microsecond)06d"
)
_SQLITE_DATETIME = "%04d-%02d-%02d %02d:%02d:%02d.%06d"


def _sqlite_datetime(process: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """`process` (SQLAlchemy's), its text made faster for a `datetime`."""
    form = _SQLITE_DATETIME

    def faster(value: Any) -> Any:
        if type(value) is datetime:
            return form % (
                value.year,
                value.month,
                value.day,
                value.hour,
                value.minute,
                value.second,
                value.microsecond,
            )
        return process(value)

    return faster


class _Form:
    """The statement compiled for one dialect and set of given parameters: its SQL, and
    how given parameters become the driver's (in order, through bind processors)."""

    def __init__(self, statement: ClauseElement, dialect: Dialect, keys: tuple[str, ...]) -> None:
        compiled = statement.compile(dialect=dialect, column_keys=list(keys))
        assert isinstance(compiled, SQLCompiler)
        if compiled.literal_execute_params or compiled.post_compile_params:
            raise ValueError(f"not a hot statement (rendered anew per call): {compiled.string}")
        if compiled.insert_prefetch or compiled.update_prefetch:
            # Columns left out whose Python-side default SQLAlchemy would compute.
            prefetch = [*compiled.insert_prefetch, *compiled.update_prefetch]
            left_out = [column.name for column in prefetch]
            raise ValueError(f"hot statement needs {left_out}: {compiled.string}")
        self.sql = compiled.string
        self.positional = compiled.positional
        binds = {name: bind for bind, name in compiled.bind_names.items()}  # as rendered
        self.names = list(compiled.positiontup or ()) if compiled.positional else list(binds)
        self.processors: list[tuple[str, BindProcessor]] = [
            (name, _bind_processor(binds[name].type, dialect)) for name in self.names
        ]
        results = [
            entry.type.dialect_impl(dialect).result_processor(dialect, None)
            for entry in compiled._result_columns
        ]
        self.results = results if any(results) else None
        # The statement's own values (a LIMIT 1, a literal in a WHERE clause).
        self.fixed = {
            name: bind.value
            for name, bind in binds.items()
            if name not in keys and not bind.required
        }

    def result(self, row: Sequence[Any]) -> tuple[Any, ...]:
        if self.results is None:
            return tuple(row)
        return tuple(
            value if process is None or value is None else process(value)
            for process, value in zip(self.results, row, strict=True)
        )

    def parameters(self, given: Mapping[str, Any]) -> list[Any] | dict[str, Any]:
        values = {**self.fixed, **given} if self.fixed else given
        out = []
        try:
            for name, process in self.processors:
                value = values[name]
                out.append(value if process is None else process(value))
        except KeyError as missing:
            raise ValueError(f"hot statement needs {missing}: {self.sql}") from None
        return out if self.positional else dict(zip(self.names, out, strict=True))
