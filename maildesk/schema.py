"""Creating and migrating the schema with Alembic; idempotent by construction.

Alembic is imported when a migration runs, not with this module: a worker
process never migrates, and Alembic's import costs about 11 MB of memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from maildesk.db import Database

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(db: Database) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def upgrade(db: Database) -> None:
    """Bring the database to the newest schema (a no-op when it is already there)."""
    from alembic import command

    config = alembic_config(db)
    with db.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
