"""Composing outgoing mail: an `OutgoingMail` becomes the exact bytes we send.

This module decides the shape of every message: a text/plain part, wrapped in
multipart/alternative when there is HTML and in multipart/mixed when there are
attachments. The stdlib only encodes the text bodies (7bit, quoted-printable or
base64); every header block, the top one and each part's, is written by `headers`
and re-read by `verify_header_block`, which insists on exactly the header names we
meant to write. The output is 7-bit ASCII with CRLF line endings, so it needs
neither SMTPUTF8 nor 8BITMIME.

It also makes Outlook's Thread-Index (see `thread_index`).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email import policy
from email.utils import format_datetime

from maildesk.outbound import headers as h
from maildesk.outbound.headers import HeaderError


@dataclass(frozen=True)
class Address:
    email: str
    name: str = ""


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str  # e.g. "application/pdf"
    data: bytes


@dataclass(frozen=True)
class OutgoingMail:
    message_id: str  # without angle brackets, e.g. "md.abc123@example.test"
    sender: Address  # the From
    to: tuple[Address, ...]
    subject: str
    text: str  # text/plain body, always present
    date: datetime  # timezone-aware
    html: str | None = None  # optional text/html alternative
    reply_to: Address | None = None
    in_reply_to: str | None = None  # message id without brackets
    references: tuple[str, ...] = ()  # ids without brackets, oldest first
    auto_submitted: str | None = None  # e.g. "auto-replied"
    # Ask Exchange/Outlook not to answer with an out-of-office or auto-reply (they
    # ignore Auto-Submitted): for our automatic mail and everything sent to agents.
    suppress_auto_replies: bool = False
    # X-Loop: our address, on the same mail: help desks and procmail recipes that read
    # no Auto-Submitted know by it that the mail is automatic, and whose it is.
    loop_address: str = ""
    thread_topic: str = ""  # Outlook's Thread-Topic (subject without Re:/tags)
    thread_index: str = ""  # Outlook's Thread-Index (base64), see thread_index()
    attachments: tuple[Attachment, ...] = ()


_DATE = re.compile(r"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} [+-]\d{4}")
_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}")
_BASE64 = re.compile(r"[A-Za-z0-9+/]{4,500}={0,2}")
_MIME_NAME = r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
_MIME_TYPE = re.compile(rf"{_MIME_NAME}/{_MIME_NAME}")
_CTE = re.compile(r"7bit|quoted-printable|base64")
_MIME_VERSION = re.compile(r"1\.0")
_DISPOSITION = re.compile(r"attachment|inline")
_SUPPRESS = "OOF, AutoReply"
_HEADER_START = re.compile(rb"([!-9;-~]+):")
# Printable ASCII without "=?" and "%". Written as runs of the characters besides "="
# with each "=" between them, not as a choice per character: the same strings, matched
# four times faster (a 700-byte header block: 7 µs against 31).
_PLAIN = r"[\t -$&-<>-~]*(?:=(?!\?)[\t -$&-<>-~]*)*"
_PLAIN_VALUE = re.compile(_PLAIN)
# A whole header block of such values, each line starting a field or continuing one
# (with something besides blanks) and ending in CRLF: the shape of nearly every block
# we write, checked in one pass (`_plain_and_named`).
_PLAIN_BLOCK = re.compile(rf"(?:[!-9;-~]+:{_PLAIN}\r\n(?:[ \t](?=[ \t]*[^ \t\r\n]){_PLAIN}\r\n)*)+")
_FIELD_NAME = re.compile(r"^([!-9;-~]+):", re.MULTILINE)


@dataclass(frozen=True)
class _Part:
    """One MIME entity: its Content-* header lines (name, rendered) and its encoded body,
    in pieces that each end a line (never joined here: a 25 MB attachment's base64
    would be held twice while joining)."""

    fields: tuple[tuple[str, str], ...]
    body: tuple[bytes, ...]


@dataclass(frozen=True)
class Body:
    """A mail's content, composed: what several mails with the same text, HTML and
    attachments can share (each agent's copy of a notification differs only in its
    top header block)."""

    part: _Part
    source: tuple[str, str | None, tuple[Attachment, ...]]  # what it was composed from


def compose_body(mail: OutgoingMail) -> Body:
    """The content of `mail`, for `compose(…, body=)` of mails with the same content."""
    content = _text_part(mail.text, "plain")
    if mail.html is not None:
        content = _multipart("alternative", [content, _text_part(mail.html, "html")])
    if mail.attachments:
        content = _multipart("mixed", [content, *map(_attachment_part, mail.attachments)])
    return Body(content, (mail.text, mail.html, mail.attachments))


def compose(mail: OutgoingMail, body: Body | None = None) -> bytes:
    """The full RFC 5322 message for `mail`, CRLF line endings; HeaderError if unsafe.

    `body`: its content composed already (`compose_body` of a mail with the same text,
    HTML and attachments)."""
    return b"".join(compose_pieces(mail, body))


def compose_pieces(mail: OutgoingMail, body: Body | None = None) -> tuple[bytes, ...]:
    """`compose`'s message in pieces, its header block then its content, the content
    being `body`'s own pieces: mails that share a body are not each copied whole."""
    if mail.date.tzinfo is None or mail.date.utcoffset() is None:
        raise HeaderError("Date: the datetime must be timezone-aware")
    fields = [
        ("Date", _date_field(mail.date.replace(microsecond=0), mail.date.utcoffset())),
        ("From", _addresses("From", ((mail.sender.name, mail.sender.email),))),
        ("To", _addresses("To", tuple((a.name, a.email) for a in mail.to))),
    ]
    if mail.reply_to is not None:
        reply_to = [(mail.reply_to.name, mail.reply_to.email)]
        fields.append(("Reply-To", h.address_list("Reply-To", reply_to)))
    fields += [
        ("Subject", _unstructured("Subject", mail.subject)),
        ("Message-ID", h.msg_ids("Message-ID", [mail.message_id])),
    ]
    if mail.in_reply_to is not None:
        fields.append(("In-Reply-To", h.msg_ids("In-Reply-To", [mail.in_reply_to])))
    if mail.references:
        fields.append(("References", h.msg_ids("References", mail.references)))
    fields.append(("MIME-Version", h.structured("MIME-Version", "1.0", _MIME_VERSION)))
    if mail.auto_submitted is not None:
        value = h.structured("Auto-Submitted", mail.auto_submitted, _KEYWORD)
        fields.append(("Auto-Submitted", value))
    if mail.suppress_auto_replies:
        fields.append(("X-Auto-Response-Suppress", _SUPPRESS_FIELD))
    if mail.loop_address:
        fields.append(("X-Loop", _addresses("X-Loop", (("", mail.loop_address),))))
    if h.clean_text(mail.thread_topic):
        fields.append(("Thread-Topic", _unstructured("Thread-Topic", mail.thread_topic)))
    if mail.thread_index:
        fields.append(("Thread-Index", _thread_index_header(mail.thread_index)))
    if body is None:
        body = compose_body(mail)
    elif body.source != (mail.text, mail.html, mail.attachments):
        raise ValueError("compose: the body was composed from another mail's content")
    content = body.part
    return (_header_block((*fields, *content.fields)) + b"\r\n", *content.body)


