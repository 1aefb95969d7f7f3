"""Long runs of base64 lines kept out of the stdlib parser's line lists.

The stdlib's feedparser keeps a leaf body as one str per line until the part
ends, then joins them: a 24 MB attachment cost 42 MB of line objects and the
25 MB join, on top of the raw bytes and the decoded data. `Runs.feed` hands
the parser one marker line in place of each long run of base64-alphabet
lines, and remembers where the run sits in the raw bytes. After the parse,
`restore_tree` puts every run back as text where something reads it as text,
except in the parts the caller names, whose run `decode` turns into bytes
straight from the raw buffer (no str of the body at all).

The parse itself is unchanged: a run holds only whole lines of letters,
digits, `+`, `/` and `=` (never a header, a boundary or a blank line), and the
marker is such a line too, so the parser splits parts and headers exactly as
it would have; the restored text is the stdlib's own payload, byte for byte.
The marker carries a random nonce per parse, so no sender can write one.
"""

from __future__ import annotations

import binascii
import re
import secrets
from collections.abc import Callable, Iterator
from email.feedparser import BytesFeedParser
from email.message import Message

# Runs shorter than this stay in the parse: only large bodies are worth it, and
# a message smaller than this is fed as it is (no scan).
MIN_RUN = 1 << 20
# Bytes fed to the parser at a time: `message_from_bytes` decodes the whole message
# to one str and wraps it in a StringIO (4 bytes per character).
_FEED = 1 << 16
# Whole lines of the base64 alphabet. Possessive: a line that turns out not to be
# one is given up without backtracking, so the scan stays linear.
_RUN = re.compile(rb"(?m)^(?:[A-Za-z0-9+/=]++\r?\n)++")
# A marker: its parse's nonce, then the run's index. One pattern for every parse (compiling
# one per message cost a tenth of parsing it); a match counts only with this parse's nonce.
_MARKER = re.compile(r"MaildeskRun([0-9a-f]{32})N(\d+)")


class Runs:
    """The long base64 runs of one message, and the markers that stand for them."""

    def __init__(self, raw: bytes) -> None:
        self._raw = memoryview(raw)
        self._nonce = secrets.token_hex(16)
        self._prefix = f"MaildeskRun{self._nonce}N"
        self._spans: list[tuple[int, int]] = []  # start, end of each run in `raw`

    def feed(self, parser: BytesFeedParser) -> None:
        """Feed the raw bytes to `parser`, each long run as one marker line."""
        raw = self._raw
        position = 0
        if len(raw) >= MIN_RUN:
            for start, end in long_runs(raw):
                _feed(parser, raw[position:start])
                ending = b"\r\n" if raw[end - 2 : end] == b"\r\n" else b"\n"
                parser.feed(f"{self._prefix}{len(self._spans)}".encode("ascii") + ending)
                self._spans.append((start, end))
                position = end
        _feed(parser, raw[position:])

    def restore_tree(self, message: Message, keep: Callable[[Message], bool]) -> None:
        """Put the runs back as text in every part, but for the leaves whose whole
        body is one run and that `keep` names (those stay a marker, for `decode`).
        Below a container `keep` does not name, every run is put back."""
        if not self._spans:
            return
        stack = [(message, True)]
        while stack:
            part, kept = stack.pop()
            kept = kept and keep(part)
            for name in ("preamble", "epilogue"):
                value = getattr(part, name, None)
                if isinstance(value, str):
                    setattr(part, name, self.restore(value))
            payload = part._payload  # type: ignore[attr-defined]
            if isinstance(payload, list):
                stack.extend((child, kept) for child in payload)
            elif isinstance(payload, str) and self._prefix in payload:
                if not (kept and self._run_of(payload) is not None):
                    part.set_payload(self.restore(payload))

    def restore(self, text: str) -> str:
        """`text` with each marker replaced by the run it stands for, as the parser
        would have left it (the line ending before a boundary is the boundary's)."""
        if not self._spans or self._prefix not in text:
            return text
        pieces: list[str] = []
        position = 0
        for found in _MARKER.finditer(text):
            if found.group(1) != self._nonce:
                continue  # the sender's text, not a marker of ours
            start, end = self._spans[int(found.group(2))]
            if found.start() > position:
                pieces.append(text[position : found.start()])
            ending = "\r\n" if self._raw[end - 2 : end] == b"\r\n" else "\n"
            after = found.end()
            if text.startswith(ending, after):
                after += len(ending)
            else:  # the parser cut the run's last line ending off
                end -= len(ending)
            pieces.append(str(self._raw[start:end], "ascii"))
            position = after
        if position < len(text):
            pieces.append(text[position:])
        return "".join(pieces)

    def decode(self, payload: str) -> bytes | None:
        """The base64-decoded bytes of a body kept as a marker; None for any other text.

        The same bytes as `binascii.a2b_base64` of the restored body: what surrounds
        the marker is whitespace, which base64 decoding skips. Raises ValueError as
        that call would.
        """
        run = self._run_of(payload)
        if run is None:
            return None
        start, end = self._spans[run]
        return binascii.a2b_base64(self._raw[start:end])

    def _run_of(self, payload: str) -> int | None:
        """The run a body consists of (only a marker and whitespace), or None."""
        found = _MARKER.fullmatch(payload.strip())
        return int(found.group(2)) if found and found.group(1) == self._nonce else None


def long_runs(raw: bytes | memoryview) -> Iterator[tuple[int, int]]:
    """Where the runs of whole base64-alphabet lines of at least `MIN_RUN` bytes are."""
    for found in _RUN.finditer(raw):
        if found.end() - found.start() >= MIN_RUN:
            yield found.span()


def _feed(parser: BytesFeedParser, data: memoryview) -> None:
    for start in range(0, len(data), _FEED):
        parser.feed(bytes(data[start : start + _FEED]))
