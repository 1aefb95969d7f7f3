"""A fresh PostgreSQL schema for one benchmark run, dropped afterwards.

Not a benchmark itself; `scaleout.py` and `threading_lookup.py` import it. The
schema lives in the database `--pg-url` names (the machine's test database by
default); the URL handed out selects it through libpq's `options=-csearch_path`,
as the tests' `db_url` fixture does, so every maildesk process sees only it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, text

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@contextmanager
def fresh_schema(url: str, prefix: str) -> Iterator[str]:
    """Create an empty schema, yield a URL that uses it, drop it (and its rows) at the end."""
    schema = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(url)
    try:
        with admin.begin() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
        sep = "&" if "?" in url else "?"
        yield f"{url}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        admin.dispose()