# The same few senders and recipients come back in every mail (the support address in
# each From, the agents in the To of their copies), a ticket's mails share their
# Thread-Topic, a notification's copies their Subject, and a backlog's mails their
# second: each field is written once. Bounded by entries and by length: a stranger's
# long subject or display name (a header line may hold 32 KB) is written, not kept.
_CACHED_TEXT_CHARS = 1000
_address_list_cached = functools.lru_cache(maxsize=1024)(h.address_list)
_unstructured_cached = functools.lru_cache(maxsize=256)(h.unstructured)
_SUPPRESS_FIELD = h.structured("X-Auto-Response-Suppress", _SUPPRESS, re.compile(_SUPPRESS))


def _addresses(name: str, mailboxes: tuple[tuple[str, str], ...]) -> str:
    if sum(len(display) + len(address) for display, address in mailboxes) > _CACHED_TEXT_CHARS:
        return h.address_list(name, mailboxes)
    return _address_list_cached(name, mailboxes)


def _unstructured(name: str, text: str) -> str:
    if len(text) > _CACHED_TEXT_CHARS:
        return h.unstructured(name, text)
    return _unstructured_cached(name, text)


@functools.lru_cache(maxsize=16)
def _date_field(second: datetime, offset: timedelta | None) -> str:
    """The Date field of `second`. `offset` is in the key because aware datetimes of
    one instant in different zones are equal, and the field shows the zone."""
    return h.structured("Date", format_datetime(second), _DATE)


