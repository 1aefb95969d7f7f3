"""Creating and migrating the schema with Alembic; idempotent by construction.

Alembic is imported when a migration runs, not with this module: a worker
process never migrates, and Alembic's import costs about 11 MB of memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection

from maildesk.db import Database

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(db: Database) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def upgrade(db: Database, revision: str = "head") -> None:
    """Bring the database to the newest schema (a no-op when it is already there)."""
    from alembic import command

    config = alembic_config(db)
    with _migrating(db) as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def downgrade(db: Database, revision: str) -> None:
    """Take the schema back to `revision` (for developers: no command runs it)."""
    from alembic import command

    config = alembic_config(db)
    with _migrating(db) as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)


@contextmanager
def _migrating(db: Database) -> Iterator[Connection]:
    """A connection in one transaction for a migration. On SQLite a batch migration copies
    a table, drops the old one and renames the copy, which SQLite refuses while foreign
    keys are enforced and other tables point at it: they are off while it runs (as
    SQLite's own procedure for changing a table says) and every row is checked before
    the commit."""
    with db.engine.connect() as connection:
        raw = connection.connection.dbapi_connection if db.is_sqlite else None
        if raw is not None:
            raw.execute("PRAGMA foreign_keys=OFF")  # outside a transaction, or it is ignored
        try:
            with connection.begin():
                yield connection
                if raw is not None:
                    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                    if broken:
                        raise RuntimeError(f"the migration left rows pointing nowhere: {broken}")
        finally:
            if raw is not None:
                raw.execute("PRAGMA foreign_keys=ON")
