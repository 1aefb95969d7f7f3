"""Template files for Jinja: an admin's edit is used within a second, without a restart.

Jinja's `auto_reload` asks the loader at every `get_template` whether the file
changed: a `stat` of each template a render uses (and of each one it extends or
includes), several per processed message, about 2 % of its CPU (py-spy). Here a
template's file is looked at again only when it is used and its last look is
`RECHECK` (1 s) old, by the injected clock: at most once a second per template
and process, whatever the mail rate. So an edit saved at time t is in force for
every render from t + 1 s, in every process (serve's workers each check on their
own). A reload (SIGHUP) makes every template due for a look at its next use
(`look_again`), so that the mail after `systemctl reload` has the edit.

A look compares the file's bytes with the ones compiled, not its modification
time: a file saved twice within the file system's timestamp granularity (a
second on some) with the same size would pass an mtime check forever, and
reading a few KB once a second costs nothing measurable. A look also finds the
file again through the search path, so a file deleted is noticed, and so is an
admin's override added in an earlier folder (`[templates] path` before the
shipped pages) that now shadows the template in use. A name that was not found
is tried again after `RECHECK` too: a missing HTML part costs no `stat` per
render, and one the admin adds is used within the second.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from jinja2 import Environment, FileSystemLoader, TemplateNotFound
from jinja2.loaders import split_template_path

from maildesk.clock import Clock

RECHECK = timedelta(seconds=1)
# Bumped by `look_again`; a template last looked at in an older one is due.
_round = 0
# Names remembered as missing; past it they are forgotten at once. Only `#reply NAME`
# looks up names a person chose, and only an agent can send one.
_MAX_MISSING = 1000


def _due(last: datetime, now: datetime) -> bool:
    # A wall clock stepped back makes a look due, rather than postponing it until
    # the clock catches up again.
    return now - last >= RECHECK or now < last


def look_again() -> None:
    """Every template of this process is looked at again at its next use (a reload)."""
    global _round
    _round += 1


def _read(filename: str) -> bytes | None:
    try:
        with open(filename, "rb") as file:
            return file.read()
    except OSError:
        return None


class FreshLoader(FileSystemLoader):
    """A FileSystemLoader (first folder of `searchpath` wins) whose freshness check
    looks at the file at most once per `RECHECK`; see the module's docstring."""

    def __init__(self, searchpath: str | Sequence[str], clock: Clock) -> None:
        super().__init__(searchpath)
        self._clock = clock
        # Name -> when (and in which round) it was last not found.
        self._missing: dict[str, tuple[datetime, int]] = {}

    def _find(self, pieces: list[str]) -> str | None:
        for folder in self.searchpath:
            # posixpath, as Jinja's own: no drive or UNC part can lead out of the folder.
            filename = posixpath.join(folder, *pieces)
            if os.path.isfile(filename):
                return filename
        return None

    def missing(self, template: str) -> bool:
        """Whether `template` was not found at its last look, and no new look is due:
        asked before `get_template`, it spares the exception raised through Jinja."""
        missed = self._missing.get(template)
        return missed is not None and missed[1] == _round and not _due(missed[0], self._clock.now())

    def get_source(
        self, environment: Environment, template: str
    ) -> tuple[str, str, Callable[[], bool]]:
        if self.missing(template):
            raise TemplateNotFound(template)
        now = self._clock.now()
        pieces = split_template_path(template)
        filename = self._find(pieces)
        data = None if filename is None else _read(filename)
        if filename is None or data is None:
            if len(self._missing) >= _MAX_MISSING:
                self._missing.clear()
            self._missing[template] = (now, _round)
            raise TemplateNotFound(template)
        self._missing.pop(template, None)
        found, checked, looked_round = filename, now, _round

        def uptodate() -> bool:
            nonlocal checked, looked_round
            moment = self._clock.now()
            if looked_round == _round and not _due(checked, moment):
                return True
            checked, looked_round = moment, _round
            return self._find(pieces) == found and _read(found) == data

        # Newlines read as Jinja's own loader reads them (a text-mode open).
        source = data.decode(self.encoding).replace("\r\n", "\n").replace("\r", "\n")
        return source, os.path.normpath(found), uptodate