def _header_block(fields: Sequence[tuple[str, str]]) -> bytes:
    # Defense in depth: whatever the writers above did, re-read what we produced.
    block = "".join(rendered for _, rendered in fields).encode("ascii")
    verify_header_block(block, [name for name, _ in fields])
    return block


def verify_header_block(block: bytes, expected: Sequence[str]) -> None:
    """Raise HeaderError unless `block` holds exactly the headers `expected`, in order,
    and no value decodes to a line break (what a downstream re-fold would turn into a
    header).

    The lines are split by the grammar of the stdlib's feed parser (the same characters
    start a header name), only stricter: a line it would take as the body's start, a
    blank continuation or a bare CR/LF is refused here. So the header names are the
    ones the stdlib would see, without paying for its parse of every block we write.
    """
    want = [name.lower() for name in expected]
    if not _plain_and_named(block, want):
        _verify_each_line(block, want)


def _plain_and_named(block: bytes, want: list[str]) -> bool:
    """Whether `block` passes `_verify_each_line` for sure, found in one pass: lines of
    the right shape and length, the names `want`, and every value plain printable ASCII
    (so none decodes to a break). False says only "look closer"."""
    if not block.isascii():
        return False
    text = block.decode("ascii")
    return (
        _PLAIN_BLOCK.fullmatch(text) is not None
        and max(map(len, text.split("\r\n"))) <= h.MAX_LINE
        and [name.lower() for name in _FIELD_NAME.findall(text)] == want
    )


def _verify_each_line(block: bytes, want: list[str]) -> None:
    if not block.endswith(b"\r\n") or not block.isascii():
        raise HeaderError(f"header block is not CRLF-terminated ASCII (expected {want})")
    fields: list[tuple[str, list[str]]] = []
    for line in block[:-2].split(b"\r\n"):
        if b"\r" in line or b"\n" in line or len(line) > h.MAX_LINE:
            raise HeaderError(f"header block has a bare CR/LF or an overlong line: {line[:80]!r}")
        start = _HEADER_START.match(line)
        if start:
            name = start.group(1).decode("ascii")
            fields.append((name, [line[start.end() :].decode("ascii").lstrip(" \t")]))
        elif fields and line[:1] in (b" ", b"\t") and line.strip():
            fields[-1][1].append(line.decode("ascii"))
        else:
            raise HeaderError(f"header block has a stray line: {line[:80]!r}")
    names = [name.lower() for name, _ in fields]
    if names != want:
        raise HeaderError(f"header block has {names}, expected {want}")
    for name, lines in fields:
        # Printable ASCII without "=?" and "%" decodes to its own characters: only an
        # encoded word or an RFC 2231 %XX can turn into a break. Decoding every value
        # would cost more than composing the whole message.
        if not _PLAIN_VALUE.fullmatch("".join(lines)) and _decodes_to_break(
            name, "\r\n".join(lines)
        ):
            raise HeaderError(f"{name}: decodes to a line break or NUL")


