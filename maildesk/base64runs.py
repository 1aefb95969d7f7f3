"""Long runs of lines kept out of the stdlib parser's line lists.

The stdlib's feedparser keeps a leaf body as one str per line until the part
ends, then joins them: a 24 MB attachment cost 42 MB of line objects and the
25 MB join, on top of the raw bytes and the decoded data. `Runs.feed` hands
the parser one marker line in place of each long run of such lines, and
remembers where the run sits in the raw bytes. After the parse, `restore_tree`
puts every run back as text where something reads it as text, except in the
leaves the caller names, whose runs are read straight from the raw buffer:
`decode` (base64, or a body `hold` took: uuencoded, or in 7bit or 8bit and
handed on as it came, `as_is`), `uudecode`, and `flattened` for the text
mail-parser makes of a container marked as an attachment, which holds the
markers of the leaves in it.

The parse itself is unchanged. A run holds whole lines only: of letters,
digits, `+`, `/` and `=`, or of the characters uuencode writes (space to
backtick, no lower case), or, between such runs, of any text (8-bit text keeps
one str per line too, each with a surrogate per 8-bit byte: a 23 MB log file
in UTF-8 cost 119 MB to parse). None is a boundary line (`--` first), and only
a text run holds blank lines. A run of base64 or uuencode never starts at a
line the parser could take for a header (`X:`, a leading blank): the run's
first line ends a header block as the marker does, and every later line is
body. The marker is such a line too, so the parser splits parts and headers
exactly as it would have; the restored text is the stdlib's own payload, byte
for byte. A text run also starts at a line that reads as a field after a blank
line (a log's every line may read `10:00: …`): where its marker ended a header
block, the parser was reading fields, not body (a forwarded mail's), and where
a part is a delivery report, blank lines part its blocks of fields; either way
the message is parsed again without text runs (`message._message`). The marker
carries a random nonce per parse, so no sender can write one.
"""

from __future__ import annotations

import binascii
import io
import re
import secrets
from collections.abc import Callable, Iterable, Iterator
from email.feedparser import BytesFeedParser
from email.message import Message

# Runs shorter than this stay in the parse: only large bodies are worth it, and
# a message smaller than this is fed as it is (no scan).
MIN_RUN = 1 << 20
# Bytes of a run copied at a time to undo its line ends or split it into lines.
_SLICE = 1 << 16
# Bytes fed to the parser at a time: `message_from_bytes` decodes the whole message
# to one str and wraps it in a StringIO (4 bytes per character).
_FEED = 1 << 16
# Whole lines of the base64 alphabet, or of uuencode's (space to backtick) from a line the
# parser reads as no header (email.feedparser.headerRE fails) and with no line starting
# `--` (a boundary). Possessive: a line that turns out not to be one is given up without
# backtracking, so the scan stays linear.
_RUN = re.compile(
    rb"(?m)^(?:(?:[A-Za-z0-9+/=]++\r?\n)++"
    rb"|(?![\x21-\x39\x3b-\x7e]*:)(?:(?!--)[\x21-\x60][\x20-\x60]*+\r?\n)++)"
)
# Whole lines of any text, 8-bit and blank ones too, looked for between the runs above:
# with no line starting `--` (a boundary) and no lone CR (a line end to the parser); from
# a line that is not blank, and either reads as no header field (`email.feedparser`'s
# headerRE fails) or follows a blank line (a body's first, a log's `10:00: …`, or a
# forwarded mail's first field: `starts_text_run` finds out after the parse).
_TEXT_RUN = re.compile(
    rb"(?m)^(?:(?<=\n\n)|(?<=\n\r\n)|(?!From |[\x21-\x39\x3b-\x7e]*:|[\t ]))"
    rb"(?!--)[^\r\n]++\r?\n(?:(?!--)[^\r\n]*+\r?\n)*+"
)
# A marker: its parse's nonce, then N and a run's index, or U or R and the index of a body
# `hold` took (uuencoded, or handed on as it is). One pattern for every parse (compiling
# one per message cost a tenth of parsing it); a match counts only with this parse's nonce.
_MARKER = re.compile(r"MaildeskRun([0-9a-f]{32})([NUR])(\d+)")
# What Message.get_payload(decode=True) decodes as uuencode (the value lower-cased, not stripped).
UUENCODE = ("x-uuencode", "uuencode", "uue", "x-uue")


