"""How the daemon and the CLI log: one line per event, structured, never a secret.

Decides three things:
- **The shape.** A terminal gets a readable line (`12:00:01 INFO maildesk.outbox:
  sent … outbox=7`); anything else (journald, a file, a pipe) gets one JSON object
  per line with `level`, `logger`, `msg` and the context fields. A traceback stays
  inside its record (`exc`), so a log shipper never splits one event in two.
- **The time.** Under journald (`JOURNAL_STREAM` names our stderr) the journal stamps
  each line, so we write no time of our own, and each line starts with the
  `<N>` syslog priority prefix journald reads as the entry's level
  (`journalctl -p warning` then works).
- **What never appears.** A redacting pass over the finished line removes
  `token=`, `password=`, `secret=`, cookies, `Authorization:` values, URL
  passwords and the Message-IDs of our mail (a secret of its ticket: README
  "Trust"), whatever logged them (a message, an argument or an exception).

Context: `extra={"ticket": 42}` on one call, or `with log_context(inbound_id=7):`
around a piece of work (a contextvar, so it follows the asyncio task and does not
leak into the next one). Known fields: `CONTEXT_FIELDS`.

When: a thread inside `held()` (a write transaction on SQLite, `db.py`) keeps its
records until the block ends, then writes them in order. Redacting, encoding and
writing a line cost a tenth of a processing transaction, all of it while SQLite's
one write lock was held, and a stream that blocks (a journal that pushes back)
stalled every writer. The price: a process killed inside the block loses the lines
of a transaction that did not commit either.

Whether: a line that says what a transaction did (`inbound 7 -> ticket 3`, `inbound 8
is a duplicate`, `confirmation 4 asked of …`) is true only once it committed. The
loggers of such lines are made with `transactional()`; inside `after_commit()` (every
`Database.transaction()` and `writing()`, `db.py`) their records are kept, written
once the block ends without an error, and dropped when it raises (rolled back: the
ticket the line named is not there, and the next one gets its number). A savepoint's
records go with it (`undone_on_error()`). An error, or any record with a traceback,
is written at once: a failure is true whatever becomes of the transaction, and
wanted most when it rolls back. Other loggers write as they always did.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from maildesk.redaction import redact_links

# The fields a record may carry, in the order they are printed.
CONTEXT_FIELDS = ("ticket", "message_id", "inbound_id", "outbox_id", "peer", "setting")

_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "maildesk_log_context", default=None
)

# Libraries that chatter at INFO about things ops do not act on.
NOISY = (
    "apscheduler",
    "mail-parser",
    "mailparser",
    "aiosmtpd",
    "mail.log",
    "aiohttp.access",
    "alembic.runtime",
)

# syslog priorities (sd-daemon(3) prefixes) for Python's levels.
_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}

# Any key that contains one of these words: token=, bearer_token:, maildesk_session=,
# password='…', secret_key = "…".
_SECRET_WORD = re.compile(r"(?i)token|password|passwd|secret|api_?key|session|csrf")
_VALUE = r"""(?:'[^'\n]*'|"[^"\n]*"|[^\s&'",;)}\]]+)"""
# A whole key (taken possessively, from its first character), then `=` or `:`; whether
# the key names a secret is `_SECRET_WORD`'s to say, and only then is its value read.
# A pattern with the secret word inside the key (`[…]*(?:token|…)[…]*`) backtracked
# over every run of key characters from each of its positions: a 16 KB address in a
# log line cost 12 s of CPU.
_KEY_AND_SEPARATOR = re.compile(r"""(?<![A-Za-z0-9_-])([A-Za-z0-9_-]++)['"]?\s*+[=:]\s*+""")
_VALUE_AT = re.compile(_VALUE)


def _redact_keyed(text: str) -> str:
    """`text` with the value of every key that names a secret replaced. A key that does
    not is passed over, not its value: `a=token=x` still loses x."""
    pieces: list[str] = []
    position = 0  # of the text not yet copied
    for found in _KEY_AND_SEPARATOR.finditer(text):
        if found.start() < position or not _SECRET_WORD.search(found.group(1)):
            continue
        value = _VALUE_AT.match(text, found.end())
        if value is not None:
            pieces += (text[position : found.end()], "[redacted]")
            position = value.end()
    return "".join(pieces) + text[position:] if pieces else text