@functools.lru_cache(maxsize=256)
def _decodes_to_break(name: str, raw: str) -> bool:
    """The stdlib's decoded view of one raw value (as its parser would hand it over);
    cached, since most part headers repeat."""
    return h.breaks_line(str(policy.default.header_fetch_parse(name, raw)))


def _text_part(text: str, subtype: str) -> _Part:
    cte, body = _encoded_text(text)
    ctype = h.structured("Content-Type", f"text/{subtype}", _MIME_TYPE, [("charset", "utf-8")])
    fields = (
        ("Content-Type", ctype),
        ("Content-Transfer-Encoding", h.structured("Content-Transfer-Encoding", cte, _CTE)),
    )
    return _Part(fields, (body,))


_SAMPLE_LINES = 10


def _encoded_text(text: str) -> tuple[str, bytes]:
    """`text` in UTF-8 and a 7-bit transfer encoding, CRLF lines: (the encoding, the body).

    As is when it is ASCII in short lines; else quoted-printable (readable for Latin
    scripts) unless base64 is shorter on the first lines. The stdlib's MIMEPart would
    choose alike, but builds and re-parses headers we throw away.
    """
    lines = text.encode("utf-8").splitlines()
    if all(len(line) <= h.FOLD_AT and line.isascii() for line in lines):
        return "7bit", b"\r\n".join(lines) + b"\r\n"
    # The first lines choose between quoted-printable and base64.
    head = b"\r\n".join(lines[:_SAMPLE_LINES]) + b"\r\n"
    encoded = _quoted_printable(head)
    if len(base64.encodebytes(head)) < len(encoded):
        # Text is encoded in its canonical form, CRLF lines (RFC 2045 6.8).
        data = b"\r\n".join(lines) + b"\r\n"
        return "base64", base64.encodebytes(data).replace(b"\n", b"\r\n")
    if len(lines) > _SAMPLE_LINES:
        # Quoted-printable encodes each line on its own, so the first lines' encoding
        # begins the whole text's: only the lines after them are encoded now.
        encoded += _quoted_printable(b"\r\n".join(lines[_SAMPLE_LINES:]) + b"\r\n")
    return "quoted-printable", encoded


def _quoted_printable(data: bytes) -> bytes:
    # `data` is CRLF lines, and so is the encoding (lines of at most 76 characters).
    return binascii.b2a_qp(data, istext=True)


def _attachment_part(attachment: Attachment) -> _Part:
    ctype = attachment.content_type.lower()
    # A multipart or message/* body must not be base64-encoded (RFC 2046): refuse it.
    if ctype.startswith(("multipart/", "message/")):
        raise HeaderError(f"Content-Type: cannot attach as {attachment.content_type!r}")
    filename = h.clean_text(attachment.filename) or "attachment"
    ctype_header = h.structured("Content-Type", ctype, _MIME_TYPE, [("name", filename)])
    disposition = h.structured(
        "Content-Disposition", "attachment", _DISPOSITION, [("filename", filename)]
    )
    fields = (
        ("Content-Type", ctype_header),
        ("Content-Transfer-Encoding", h.structured("Content-Transfer-Encoding", "base64", _CTE)),
        ("Content-Disposition", disposition),
    )
    return _Part(fields, _base64_lines(attachment.data))


# Whole 76-character lines per block, so the lines are those of one encodebytes call.
_BASE64_BLOCK = 57 * 1024


def _base64_lines(data: bytes) -> tuple[bytes, ...]:
    """`data` in base64 lines ending in CRLF, encoded a block at a time: encodebytes on
    the whole of a 18 MB attachment made one object per line (87 MB at its peak)."""
    view = memoryview(data)
    return tuple(
        base64.encodebytes(view[start : start + _BASE64_BLOCK]).replace(b"\n", b"\r\n")
        for start in range(0, len(data), _BASE64_BLOCK)
    )


