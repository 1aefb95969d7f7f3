"""Who holds SQLite's write lock, for how long: loaded by every Python process started
with this folder on PYTHONPATH and MAILDESK_LOCK_TRACE naming a folder
(`bench/ingest.py --lock-trace`): serve and its worker processes alike.

Each first entry of a thread into `db._WriterQueue.turn` (the writer order of one
database file: the main database, or the landing of accepted mail) is written as a
line to `<folder>/<pid>.tsv`: the caller (the nearest maildesk frames outside db.py),
the database file, milliseconds waited for the turn, milliseconds held and CPU
milliseconds of the holding thread while it held it. Held minus CPU is time the
holder was runnable or blocked but not running: the GIL, the scheduler, fsync.
`summarize` reads the folder back. Nothing here changes what maildesk does.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
import traceback
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_FOLDER = os.environ.get("MAILDESK_LOCK_TRACE")


def _caller() -> str:
    """`module:function` of the two nearest maildesk frames that are not the lock's own."""
    names = []
    for frame in reversed(traceback.extract_stack(limit=14)[:-1]):
        path = frame.filename.replace(os.sep, "/")
        if "/maildesk/" not in path or path.endswith(("/db.py", "contextlib.py")):
            continue
        names.append(f"{path.rsplit('/maildesk/', 1)[1].removesuffix('.py')}:{frame.name}")
        if len(names) == 2:
            break
    return " < ".join(names) or "?"


def _install(folder: Path) -> None:
    from maildesk import db

    lines: list[str] = []
    out = folder / f"{os.getpid()}.tsv"

    def flush() -> None:
        with out.open("a") as file:
            file.writelines(lines)
        lines.clear()

    atexit.register(flush)
    original = db._WriterQueue.turn
    files: dict[int, str] = {}

    @contextmanager
    def turn(self: db._WriterQueue, urgent: bool = False) -> Iterator[None]:
        if self._owner == threading.get_ident():  # nested: counted by the outer turn
            with original(self, urgent):
                yield
            return
        asked = time.perf_counter()
        with original(self, urgent):
            got, cpu = time.perf_counter(), time.thread_time()
            try:
                yield
            finally:
                held = time.perf_counter() - got
                used = time.thread_time() - cpu
                name = files.get(id(self), "main")
                lines.append(
                    f"{_caller()}\t{name}\t{(got - asked) * 1e3:.3f}\t{held * 1e3:.3f}\t"
                    f"{used * 1e3:.3f}\n"
                )
                if len(lines) >= 200:
                    flush()

    db._WriterQueue.turn = turn  # type: ignore[method-assign]
    # Which file a queue orders: the landing's Database is made by landing.py.
    original_init = db.Database.__init__

    def init(self: db.Database, url: str, *args: object, **kwargs: object) -> None:
        original_init(self, url, *args, **kwargs)
        if self._writers is not None:
            files[id(self._writers)] = "landing" if url.endswith(".landing") else "main"

    db.Database.__init__ = init  # type: ignore[method-assign]


def summarize(folder: Path, messages: int) -> str:
    """Per caller and file: transactions, and milliseconds per message waited, held and
    used (CPU) while held; the busiest first."""
    totals: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0.0, 0.0, 0.0])
    for path in folder.glob("*.tsv"):
        for line in path.read_text().splitlines():
            caller, name, waited, held, used = line.split("\t")
            total = totals[(name, caller)]
            total[0] += 1
            for i, value in enumerate((waited, held, used), start=1):
                total[i] += float(value)
    rows = sorted(totals.items(), key=lambda item: -item[1][2])
    out = ["| file | caller | transactions | held ms/msg | CPU while held ms/msg | waited ms/msg |"]
    out.append("|---|---|---|---|---|---|")
    for (name, caller), (count, waited, held, used) in rows:
        if held / messages < 0.005:
            continue
        out.append(
            f"| {name} | {caller} | {count:.0f} | {held / messages:.2f} | "
            f"{used / messages:.2f} | {waited / messages:.2f} |"
        )
    for name in sorted({name for name, _ in totals}):
        held = sum(t[2] for (n, _), t in totals.items() if n == name)
        out.append(f"| {name} | all | | {held / messages:.2f} | | |")
    return "\n".join(out)


if _FOLDER and "maildesk" not in sys.modules:
    try:
        _install(Path(_FOLDER))
    except Exception as exc:  # a bench aid: never stop the process it watches
        print(f"locktrace: not installed: {exc}", file=sys.stderr)