_REDACTIONS: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(rf"""(?i)(authorization['"]?\s*[:=]\s*['"]?(?:bearer\s+|basic\s+)?){_VALUE}"""),
        r"\1[redacted]",
    ),
    (re.compile(r"""(?i)((?:set-)?cookie['"]?\s*[:=]\s*)[^\r\n]+"""), r"\1[redacted]"),
    # scheme://user:password@host
    (re.compile(r"(://[^/:@\s]*:)[^@/\s]+@"), r"\1[redacted]@"),
    # The Message-ID of our mail (`md.<token>@…`, outbound/notify.py), in a relay's
    # answer or a Maildir file's name: it lets whoever answers it into the ticket.
    (re.compile(r"(?<![A-Za-z0-9.])md\.[A-Za-z0-9]{16}@"), "md.[redacted]@"),
)


def redact(text: str) -> str:
    """`text` with every token, password, cookie and URL password replaced."""
    text = redact_links(text)  # account and paid tokens, in whatever shape a link took
    text = _redact_keyed(text)
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add `fields` to every record logged inside the block (this task/thread only)."""
    merged = {**(_context.get() or {}), **{k: v for k, v in fields.items() if v is not None}}
    token = _context.set(merged)
    try:
        yield
    finally:
        _context.reset(token)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    found = dict(_context.get() or {})
    for name in CONTEXT_FIELDS:
        value = record.__dict__.get(name)
        if value is not None:
            found[name] = value
    return {name: found[name] for name in CONTEXT_FIELDS if name in found}


class JsonFormatter(logging.Formatter):
    """One JSON object per line; `ts` only when nobody else stamps the line."""

    def __init__(self, *, timestamps: bool) -> None:
        super().__init__()
        self.timestamps = timestamps

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {}
        if self.timestamps:
            data["ts"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + (
                f".{int(record.msecs):03d}Z"
            )
        data["level"] = record.levelname.lower()
        data["logger"] = record.name
        data["msg"] = redact(record.getMessage())
        data.update(_fields(record))
        if record.exc_info:
            data["exc"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            data["exc"] = redact(record.exc_text)
        # Redacted before encoding: JSON's escaping would hide quotes from the patterns.
        return json_text(data, default=str)


# C0 (but a tab), DEL, C1 and Unicode's line separators, which some terminals and
# readers take for line breaks.
_TERMINAL_UNSAFE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
_TERMINAL_UNSAFE_BUT_LINES = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")
# What JSON with non-ASCII text kept readable still leaves raw: DEL, C1 controls (CSI
# to a terminal that obeys them) and the line separators `str.splitlines` splits at.
_JSON_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029]")


def _escaped(found: re.Match[str]) -> str:
    code = ord(found.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def json_text(data: Any, **options: Any) -> str:
    """`json.dumps` keeping non-ASCII text readable, with nothing a terminal or a line
    reader would act on left raw (json.dumps escapes C0 only)."""
    text = json.dumps(data, ensure_ascii=False, **options)
    return _JSON_UNSAFE.sub(lambda found: f"\\u{ord(found.group()):04x}", text)


class ReadableFormatter(logging.Formatter):
    """For a person at a terminal: time, level, logger, message, then `key=value`."""

    def __init__(self, *, timestamps: bool) -> None:
        super().__init__()
        self.timestamps = timestamps

    def format(self, record: logging.LogRecord) -> str:
        stamp = ""
        if self.timestamps:
            stamp = time.strftime("%H:%M:%S ", time.localtime(record.created))
        line = f"{stamp}{record.levelname} {record.name}: {record.getMessage()}"
        extra = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        if extra:
            line = f"{line}  {extra}"
        # Strangers' words (a Message-ID, a subject) are in messages: a control
        # character would retitle or clear the terminal, a line break forge a line.
        # Redacted first: a link wrapped or quoted across lines is found by its breaks.
        line = _TERMINAL_UNSAFE.sub(_escaped, redact(line))
        if record.exc_info:
            trace = redact(self.formatException(record.exc_info))
            line = f"{line}\n{_TERMINAL_UNSAFE_BUT_LINES.sub(_escaped, trace)}"
        return line


class _JournalPrefix(logging.Formatter):
    """Wraps a formatter: `<N>` first, so journald files the line under its priority."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno, 6)
        # One record may still hold newlines (a readable traceback): journald would
        # split it, so they are escaped in that case.
        return f"<{priority}>" + self.inner.format(record).replace("\n", "\\n")