def _multipart(subtype: str, parts: list[_Part]) -> _Part:
    # The pieces stay pieces: each concatenation copied a 25 MB attachment again.
    heads = [_header_block(part.fields) for part in parts]
    boundary = f"=_md_{secrets.token_hex(12)}"
    # "=_" cannot occur in quoted-printable or base64 text; check anyway, it is cheap.
    # (It holds no CR or LF, so it cannot straddle pieces that each end a line.)
    chunks = (*heads, *(piece for part in parts for piece in part.body))
    while any(boundary.encode() in chunk for chunk in chunks):
        boundary = f"=_md_{secrets.token_hex(12)}"
    delimiter = b"--" + boundary.encode()
    pieces: list[bytes] = []
    for head, part in zip(heads, parts, strict=True):
        pieces += (delimiter, b"\r\n", head, b"\r\n", *part.body, b"\r\n")
    pieces += (delimiter, b"--\r\n")
    ctype = h.structured(
        "Content-Type", f"multipart/{subtype}", _MIME_TYPE, [("boundary", boundary)]
    )
    return _Part((("Content-Type", ctype),), tuple(pieces))


def _thread_index_header(value: str) -> str:
    header = h.structured("Thread-Index", value, _BASE64)
    raw = base64.b64decode(value, validate=True)
    if len(raw) < 22 or (len(raw) - 22) % 5:
        raise HeaderError(f"Thread-Index: not 22 bytes plus 5-byte blocks: {value!r}")
    return header


# Thread-Index (MS-OXOMSG PidTagConversationIndex). A 22-byte header block:
#   6 bytes  the top 6 bytes of the FILETIME (100 ns ticks since 1601-01-01 UTC),
#            big-endian; for 1829..2057 the first of them is 0x01, the "reserved"
#            byte Microsoft's description names.
#   16 bytes a GUID; ours is sha256(ticket_key)[:16], so every mail of a ticket shares it.
# Each reply adds a 5-byte child block; we add at most one, for `message_time`:
#   1 bit    DeltaCode: 0 if the difference from the header time is < 2**49 ticks
#            (about 1.8 years), keeping its bits 48..18; 1 otherwise, keeping bits 53..23.
#   31 bits  that TimeDelta, big-endian together with the DeltaCode bit.
#   8 bits   "random"; ours is derived from the key and the delta, so output is reproducible.
_FILETIME_EPOCH = datetime(1601, 1, 1, tzinfo=UTC)


def _filetime(moment: datetime) -> int:
    # Naive datetimes are UTC: that is how maildesk stores them (SQLite drops the zone).
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    delta = moment - _FILETIME_EPOCH
    return (delta.days * 86_400 + delta.seconds) * 10_000_000 + delta.microseconds * 10


def thread_index(
    ticket_created: datetime, ticket_key: bytes, message_time: datetime | None = None
) -> str:
    """Outlook's Thread-Index for a mail of the ticket created at `ticket_created`.

    The first 22 bytes depend only on the ticket; with `message_time`, one child block
    records how long after the ticket's creation this mail was written.
    """
    created = _filetime(ticket_created)
    block = created.to_bytes(8, "big")[:6] + hashlib.sha256(ticket_key).digest()[:16]
    if message_time is not None:
        # The difference is taken from the header time as stored: its low 16 bits are gone.
        diff = max(_filetime(message_time) - (created >> 16 << 16), 0)
        if diff < 1 << 49:
            code_and_delta = diff >> 18
        else:
            code_and_delta = 1 << 31 | min(diff >> 23, (1 << 31) - 1)
        noise = hashlib.sha256(ticket_key + diff.to_bytes(8, "big")).digest()[0]
        block += code_and_delta.to_bytes(4, "big") + bytes([noise])
    return base64.b64encode(block).decode("ascii")
