"""What every command shares: the lazily built context, addresses, output helpers."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

import click

from maildesk import config as config_module
from maildesk.config import ConfigError, Settings
from maildesk.services import Services, build

EMAIL = re.compile(r"^[^@\s<>(),;:\"\[\]\\]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$")

EX_DATAERR = 65
EX_TEMPFAIL = 75  # sysexits.h: the MTA keeps the message and retries


class Context:
    def __init__(self, config_path: str | None) -> None:
        self.path = config_module.config_path(config_path)
        self._settings: Settings | None = None
        self._services: Services | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            try:
                self._settings = config_module.load(self.path)
            except ConfigError as exc:
                raise click.ClickException(str(exc)) from None
        return self._settings

    @property
    def services(self) -> Services:
        if self._services is None:
            try:
                self._services = build(self.settings)
            except ConfigError as exc:
                raise click.ClickException(str(exc)) from None
        return self._services


pass_context = click.make_pass_decorator(Context)


pass_context = click.make_pass_decorator(Context)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, ensure_ascii=False, indent=2))


def table(headers: list[str], rows: Iterable[list[Any]]) -> None:
    rows = [[str(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [min(max(w, len(c)), 60) for w, c in zip(widths, row, strict=True)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in rows:
        click.echo("  ".join(c[:w].ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
