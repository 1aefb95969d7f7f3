"""The pre-parse guard: decides whether raw message bytes are safe to hand to a parser.

Python's email parser is quadratic on long encoded-word headers and recurses once per MIME
level, so size, line endings, header lengths and MIME shape are checked first, on the bytes.
Scans are bytes methods and compiled regexes; Python loops run per header block, boundary
line or `max_header_line` stride, never per byte or body line: linear in the message size.

Header blocks end where the parser ends them: at the first blank line, or at an earlier
line that is no header (the parser starts the body there). The MIME walk finds structure as
compat32's parser (`email.message_from_bytes`, used by mail-parser) does: boundary quirks,
digest defaults, DSN blocks, repeated boundary lines. Where it cannot be exact it
over-counts, so the parser never builds more levels or parts than were counted here.
`email.policy.default` re-parses Content-Type (comments, encoded words) and may find other
boundaries: not covered. Malformed structure is no refusal: real mail is messy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import unquote_to_bytes


@dataclass(frozen=True)
class Limits:
    max_message_size: int = 25 * 1024 * 1024
    max_header_bytes: int = 256 * 1024  # whole top-level header block
    max_header_line: int = 32 * 1024  # one unfolded header field (name + all continuation lines)
    max_mime_depth: int = 20  # nested multipart/* and message/* containers
    max_mime_parts: int = 500  # body parts, counted at their boundary lines


class HostileInput(Exception):
    """A limit is broken; `reason` says which: 'header block is 300000 bytes (limit 262144)'."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_WS = b" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f"  # what str.strip() removes from ASCII text
# email.feedparser.headerRE: the first line that fails it ends the headers (or is blank).
_HEADER_LINE = re.compile(rb"From |[ \t]|[\x21-\x39\x3b-\x7e]*:")
_FIELD_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]{1,64}(?=:)")
_CT_FIRST = re.compile(rb"content-type:", re.I)
_CT_NEXT = re.compile(rb"\ncontent-type:", re.I)
_CD_FIRST = re.compile(rb"content-disposition:", re.I)
_CD_NEXT = re.compile(rb"\ncontent-disposition:", re.I)
# Python's parameter parser (email.message._parseparam) is quadratic in the number of ";"
# in one value: a 30 KB Content-Type of semicolons costs ~0.4 s per part. Real mail has a few.
MAX_PARAMETERS = 100
# The header blocks of the parts (and of forwarded messages) have no cap in bytes of their
# own: the parser reads them a line at a time in Python, and mail-parser looks fields up by
# scanning them all, some 30 times a part (8 MB of `X-A: b` lines in one part cost 3 s and
# 250 MB). Real mail has a few lines a part, a forwarded message a few hundred.
MAX_PART_HEADER_LINES = 20_000
# mail-parser decodes each part's filename from these two fields a few times over, in
# Python: 490 filenames of 30 KB of encoded words cost 5.8 s, of RFC 2231 %-escapes 3.5 s.
# Real ones hold a type, a boundary and a name: a few hundred bytes a part.
MAX_MIME_FIELD_BYTES = 1 << 20
# mail-parser flattens each container (multipart/*, message/*) marked as an attachment to
# text, the containers inside it included: 19 forwarded mails, each attached to the one before,
# in 16 MB cost 8.9 s and 392 MB. A container's bytes, counted once for each attached
# container it is in, may come to this many times `max_message_size`: one mail forwarded in
# another, each as large as a mail may be.
MAX_FLATTENED = 2
_FIELD_END = re.compile(rb"\n(?![ \t])")
# One parameter up to its ';'. Like email.message._parseparam, a '"' after '\' is no quote.
_PARAM = re.compile(rb'((?:[^;"\\]+|\\"?|"(?:[^"\\]+|\\"?)*"?)*)(?:;|\Z)')
_BOUNDARY_PARAM = re.compile(rb"[\s\x1c-\x1f]*boundary", re.I)
_RFC2231 = re.compile(rb"boundary\*(?:([0-9]+)\*?)?")
_NOT_WS = re.compile(rb"[^ \t\n\r\x0b\x0c\x1c-\x1f]")
_DSN = b"message/delivery-status"
_PREFIX = 70  # RFC 2046's longest boundary


def _delimiter(boundary: bytes) -> bytes:
    """A regex for the boundary's lines; a long one (hostile) only by its prefix, to keep
    compiled patterns and their caches small: the line is compared in full afterwards."""
    if len(boundary) > _PREFIX:
        return re.escape(boundary[:_PREFIX])
    return re.escape(boundary) + rb"(?:--)?[ \t]*\r?$"