class Runs:
    """The long runs of one message, and the markers that stand for them."""

    def __init__(self, raw: bytes, text: bool = True) -> None:
        """`text`: also runs of any text (`_TEXT_RUN`), not only of base64 and uuencode."""
        self._bytes = raw
        self._raw = memoryview(raw)
        self._nonce = secrets.token_hex(16)
        self._prefix = f"MaildeskRun{self._nonce}"
        self._spans: list[tuple[int, int]] = []  # start, end of each run in `raw`
        self._text_runs: set[int] = set()  # which of them are runs of any text
        self._with_text = text
        self._held: list[str] = []  # the bodies `hold` took, markers in them

    @property
    def text_runs(self) -> bool:
        return bool(self._text_runs)

    def feed(self, parser: BytesFeedParser) -> None:
        """Feed the raw bytes to `parser`, each long run as one marker line."""
        raw = self._raw
        position = 0
        if len(raw) >= MIN_RUN:
            for start, end, text in self.find():
                _feed(parser, raw[position:start])
                ending = b"\r\n" if raw[end - 2 : end] == b"\r\n" else b"\n"
                if text:
                    self._text_runs.add(len(self._spans))
                parser.feed(f"{self._prefix}N{len(self._spans)}".encode("ascii") + ending)
                self._spans.append((start, end))
                position = end
        _feed(parser, raw[position:])

    def find(self) -> Iterator[tuple[int, int, bool]]:
        """The runs of base64 and uuencode, and with `text` the runs of any text between
        them, in order: start, end, whether a run of any text."""
        position = 0
        for start, end in long_runs(self._bytes):
            yield from self._long_text_runs(position, start)
            yield start, end, False
            position = end
        yield from self._long_text_runs(position, len(self._bytes))

    def _long_text_runs(self, start: int, end: int) -> Iterator[tuple[int, int, bool]]:
        if not self._with_text:
            return
        for found in _TEXT_RUN.finditer(self._bytes, start, end):
            if found.end() - found.start() >= MIN_RUN:
                yield found.start(), found.end(), True

    def starts_text_run(self, text: str) -> bool:
        """Does `text` start with the marker of a run of any text?"""
        found = _MARKER.match(text)
        return bool(
            found
            and found.group(1) == self._nonce
            and found.group(2) == "N"
            and int(found.group(3)) in self._text_runs
        )

    def holds_text(self, payload: str) -> bool:
        """Does `payload` hold a marker of a run of any text?"""
        return any(
            found.group(1) == self._nonce
            and found.group(2) == "N"
            and int(found.group(3)) in self._text_runs
            for found in _MARKER.finditer(payload)
        )

    def restore_tree(
        self,
        message: Message,
        keep: Callable[[Message, bool], bool],
        as_text: Callable[[Message], bool],
    ) -> None:
        """Put the runs back as text in every part, but in the leaves `keep` names: it is
        asked of each leaf holding a marker, and told whether the leaf is inside a container
        `as_text` names (whose text, leaves and all, is read through `flattened`)."""
        if not self._spans:
            return
        stack = [(message, False)]
        while stack:
            part, inside = stack.pop()
            for name in ("preamble", "epilogue"):
                value = getattr(part, name, None)
                if isinstance(value, str):
                    setattr(part, name, self.restore(value))
            payload = part._payload  # type: ignore[attr-defined]
            if isinstance(payload, list):
                inside = inside or as_text(part)
                stack.extend((child, inside) for child in payload)
            elif isinstance(payload, str) and self._prefix in payload:
                if not keep(part, inside):
                    part.set_payload(self.restore(payload))

    def restore(self, text: str) -> str:
        """`text` with each marker replaced by what it stands for, as the parser would
        have left it (the line ending before a boundary is the boundary's)."""
        if self._prefix not in text:
            return text
        # As the parser decodes every line: ASCII, any other byte a surrogate.
        return "".join(
            piece
            if isinstance(piece, str)
            else str(self._raw[piece[0] : piece[1]], "ascii", "surrogateescape")
            for piece in self._pieces(text, flat=False)
        )

    def as_is(self, text: str) -> bytes:
        """The bytes of the body `text` (markers in it), as `Message.get_payload(decode=True)`
        returns a body in 7bit, 8bit or binary: its lines as they came. Each run is copied
        once, into the result (a join would hold a copy of every piece besides)."""
        out = io.BytesIO()
        for piece in self._pieces(text, flat=False):
            if isinstance(piece, str):
                out.write(piece.encode("ascii", "surrogateescape"))
            else:
                out.write(self._raw[piece[0] : piece[1]])
        return out.getvalue()  # shares the buffer: no copy

    def flattened(self, text: str) -> bytes:
        """The bytes of `text`, a container flattened to text with markers in its leaves
        (`Message.as_string`, which writes every line ending as `\\n`), as they would have
        been had the leaves held their runs: encoded as UTF-8 with surrogateescape."""
        out = io.BytesIO()
        for piece in self._pieces(text, flat=True):
            if isinstance(piece, str):
                out.write(piece.encode("utf-8", "surrogateescape"))
                continue
            for start, end in _slices(self._bytes, *piece):
                out.write(self._raw[start:end].tobytes().replace(b"\r\n", b"\n"))
        return out.getvalue()  # shares the buffer: no copy

    def flattened_size(self, text: str) -> int:
        """len(self.flattened(text)), without making it."""
        size = 0
        for piece in self._pieces(text, flat=True):
            if isinstance(piece, str):
                size += len(piece if piece.isascii() else piece.encode("utf-8", "surrogateescape"))
            else:
                start, end = piece
                size += end - start - self._bytes.count(b"\r\n", start, end)
        return size

    def is_run(self, payload: str) -> bool:
        """Is the body one run (a marker and whitespace), which `decode` reads as base64?"""
        found = _MARKER.fullmatch(payload.strip())
        return bool(
            found
            and found.group(1) == self._nonce
            and found.group(2) == "N"
            and int(found.group(3)) not in self._text_runs
        )

    def hold(self, text: str, as_is: bool = False) -> str:
        """A marker standing for the body `text`, uuencoded or (`as_is`) in 7bit, 8bit or
        binary: `decode` gives its bytes."""
        self._held.append(text)
        return f"{self._prefix}{'R' if as_is else 'U'}{len(self._held) - 1}"

    def decode(self, payload: str) -> bytes | None:
        """The decoded bytes of a body kept as a marker; None for any other text.

        A run: the same bytes as `binascii.a2b_base64` of the restored body (what
        surrounds the marker is whitespace, which base64 decoding skips), raising
        ValueError as that call would. A body `hold` took: `uudecode` of it, or its
        bytes as they are (`as_is`).
        """
        found = _MARKER.fullmatch(payload.strip())
        if found is None or found.group(1) != self._nonce:
            return None
        index = int(found.group(3))
        if found.group(2) == "U":
            return self.uudecode(found.group(0))
        if found.group(2) == "R":
            return self.as_is(self._held[index])
        if index in self._text_runs:
            return None  # never a body alone: its leaf had it put back, or held
        start, end = self._spans[index]
        return binascii.a2b_base64(self._raw[start:end])

    def uudecode(self, text: str) -> bytes:
        """What `Message.get_payload(decode=True)` returns for a uuencoded body `text`
        (markers in it), from the raw bytes a line at a time: the decoded bytes, or the
        body's bytes as they are when it is no uuencode. The stdlib splits the whole body
        into lines, decodes each line to an object of its own and joins them: 146 MB at
        its peak for a 24 MB file."""
        found = _MARKER.fullmatch(text)
        if found and found.group(1) == self._nonce and found.group(2) == "U":
            text = self._held[int(found.group(3))]
        escape = has_surrogates(text)  # how the stdlib encodes the body before decoding it
        try:
            return self._uudecoded(text, escape)
        except ValueError:  # as email.message._decode_uu raises it
            return b"".join(
                _bytes_of(piece, escape)
                if isinstance(piece, str)
                else self._raw[piece[0] : piece[1]].tobytes()
                for piece in self._pieces(text, flat=False)
            )

    def _uudecoded(self, text: str, escape: bool) -> bytes:
        """email.message._decode_uu, over the lines of text and runs in turn."""
        out = io.BytesIO()
        begun = False
        for piece in self._pieces(text, flat=False):
            if isinstance(piece, str):
                chunks: Iterable[list[bytes]] = [_bytes_of(piece, escape).splitlines()]
            elif not begun:
                continue  # a run holds no begin line
            else:
                chunks = (
                    self._raw[start:end].tobytes().splitlines()
                    for start, end in _slices(self._bytes, *piece)
                )
            for lines in chunks:
                if not isinstance(piece, str) and b"end" not in lines:
                    # A run's lines are never blank, and only a line of exactly `end` (a
                    # base64 one; a uuencoded one has no lower case) is its end line.
                    try:
                        out.write(b"".join(map(binascii.a2b_uu, lines)))
                        continue
                    except binascii.Error:
                        pass  # the line by line decoding below works around bad lines
                for line in lines:
                    if not begun:
                        if line.startswith(b"begin "):
                            mode, _, _ = line.removeprefix(b"begin ").partition(b" ")
                            try:
                                int(mode, base=8)
                            except ValueError:
                                continue
                            begun = True
                        continue
                    if not line:
                        raise ValueError("Truncated input")
                    if line.strip(b" \t\r\n\f") == b"end":
                        return out.getvalue()
                    try:
                        out.write(binascii.a2b_uu(line))
                    except binascii.Error:  # the stdlib's workaround for broken uuencoders
                        out.write(binascii.a2b_uu(line[: (((line[0] - 32) & 63) * 4 + 5) // 3]))
        if not begun:
            raise ValueError("`begin` line not found")
        return out.getvalue()

    def _pieces(self, text: str, flat: bool) -> Iterator[str | tuple[int, int]]:
        """`text` cut at its markers: the text between them, and for each marker the span
        of the raw bytes it stands for, with its last line ending when the text still
        has the marker's (`flat`: as a flattened container writes it, `\\n`)."""
        position = 0
        for found in _MARKER.finditer(text):
            if found.group(1) != self._nonce:
                continue  # the sender's text, not a marker of ours
            if found.start() > position:
                yield text[position : found.start()]
            position = found.end()
            if found.group(2) in "UR":
                yield from self._pieces(self._held[int(found.group(3))], flat)
                continue
            start, end = self._spans[int(found.group(3))]
            raw_ending = "\r\n" if self._raw[end - 2 : end] == b"\r\n" else "\n"
            ending = "\n" if flat else raw_ending
            if text.startswith(ending, position):
                position += len(ending)
            else:  # the parser cut the run's last line ending off
                end -= len(raw_ending)
            yield start, end
        if position < len(text):
            yield text[position:]


def long_runs(raw: bytes | memoryview) -> Iterator[tuple[int, int]]:
    """Where the runs of whole base64-alphabet lines of at least `MIN_RUN` bytes are."""
    for found in _RUN.finditer(raw):
        if found.end() - found.start() >= MIN_RUN:
            yield found.span()


def _feed(parser: BytesFeedParser, data: memoryview) -> None:
    for start in range(0, len(data), _FEED):
        parser.feed(bytes(data[start : start + _FEED]))


def _slices(raw: bytes, start: int, end: int) -> Iterator[tuple[int, int]]:
    """raw[start:end] in slices of about `_SLICE` bytes, each cut after a line ending."""
    while start < end:
        cut = raw.find(b"\n", min(start + _SLICE, end) - 1, end) + 1 or end
        yield start, cut
        start = cut


def has_surrogates(text: str) -> bool:
    """Does `text` hold bytes the parser could not decode (email.utils._has_surrogates)?"""
    try:
        text.encode()
    except UnicodeEncodeError:
        return True
    return False


def _bytes_of(text: str, escape: bool) -> bytes:
    """`text` as Message.get_payload(decode=True) encodes a body before decoding it."""
    if escape:
        return text.encode("ascii", "surrogateescape")
    try:
        return text.encode("ascii")
    except UnicodeError:
        return text.encode("raw-unicode-escape")