def under_journald(stream: TextIO) -> bool:
    """Whether `stream` is connected to the journal (systemd sets JOURNAL_STREAM=dev:inode)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    if not value:
        return False
    try:
        device, inode = (int(part) for part in value.split(":"))
        stat = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (stat.st_dev, stat.st_ino) == (device, inode)


def make_formatter(stream: TextIO, *, json_lines: bool | None = None) -> logging.Formatter:
    journal = under_journald(stream)
    if json_lines is None:
        json_lines = not _isatty(stream)
    inner: logging.Formatter = (
        JsonFormatter(timestamps=not journal)
        if json_lines
        else ReadableFormatter(timestamps=not journal)
    )
    return _JournalPrefix(inner) if journal else inner


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


# Records one `held()` block keeps at most: then they are written, in order, and it
# keeps the next ones. A transaction that logs without end holds no more memory.
MOST_HELD = 1000

_holding = threading.local()


@contextmanager
def held() -> Iterator[None]:
    """This thread's records are written when the block ends (however it ends), not
    while it runs. Nested blocks: the outermost one writes."""
    if getattr(_holding, "records", None) is not None:
        yield
        return
    records: list[tuple[logging.Handler, logging.LogRecord]] = []
    _holding.records = records
    try:
        yield
    finally:
        _holding.records = None
        _write(records)


def _write(records: list[tuple[logging.Handler, logging.LogRecord]]) -> None:
    for handler, record in records:
        handler.handle(record)
    records.clear()


class _HoldingHandler(logging.Handler):
    """Writes through `inner`, unless this thread is in a `held()` block. A record kept
    for later is finished now: its message formatted (its arguments may change or
    belong to a closed session by then) and the context of the moment copied in."""

    def __init__(self, inner: logging.Handler) -> None:
        super().__init__()
        self.inner = inner

    def handle(self, record: logging.LogRecord) -> bool:
        records: list[tuple[logging.Handler, logging.LogRecord]] | None = getattr(
            _holding, "records", None
        )
        if records is None:
            return bool(self.inner.handle(record))
        if len(records) >= MOST_HELD:
            _write(records)
        _finish(record)
        records.append((self.inner, record))
        return True

    def emit(self, record: logging.LogRecord) -> None:
        self.inner.emit(record)

    def flush(self) -> None:
        self.inner.flush()


def configure(level: str = "info", stream: TextIO | None = None) -> None:
    """Send every log record to `stream` (stderr) in the shape above, at `level` and worse."""
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    handler.setFormatter(make_formatter(stream))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(_HoldingHandler(handler))
    set_level(level)


def set_level(level: str) -> None:
    """Change the level of a running process (`[log] level` after a reload)."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    logging.getLogger().setLevel(numeric)
    for name in NOISY:
        logging.getLogger(name).setLevel(numeric if numeric <= logging.DEBUG else logging.WARNING)


# -- what a transaction did: told once it committed ----------------------------------

_unsettled: contextvars.ContextVar[list[logging.LogRecord] | None] = contextvars.ContextVar(
    "maildesk_log_unsettled", default=None
)
# Set on a record written after its commit, which the filter then lets pass.
_SETTLED = "maildesk_settled"


class _UntilCommitted(logging.Filter):
    """Keeps the records logged inside an `after_commit()` block for its end, but
    errors and tracebacks."""

    def filter(self, record: logging.LogRecord) -> bool:
        kept = _unsettled.get()
        if kept is None or record.levelno >= logging.ERROR or record.exc_info:
            return True
        if record.__dict__.get(_SETTLED):
            return True
        _finish(record)
        kept.append(record)
        return False


_UNTIL_COMMITTED = _UntilCommitted()


def transactional(name: str) -> logging.Logger:
    """The logger `name`, whose records logged inside an `after_commit()` block (a
    write transaction) are written only once that transaction committed."""
    logger = logging.getLogger(name)
    if _UNTIL_COMMITTED not in logger.filters:
        logger.addFilter(_UNTIL_COMMITTED)
    return logger


@contextmanager
def after_commit() -> Iterator[None]:
    """Around a transaction: the `transactional` loggers' records logged inside are
    written when the block ends without an error (after the commit, in their order),
    and dropped when it raises. A block inside another keeps its own: a transaction
    of its own commits or not by itself."""
    kept: list[logging.LogRecord] = []
    token = _unsettled.set(kept)
    try:
        yield
    finally:
        _unsettled.reset(token)
    for record in kept:
        record.__dict__[_SETTLED] = True
        logging.getLogger(record.name).handle(record)


@contextmanager
def undone_on_error() -> Iterator[None]:
    """Around a savepoint inside `after_commit()`: the records logged in the block are
    dropped when it raises (what they tell was rolled back); the transaction's other
    records stay."""
    kept = _unsettled.get()
    mark = len(kept) if kept is not None else 0
    try:
        yield
    except BaseException:
        if kept is not None:
            del kept[mark:]
        raise


def _finish(record: logging.LogRecord) -> None:
    """A record kept for later, finished now: its message formatted (its arguments may
    change or belong to a closed session by then) and the context of the moment copied
    in."""
    try:
        record.msg, record.args = record.getMessage(), None
    except Exception:  # noqa: S110 (a handler reports it, when it formats the record)
        pass
    for name, value in (_context.get() or {}).items():
        record.__dict__.setdefault(name, value)
