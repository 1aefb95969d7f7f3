"""The body hash of a DKIM signature (RFC 6376 §3.4, §3.7), computed a slice at a time.

dkimpy splits the whole message into one bytes object per line, joins the body
again and canonicalizes it with whole-body substitutions: a 24 MB body cost
about 90 MB more while it ran. `mailauth.py` hands dkimpy the header block alone
and checks the body hash here, reading the body as dkimpy would: bare LF line
ends become CRLF, "relaxed" drops whitespace before a line end and folds the
rest to one space, and both forms end in exactly one CRLF (an empty body is
"" when relaxed, CRLF when simple). `l=` hashes that many canonical bytes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

# Slices of the body canonicalized at a time; each ends just after a LF, so no line
# end and no run of whitespace before one is ever cut in two.
SLICE = 1 << 20
_HEADER_END = re.compile(rb"\A\r?\n|\n\r?\n")
_LINE_END = re.compile(rb"\r?\n")
# Tried only where a run starts: from every blank of a long run that does not end
# its line, `[\t ]+\r\n` scanned the rest of it again (a line of 80 KB of spaces
# in a stranger's signed mail cost 7 s).
_SPACE_AT_LINE_END = re.compile(rb"(?<![\t ])[\t ]+\r\n")
_SPACES = re.compile(rb"[\t ]+")
_CRLF = b"\r\n"
_PAIRS = re.compile(rb"(?:\n\r)*")  # CRLFs, read backwards


def split(raw: bytes) -> tuple[bytes, int]:
    """The header block (up to and with the empty line) and where the body starts,
    as dkimpy reads a message: the body starts after the first empty line."""
    found = _HEADER_END.search(raw)
    if found is None:
        return raw, len(raw)
    return raw[: found.end()], found.end()


def body_hash(
    raw: bytes,
    start: int,
    relaxed: bool,
    hasher: Callable[[], Any],
    length: int | None = None,
    size: int = SLICE,
) -> bytes:
    """The digest of the canonical body `raw[start:]`, the first `length` bytes of it
    when the signature has an `l=` tag."""
    digest = hasher()
    left = length
    for piece in _canonical(_slices(raw, start, size), relaxed):
        if left is not None:
            if left <= 0:
                break
            piece = piece[:left]
            left -= len(piece)
        digest.update(piece)
    return bytes(digest.digest())


def longer_than(raw: bytes, start: int, relaxed: bool, length: int, size: int = SLICE) -> bool:
    """Whether the canonical body `raw[start:]` is longer than `length` bytes: what a
    signature's `l=` leaves unsigned, where anyone may have added text."""
    seen = 0
    for piece in _canonical(_slices(raw, start, size), relaxed):
        seen += len(piece)
        if seen > length:
            return True
    return False


def pieces_hash(
    pieces: Iterable[bytes | memoryview],
    relaxed: bool,
    hasher: Callable[[], Any],
    size: int = SLICE,
) -> bytes:
    """`body_hash` of the body that `pieces` make when joined, without joining them
    (a composed mail's shared base64 blocks: signing it must not copy a 25 MB body)."""
    digest = hasher()
    for piece in _canonical(_whole_lines(pieces, size), relaxed):
        digest.update(piece)
    return bytes(digest.digest())


def _canonical(slices: Iterable[bytes], relaxed: bool) -> Iterator[bytes]:
    """The canonical body in pieces, from slices that each end just after a LF (the
    last may end anywhere). Empty lines are held back until a line with something
    on it follows: the canonical form drops them at the end."""
    held = 0  # CRLFs at the end of what was read, not yet written
    wrote = False
    for piece in slices:
        piece = _LINE_END.sub(_CRLF, piece)
        if relaxed:
            piece = _SPACES.sub(b" ", _SPACE_AT_LINE_END.sub(_CRLF, piece))
        # Every LF now follows a CR; a CR of its own belongs to its line's text.
        tail = piece[len(piece.rstrip(b"\r\n")) :]
        ending = len(_PAIRS.match(tail[::-1]).group())  # type: ignore[union-attr]
        text = piece[: len(piece) - ending]
        if not text:
            held += ending // 2
            continue
        yield _CRLF * held + text
        held, wrote = ending // 2, True
    if wrote or not relaxed:
        yield _CRLF


def _whole_lines(pieces: Iterable[bytes | memoryview], size: int) -> Iterator[bytes]:
    """`pieces` cut again so that each slice ends just after a LF (the last one
    anywhere): a line, or a CR LF pair, split between two pieces is made whole."""
    partial = b""  # the unfinished line at the end of what was read
    for piece in pieces:
        # A memoryview slice of a stored mail is copied here, one piece at a time.
        data = partial + piece if partial else bytes(piece)
        cut = data.rfind(b"\n") + 1
        yield from _slices(data, 0, size, end=cut)
        partial = data[cut:]
    if partial:
        yield partial


def _slices(raw: bytes, start: int, size: int, end: int | None = None) -> Iterator[bytes]:
    """`raw[start:end]` in slices of about `size` bytes, each ending just after a LF."""
    stop = len(raw) if end is None else end
    position = start
    while position < stop:
        newline = raw.find(b"\n", position + size, stop)
        cut = stop if newline < 0 else newline + 1
        yield raw[position:cut]
        position = cut