@lru_cache(maxsize=64)
def _scanner(delimiters: tuple[bytes, ...], blank: bool, headers: bool) -> re.Pattern[bytes]:
    """Lines that may end a part (boundary lines; in a DSN, blank lines) and, when reading
    headers, lines that may end the header block (headerRE fails)."""
    alts = [rb"--(?:" + b"|".join(delimiters) + rb")"] if delimiters else []
    alts += [rb"\r?\n"] * blank + [rb"(?!From |[ \t]|[\x21-\x39\x3b-\x7e]*:)"] * headers
    return re.compile(rb"\n(?:" + b"|".join(alts) + rb")", re.M)


@lru_cache(maxsize=64)
def _repeats(boundary: bytes) -> re.Pattern[bytes]:
    return re.compile(rb"(?:--" + re.escape(boundary) + rb"(?:--)?[ \t]*\r?(?:\n|\Z))*+")


def _line_rest(raw: bytes, pos: int) -> tuple[bytes, int]:
    """The line from pos without its trailing blanks and line break, and the next line's start."""
    eol = raw.find(b"\n", pos)
    eol = len(raw) if eol < 0 else eol
    return raw[pos:eol].rstrip(b"\r").rstrip(b" \t"), min(eol + 1, len(raw))


def _check_fields(raw: bytes, start: int, end: int, nl: bytes, cap: int) -> None:
    if end - start <= cap:
        return  # no field is longer than the block holding it
    text = raw[start:end].replace(nl + b" ", b" ").replace(nl + b"\t", b"\t")  # unfolded
    at = 0
    # Jump to the last line break within reach: O(len / cap) steps, the scanning done in C.
    while len(text) - at > cap:
        brk = text.rfind(nl, at, at + cap + len(nl))
        if brk < 0:
            stop = text.find(nl, at)
            size = (len(text) if stop < 0 else stop) - at
            name = _FIELD_NAME.match(text, at)
            what = f"header field {name[0].decode()}" if name else "header line"
            raise HostileInput(f"{what} is {size} bytes unfolded (limit {cap})")
        at = brk + len(nl)


def _content_type(
    raw: bytes,
    start: int,
    end: int,
    first: re.Pattern[bytes] = _CT_FIRST,
    following: re.Pattern[bytes] = _CT_NEXT,
) -> bytes | None:
    """The first Content-Type (or other) value in the header lines raw[start:end], unfolded."""
    m = first.match(raw, start, end) or following.search(raw, start, end)
    if m is None:
        return None
    stop = _FIELD_END.search(raw, m.end(), end)
    return raw[m.end() : stop.start() if stop else end].replace(b"\r", b"").replace(b"\n", b"")


def _unquote(value: bytes) -> bytes:  # email.utils.unquote
    if len(value) > 1 and value[:1] + value[-1:] == b'""':
        return value[1:-1].replace(b"\\\\", b"\\").replace(b'\\"', b'"')
    return value[1:-1] if len(value) > 1 and value[:1] + value[-1:] == b"<>" else value


def _boundary(value: bytes) -> bytes | None:
    """The boundary as compat32's Message.get_boundary() reads it from a Content-Type value."""
    sections: list[tuple[int, bytes, bool]] = []
    for param in filter(_BOUNDARY_PARAM.match, _PARAM.findall(value)[1:]):  # in C: may be many
        name, _, val = param.partition(b"=")
        name = name.strip(_WS).lower()
        if name == b"boundary":  # a plain parameter wins over RFC 2231 sections
            return _unquote(_unquote(val.strip(_WS))).rstrip(_WS)
        if m := _RFC2231.fullmatch(name):
            sections.append((int(m[1] or -1), _unquote(val.strip(_WS)), name.endswith(b"*")))
    if not sections:
        return None
    sections.sort()
    if not any(encoded for *_, encoded in sections):
        return _unquote(b"".join(v for _, v, _ in sections)).rstrip(_WS)
    joined = b"".join(unquote_to_bytes(v) if enc else v for _, v, enc in sections)
    parts = joined.split(b"'", 2)  # charset'language'value
    return (parts[2] if len(parts) == 3 else joined).rstrip(_WS)


