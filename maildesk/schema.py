"""Creating and migrating the schema with Alembic; idempotent by construction."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from maildesk.db import Database

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(db: Database) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def upgrade(db: Database) -> None:
    """Bring the database to the newest schema (a no-op when it is already there)."""
    config = alembic_config(db)
    with db.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
