"""What every command shares: the lazily built context, addresses, output helpers.

Nothing heavy is imported here: `maildesk --help` must not pay for SQLAlchemy, and
`tickets show` must not pay for the daemon. `Context.db` is the database alone (for
commands that read); `Context.services` builds every part (for commands that act).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import click

from maildesk import config as config_module
from maildesk.config import ConfigError, Settings

if TYPE_CHECKING:
    from maildesk.db import Database
    from maildesk.services import Services

EMAIL = re.compile(r"^[^@\s<>(),;:\"\[\]\\]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$")


def stored_address(value: str) -> str:
    """`value` as addresses from mail are kept (`headers.as_stored`: lower case, a Unicode
    domain as its A-label, so `petr@příklad.cz` is `petr@xn--pklad-zsa96e.cz`), checked
    against EMAIL in that form; ClickException when it is no e-mail address. Checked
    as typed, a Unicode domain was "not an e-mail address", and looked up as typed, it
    matched nobody: every address from mail is kept in the A-label form."""
    from maildesk.outbound.headers import as_stored

    stored = as_stored(value)
    if not EMAIL.match(stored):
        raise click.ClickException(f"not an e-mail address: {value}")
    return stored


EX_DATAERR = 65
EX_TEMPFAIL = 75  # sysexits.h: the MTA keeps the message and retries
EX_CONFIG = 78  # sysexits.h: the configuration is wrong


class ConfigFailure(click.ClickException):
    """A configuration error: one line on stderr, exit 78 (EX_CONFIG)."""

    exit_code = EX_CONFIG

    def show(self, file: Any = None) -> None:
        click.echo(f"maildesk: {self.format_message()}", err=True)


class Context:
    def __init__(self, config_path: str | None) -> None:
        self.path = config_module.config_path(config_path)
        self._settings: Settings | None = None
        self._services: Services | None = None
        self._db: Database | None = None
        self.verbose = False  # -v: debug logging
        self.debug = False  # --debug: tracebacks on start-up failures too

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            try:
                self._settings = config_module.load(self.path)
            except ConfigError as exc:
                raise ConfigFailure(str(exc)) from None
        return self._settings

    @property
    def db(self) -> Database:
        """The database only: what read-only commands need (no templates, no signing key)."""
        if self._services is not None:
            return self._services.db
        if self._db is None:
            from maildesk.db import Database

            self._db = Database(self.settings.database.url)
        return self._db

    @property
    def services(self) -> Services:
        if self._services is None:
            from maildesk.services import build

            try:
                self._services = build(self.settings)
            except ConfigError as exc:
                raise ConfigFailure(str(exc)) from None
        return self._services

    def close(self) -> None:
        """Let go of the database once the command ends: its connections and the lock
        files beside it. A process that runs many commands (the test suite, a script
        calling `main`) ran out of file descriptors, eight left open by each."""
        db = self._services.db if self._services is not None else self._db
        if db is not None:
            db.dispose()


pass_context = click.make_pass_decorator(Context)


class LazyChoice(click.Choice):
    """A choice whose values live in a heavy module ("module:NAME"), read when first used.

    The `--help` of the whole program lists groups only and never reads them.
    """

    def __init__(self, where: str, case_sensitive: bool = True) -> None:
        self._where = where
        self._loaded: tuple[str, ...] | None = None
        self.case_sensitive = case_sensitive

    @property
    def choices(self) -> tuple[str, ...]:  # type: ignore[override]
        if self._loaded is None:
            module, _, name = self._where.partition(":")
            self._loaded = tuple(getattr(importlib.import_module(module), name))
        return self._loaded


def print_json(data: Any) -> None:
    from maildesk.logs import json_text

    click.echo(json_text(data, indent=2))


def printable(value: object) -> str:
    """`value` with its control characters folded to spaces, for a line the commands
    print: strangers' words (a body line, a subject, a filename) would otherwise move
    the terminal's cursor, retitle it, or forge a line. One line of text only."""
    from maildesk.message import fold_controls

    return fold_controls(str(value))


def table(headers: list[str], rows: Iterable[list[Any]]) -> None:
    from maildesk.message import clean_text  # not for --help (cli/main.py)

    # Cells hold strangers' words (envelope senders, subjects, reasons): a control
    # character would move the terminal's cursor or start a forged row.
    rows = [[clean_text(str(c)) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [min(max(w, len(c)), 60) for w, c in zip(widths, row, strict=True)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in rows:
        click.echo("  ".join(c[:w].ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