class _Walk:
    def __init__(self, raw: bytes, nl: bytes, limits: Limits) -> None:
        self.raw, self.nl, self.limits = raw, nl, limits
        # Open containers, outermost first: (boundary, or None for message/*; content type).
        self.stack: list[tuple[bytes | None, bytes]] = []
        self.index: tuple[dict[bytes, int], int | None] | None = None  # see levels()
        self.parts = 0
        self.header_lines = 0  # of the header blocks below the top one
        self.mime_field_bytes = 0  # of every block's Content-Type and Content-Disposition
        # Where each open container starts when it is marked as an attachment (else None),
        # beside `stack`; and the bytes of the closed ones, each counted at every such level.
        self.attached: list[int | None] = []
        self.flattened = 0

    def run(self) -> None:
        pos = self.enter(0, in_digest=False)
        root = self.stack[0][0] if self.stack else None
        while event := self.next_event(pos):
            pos, level, close = event
            boundary, kind = self.stack[level]
            if close:  # this multipart, and whatever is still open inside it, ends
                self.pop(level, pos)
                if not self.stack and root is not None:
                    pos, root = self.epilogue(pos, root), None
                continue
            self.pop(level + 1, pos)
            if kind == _DSN:  # a blank line ends a block; another follows unless the DSN ends
                nxt = self.owner(pos) if pos < len(self.raw) else None
                if pos >= len(self.raw) or (nxt and nxt[1] < level):
                    continue
            self.count_part()
            if boundary is not None:
                pos = self.skip_repeats(pos, level, boundary)
            pos = self.enter(pos, in_digest=kind == b"multipart/digest")
        self.pop(0, len(self.raw))

    def levels(self) -> tuple[dict[bytes, int], int | None]:
        """Each open boundary's outermost level, and the outermost DSN's level."""
        if self.index is None:
            bounds = {b: i for i, (b, _) in reversed(list(enumerate(self.stack))) if b is not None}
            dsn = [i for i, (_, kind) in enumerate(self.stack) if kind == _DSN]
            self.index = bounds, dsn[0] if dsn else None
        return self.index

    def owner(self, start: int) -> tuple[int, int, bool] | None:
        """Whether the line at start ends a part: (next line's start, level, is close). The
        outermost matching level wins: the parser tests outer levels first."""
        bounds, dsn = self.levels()
        if self.raw.startswith(self.nl, start):
            return None if dsn is None else (start + len(self.nl), dsn, False)
        line, after = _line_rest(self.raw, start)
        if line[:2] != b"--":
            return None
        rest = line[2:]
        hits = [(bounds[rest], False)] if rest in bounds else []
        if rest[-2:] == b"--" and rest[:-2] in bounds:  # a close delimiter
            hits.append((bounds[rest[:-2]], True))
        return (after, *min(hits)) if hits else None

    def scan(self, at: int, headers: bool) -> int | None:
        """The start of the first line after `at` that ends a part or, with `headers`, that
        ends a header block: a blank line or one that is no header (headerRE fails)."""
        delimiters = tuple(_delimiter(b) for b, _ in self.stack if b is not None)
        blank = self.levels()[1] is not None
        if not (delimiters or blank or headers):
            return None
        scanner = _scanner(delimiters, blank, headers)
        while m := scanner.search(self.raw, at):
            line = m.start() + 1
            if self.owner(line) or (headers and not _HEADER_LINE.match(self.raw, line)):
                return line
            at = m.end()  # only a long boundary's prefix matched
        return None

    def next_event(self, pos: int) -> tuple[int, int, bool] | None:
        line = self.scan(max(pos - 1, 0), headers=False)  # the line at pos included
        return None if line is None else self.owner(line)

    def split(self, pos: int) -> tuple[int, int]:
        """(end of the header lines, start of the body) of the block at pos, as the parser
        splits it: at a blank line, at a line that is no header (it joins the body), or
        where the part ends."""
        raw, nl = self.raw, self.nl
        line = pos
        if pos < len(raw) and not self.owner(pos) and _HEADER_LINE.match(raw, pos):
            found = self.scan(pos, headers=True)
            line = len(raw) if found is None else found
        end = line - len(nl) if line > pos and raw.startswith(nl, line - len(nl)) else line
        blank = raw.startswith(nl, line) and not self.owner(line)  # a separator, not a DSN end
        return end, line + len(nl) if blank else line

    def skip_repeats(self, pos: int, level: int, boundary: bytes) -> int:
        """The parser swallows this level's boundary lines right after a delimiter, even a
        close one, but stops at a line of an outer level."""
        outer = {b for b, _ in self.stack[:level]}

        def outer_line(rest: bytes) -> bool:  # `--rest` is a line of an outer boundary
            return rest in outer or (rest.endswith(b"--") and rest[:-2] in outer)

        if len(boundary) <= _PREFIX and not outer_line(boundary) and boundary + b"--" not in outer:
            m = _repeats(boundary).match(self.raw, pos)
            return m.end() if m else pos
        while self.raw.startswith(b"--", pos):
            rest, after = _line_rest(self.raw, pos + 2)
            if rest not in (boundary, boundary + b"--") or outer_line(rest):
                break
            pos = after
        return pos

    def enter(self, pos: int, in_digest: bool) -> int:
        """Read the header block at pos, and those of the message/* bodies it opens; push the
        containers found and return where the scan for part ends goes on."""
        raw, nl = self.raw, self.nl
        default = b"message/rfc822" if in_digest else b"text/plain"
        while True:
            end, body = self.split(pos)
            _check_fields(raw, pos, end, nl, self.limits.max_header_line)
            if pos:  # the top block's cap is `max_header_bytes`
                self.count_header_lines(pos, end)
            value = _content_type(raw, pos, end)
            disposition = _content_type(raw, pos, end, _CD_FIRST, _CD_NEXT)
            self.check_mime_fields(value, disposition)
            kind = b"" if disposition is None else disposition.partition(b";")[0]
            start = pos if kind.strip(_WS).lower() == b"attachment" else None
            ctype = default if value is None else value.partition(b";")[0].strip(_WS).lower()
            ctype = ctype if ctype.count(b"/") == 1 else b"text/plain"
            if ctype.startswith(b"multipart/"):
                boundary = None if value is None else _boundary(value)
                if boundary is not None:  # without one the parser reads the body as text
                    self.push(boundary, ctype, start)
                return body
            if not ctype.startswith(b"message/"):
                return body
            # The body is a message, or for a DSN blocks of headers each parsed as a message.
            self.push(None, ctype, start)
            pos, default = body, b"text/plain"
            if ctype == _DSN:
                self.count_part()  # its first block

    def epilogue(self, pos: int, root: bytes) -> int:
        """mail-parser re-parses the root epilogue after a `--boundary` as a message (when a
        part lacks its start boundary): walk that too, as a fresh message."""
        found = self.raw.find(b"--" + root, pos)
        if found < 0:
            return pos
        text = _NOT_WS.search(self.raw, found + 2 + len(root))  # mail-parser strips it
        return self.enter(text.start() if text else len(self.raw), False)

    def count_part(self) -> None:
        self.parts += 1
        if self.parts > self.limits.max_mime_parts:
            limit = self.limits.max_mime_parts
            raise HostileInput(f"MIME part count reaches {self.parts} (limit {limit})")

    def check_mime_fields(self, value: bytes | None, disposition: bytes | None) -> None:
        for name, field in ((b"Content-Type", value), (b"Content-Disposition", disposition)):
            if field is None:
                continue
            if field.count(b";") > MAX_PARAMETERS:
                raise HostileInput(
                    f"{name.decode()} has {field.count(b';')} parameters (limit {MAX_PARAMETERS})"
                )
            self.mime_field_bytes += len(field)
        if self.mime_field_bytes > MAX_MIME_FIELD_BYTES:
            raise HostileInput(
                f"Content-Type and Content-Disposition fields reach {self.mime_field_bytes} "
                f"bytes (limit {MAX_MIME_FIELD_BYTES})"
            )

    def count_header_lines(self, start: int, end: int) -> None:
        self.header_lines += self.raw.count(self.nl, start, end) + (end > start)
        if self.header_lines > MAX_PART_HEADER_LINES:
            raise HostileInput(
                f"header lines of the parts reach {self.header_lines} "
                f"(limit {MAX_PART_HEADER_LINES})"
            )

    def pop(self, level: int, end: int) -> None:
        """Close the containers from `level` in, which end at `end`."""
        self.flattened += sum(end - start for start in self.attached[level:] if start is not None)
        limit = MAX_FLATTENED * self.limits.max_message_size
        if self.flattened > limit:
            raise HostileInput(
                f"containers marked as attachments hold {self.flattened} bytes, counted once "
                f"for each one they are in (limit {limit})"
            )
        del self.stack[level:], self.attached[level:]
        self.index = None

    def push(self, boundary: bytes | None, ctype: bytes, attached: int | None) -> None:
        self.stack.append((boundary, ctype))
        self.attached.append(attached)
        self.index = None
        if len(self.stack) > self.limits.max_mime_depth:
            limit = self.limits.max_mime_depth
            raise HostileInput(f"MIME nesting depth reaches {len(self.stack)} (limit {limit})")


def check(raw: bytes, limits: Limits) -> None:
    """Return if `raw` is within `limits`; raise HostileInput naming the first limit broken."""
    if len(raw) > limits.max_message_size:
        raise HostileInput(f"message is {len(raw)} bytes (limit {limits.max_message_size})")
    crlf = raw.count(b"\r\n")
    if raw.count(b"\r") != crlf:
        at = re.search(rb"\r(?!\n)", raw)
        raise HostileInput(f"bare CR (not followed by LF) at byte {at.start() if at else '?'}")
    bare_lf = raw.count(b"\n") - crlf
    if crlf and bare_lf:  # the SMTP-smuggling shape: one ending must be used throughout
        raise HostileInput(f"mixed line endings: {crlf} CRLF and {bare_lf} bare LF")
    nl = b"\r\n" if crlf else b"\n"
    walk = _Walk(raw, nl, limits)
    end, _ = walk.split(0)
    if end > limits.max_header_bytes:
        raise HostileInput(f"header block is {end} bytes (limit {limits.max_header_bytes})")
    walk.run()
