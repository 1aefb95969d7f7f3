"""The one parsed, immutable view of an inbound message.

This is the only module that imports mail-parser. mail-parser gives us decoded
bodies in their declared charsets (with fallbacks for mislabelled ones),
attachments and decoded headers; the stdlib's email package still supplies the
raw header values where we must check them strictly ourselves (addresses:
Python 3.11.7's parseaddr misreads `a@x)<b@y>`, CVE-2023-27043).
"""

from __future__ import annotations

import binascii
import codecs
import copy
import email.errors
import email.feedparser
import email.header
import email.parser
import email.policy
import email.utils
import hashlib
import io
import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import Message as EmailMessage
from typing import Any, cast

import mailparser
from flufl.bounce import all_failures
from mailparser.utils import decode_header_part, mime_header_view

from maildesk.base64runs import UUENCODE, Runs, has_surrogates
from maildesk.html_text import html_to_text
from maildesk.models import NAME_LENGTH
from maildesk.outbound.headers import writable

log = logging.getLogger("maildesk.message")
# mail-parser logs every part at DEBUG with f-strings; keep it quiet and cheap.
logging.getLogger("mailparser").setLevel(logging.WARNING)
logging.getLogger("flufl.bounce").setLevel(logging.WARNING)

# No NUL in an id: PostgreSQL's text holds none, and refused the mail that stored or
# looked up one (at every attempt). An id holding one is no id.
_MSGID = re.compile(r"<([^<>\s\0]+)>")
_ADDR_SPEC = re.compile(r"^[^@\s<>(),;:\"\[\]\\]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$")
# C0 and C1 controls plus U+2028/U+2029: every character str.splitlines() breaks on
# (\x85 and the two separators included), so no clean value can become two header lines.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
# Bidi embeddings, overrides and isolates: `invoice<U+202E>fdp.exe` shows as the PDF
# `invoiceexe.pdf` to an agent, and a name or subject may be turned around the same way.
# Text in Hebrew or Arabic runs right to left without them.
_BIDI_CONTROL = re.compile("[\u202a-\u202e\u2066-\u2069]+")
# RFC 3834's auto-submitted value: [CFWS] keyword [CFWS] *(";" parameter); comments not nested.
_KEYWORD = re.compile(r"\s*(?:\([^()]*\)\s*)*([^\s();]*)")
_MAX_REFERENCES = 100
# RFC 5322 names one parent; a few allow for clients that list more. The 256 KB header
# block would otherwise hold some 30,000 ids, and every one is a threading lookup's
# bound parameter (and, per count, a compiled statement: tickets/service.py).
_MAX_IN_REPLY_TO = 10
# What auto-responders write instead of RFC 3834's Auto-Submitted (and what help
# desks and procmail recipes put on their own mail, X-Loop).
_AUTO_FIELDS = ("X-Autoreply", "X-Autorespond", "X-Loop")
_LIST_FIELDS = (
    "List-Unsubscribe",
    "List-Post",
    "List-Help",
    "List-Subscribe",
    "List-Owner",
    "List-Archive",
)


class UnparseableMessage(Exception):
    """The bytes are not a message maildesk can thread; the reason says why."""


@dataclass(frozen=True)
class ParsedAttachment:
    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True)
class ParsedMessage:
    message_id: str  # without angle brackets; synthesized when the sender gave none
    from_addr: str  # lower-cased addr-spec
    from_name: str
    to: tuple[str, ...]
    cc: tuple[str, ...]
    subject: str  # decoded, control characters folded to spaces
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    text: str
    html: str
    attachments: tuple[ParsedAttachment, ...] = ()
    date: datetime | None = None
    language: str | None = None  # from Content-Language, when it says cs or en
    auto_submitted: str = ""
    precedence: str = ""
    list_id: str = ""
    # The RFC 2369 List-* fields present (List-Unsubscribe, List-Post, ...): mailing lists
    # and bulk senders' newsletters.
    list_fields: tuple[str, ...] = ()
    auto_fields: tuple[str, ...] = ()  # X-Autoreply, X-Autorespond, X-Loop present
    is_delivery_report: bool = False
    bounced_recipients: frozenset[str] = frozenset()  # permanent failures
    delayed_recipients: frozenset[str] = frozenset()  # "still trying" warnings
    # Authentication-Results headers, topmost (added last, by our own MTA) first.
    authentication_results: tuple[str, ...] = ()
    # Message-IDs quoted inside the body (a bounce names the mail it bounces).
    quoted_message_ids: tuple[str, ...] = field(default=())
    # The Message-ID the mail gave, when it is kept under one of its own because
    # another mail had it first (pipeline/process.py, `_own_id`); None otherwise.
    claimed_id: str | None = None

    @property
    def thread_ids(self) -> tuple[str, ...]:
        """Every Message-ID this message says it answers, nearest first."""
        seen: dict[str, None] = {}
        for mid in (*self.in_reply_to, *reversed(self.references)):
            seen.setdefault(mid, None)
        return tuple(seen)


@dataclass(frozen=True)
class ThreadHeaders:
    """What threading reads, taken from the header block alone (cheap: no MIME parse)."""

    message_id: str  # "" when the sender gave none (nobody can answer it by id then)
    answers: tuple[str, ...]  # the Message-IDs it says it answers, nearest first
    date: datetime | None


HEADER_END = re.compile(rb"\r?\n\r?\n")  # where `thread_headers` ends a header block


def thread_headers(raw: bytes) -> ThreadHeaders:
    """The ids and date of `raw`, read as `parse` reads them (import orders an archive)."""
    end = HEADER_END.search(raw)
    head = raw[: end.start()] if end else raw
    msg = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(head)
    fields = Fields(msg)
    seen: dict[str, None] = {}
    in_reply_to = _ids(fields.get_all("In-Reply-To", []))[:_MAX_IN_REPLY_TO]
    references = _ids(fields.get_all("References", []))[-_MAX_REFERENCES:]
    for mid in (*in_reply_to, *reversed(references)):
        seen.setdefault(mid, None)
    return ThreadHeaders(_message_id(fields), tuple(seen), _date(fields))


def parse(raw: bytes, null_sender: bool = False) -> ParsedMessage:
    """Parse `raw`; `null_sender` says the envelope sender was `<>` (a bounce's mark)."""
    try:
        msg, runs, bodies = _message(raw)
        mail = _BodiesOnly(_mime_view(msg))
    except Exception as exc:  # RecursionError (deep MIME nesting) and friends
        raise UnparseableMessage(f"mail-parser failed: {type(exc).__name__}: {exc}") from exc
    fields = Fields(msg)
    from_name, from_addr = _sender(fields)
    subject = clean_text(_decoded(fields, "Subject"))
    text, whole_text = bodies.read("\n".join(mail.text_plain))
    html, whole_html = bodies.read("\n".join(mail.text_html))
    # PostgreSQL's text holds no NUL (SQLite's does): a body with one failed at every
    # attempt and ended in quarantine. Real mail has them: UTF-16 labelled as ASCII.
    text, html = text.replace("\0", ""), html.replace("\0", "")
    if not text and html:
        text = html_to_text(html)
    # Bounce detection runs a dozen heuristic detectors over the whole message: a third
    # of the processing time. Only mail a mail system could have sent gets it.
    content_type = msg.get_content_type()
    if null_sender or _may_be_bounce(content_type, fields, from_addr):
        temporary, permanent = _bounces(_bounce_view(raw, msg, runs))
    else:
        temporary = permanent = frozenset()
    # A text too long to keep as text is kept whole as a file, before the mail's own.
    wholes = (("message.txt", "text/plain", whole_text), ("message.html", "text/html", whole_html))
    kept = tuple(ParsedAttachment(name, kind, data) for name, kind, data in wholes if data)
    attachments = (*kept, *_attachments(mail.attachments, runs, len(raw)))
    return ParsedMessage(
        message_id=_message_id(fields)
        or _synthetic_id(fields, from_addr, subject, text, attachments),
        from_addr=from_addr,
        from_name=from_name,
        to=_addresses(fields, "To"),
        cc=_addresses(fields, "Cc"),
        subject=subject,
        in_reply_to=_ids(fields.get_all("In-Reply-To", []))[:_MAX_IN_REPLY_TO],
        references=_ids(fields.get_all("References", []))[-_MAX_REFERENCES:],
        text=text,
        html=html,
        attachments=attachments,
        date=_date(fields),
        language=_language(fields),
        auto_submitted=_keyword(fields, "Auto-Submitted"),
        precedence=_plain(fields, "Precedence").lower(),
        list_id=_plain(fields, "List-Id"),
        list_fields=tuple(name for name in _LIST_FIELDS if name in fields),
        auto_fields=tuple(name for name in _AUTO_FIELDS if name in fields),
        is_delivery_report=content_type == "multipart/report",
        bounced_recipients=permanent,
        delayed_recipients=temporary,
        quoted_message_ids=_quoted_ids(raw),
        authentication_results=tuple(
            clean_text(str(v)) for v in fields.get_all("Authentication-Results", [])
        ),
    )


class _BodiesOnly(mailparser.MailParser):
    """mail-parser for what maildesk reads of it: the text and HTML bodies and the
    attachments. Its parse ends by building two dicts of every header and part (its
    `mail` and `mail_partial`), which maildesk never reads."""

    def _make_mail(self, complete: bool = True) -> dict[str, Any]:
        return {}


class Fields:
    """The top header block of a parsed message, read as `Message.get`, `get_all` and
    `in` read it, from an index by lower-case name made once. The stdlib walks every
    field, lower-casing its name, at each lookup, and a parse makes about 25 of them."""

    def __init__(self, msg: EmailMessage) -> None:
        self._fetch = msg.policy.header_fetch_parse
        self._index: dict[str, list[tuple[str, Any]]] = {}
        for name, value in msg.raw_items():
            self._index.setdefault(name.lower(), []).append((name, value))

    def get(self, name: str, failobj: Any = None) -> Any:
        found = self._index.get(name.lower())
        return self._fetch(*found[0]) if found else failobj

    def get_all(self, name: str, failobj: Any = None) -> Any:
        found = self._index.get(name.lower())
        return [self._fetch(*field) for field in found] if found else failobj

    def __contains__(self, name: str) -> bool:
        return name.lower() in self._index


def _message(raw: bytes) -> tuple[EmailMessage, Runs, _TextBodies]:
    """The stdlib's compat32 parse of `raw` (what `email.message_from_bytes` returns),
    but for the long base64 bodies of attachments and uuencoded bodies, and long text
    bodies in 7bit or 8bit: those stay markers in the parsed tree, decoded from `raw`
    when read (see `base64runs.py`; the text bodies by `_TextBodies.read`)."""
    parser = email.feedparser.BytesFeedParser()
    runs = Runs(raw)
    runs.feed(parser)
    msg = parser.close()
    if runs.text_runs and any(_misread(part, runs) for part in msg.walk()):
        parser = email.feedparser.BytesFeedParser()
        runs = Runs(raw, text=False)
        runs.feed(parser)
        msg = parser.close()
    bodies = _TextBodies(runs)
    runs.restore_tree(
        msg, keep=lambda part, inside: _keeps_runs(part, inside, runs, bodies), as_text=_flattened
    )
    for part in msg.walk():
        _no_slow_charset(part)
    return msg, runs, bodies


# Text codecs Python writes in Python, not C: decoding punycode is quadratic (a 5 MB
# body labelled `charset=punycode` took 156 s of CPU, and ended its worker), idna's
# costs 150 times UTF-8's. No mail client writes a body in either.
_SLOW_CODECS = frozenset({"punycode", "idna"})
# What a Content-Type naming one of them holds (RFC 2231's `charset*=` may spell it in
# %-escapes): most mail has none, and is spared parsing its parameters (a tenth of a
# parse).
_MAYBE_SLOW = re.compile(r"puny|idna|\*", re.IGNORECASE)


def _no_slow_charset(part: EmailMessage) -> None:
    """A part labelled with a slow codec is read as UTF-8 (with replacements), as a
    charset we do not know would be: the label is the sender's word, the cost ours."""
    value = part.get("content-type")
    if value is None or not _MAYBE_SLOW.search(str(value)):
        return
    charset = part.get_content_charset()
    if charset is None:
        return
    try:
        name = codecs.lookup(charset).name
    except (LookupError, ValueError):
        return
    if name in _SLOW_CODECS:
        log.info("a part labelled charset=%s is read as UTF-8", name)
        part.set_param("charset", "utf-8")


def _misread(part: EmailMessage, runs: Runs) -> bool:
    """Could a run of any text have changed how the parser read `part`? Where its marker
    ended a header block, the lines it stands for were fields (a continuation, a `From `
    line, `10:00: …`); a delivery report's blank lines part its blocks of fields."""
    if part.get_content_type() == "message/delivery-status":
        return True
    if not any(isinstance(d, email.errors.MissingHeaderBodySeparatorDefect) for d in part.defects):
        return False
    # The line that ended the fields is the first of the body (of a multipart, its preamble).
    body = part._payload if isinstance(part._payload, str) else part.preamble  # type: ignore[attr-defined]
    return isinstance(body, str) and runs.starts_text_run(body)


# Transfer encodings whose body `get_payload(decode=True)` returns as it came.
_AS_IS = frozenset({"", "7bit", "8bit", "binary"})


def _keeps_runs(part: EmailMessage, inside: bool, runs: Runs, bodies: _TextBodies) -> bool:
    """May the markers in this leaf's body stay, each read from the raw bytes when read?

    A long base64 body, when mail-parser takes it as base64 text and never reads it
    any other way: not a text body (only text/plain and text/html become body text),
    the transfer encoding base64 in mail-parser's own view of the headers and in the
    part's (stdlib's `get_payload` reads that one), and its whole body one run. A
    uuencoded body, whatever reads it (`_Uuencoded`). A leaf with runs of any text, when
    mail-parser reads it as a file (`_file_as_it_came`) or as body text (`_TextBodies`)
    alone and as it came. `inside` a container that
    mail-parser flattens to text as an attachment of its own, only a leaf that the
    stdlib writes line by line: `_attachments` puts each run back into that text.
    """
    body: str = part._payload  # type: ignore[attr-defined]
    if runs.holds_text(body):
        return not inside and (_file_as_it_came(part, runs, body) or bodies.hold(part, body))
    if inside and (
        part.get_content_maintype() in ("multipart", "message")
        or has_surrogates(body)  # as_string would encode it again, markers and all
    ):
        return False
    if str(part.get("content-transfer-encoding", "")).lower() in UUENCODE:
        part.__class__ = _Uuencoded
        cast(_Uuencoded, part).runs = runs
        if not inside:  # nobody writes it out again: mail-parser reads it as base64, a marker
            part.replace_header("Content-Transfer-Encoding", "base64")
            part.set_payload(runs.hold(body))
        return True
    if part.get_content_subtype() in ("plain", "html"):
        return False
    view, _defects = mime_header_view(part)
    return runs.is_run(body) and all(
        str(headers.get("content-transfer-encoding", "")).strip().lower() == "base64"
        for headers in (part, view)
    )


def _file_as_it_came(part: EmailMessage, runs: Runs, body: str) -> bool:
    """A leaf with runs of any text that mail-parser reads as a file alone (no body text),
    in a transfer encoding that leaves its bytes as they came: it hands the file on as
    base64 it makes of them. Here its body becomes one marker and its transfer encoding
    base64, so mail-parser hands the marker on and `_attachments` reads the bytes from
    the raw buffer (`Runs.as_is`): a 23 MB log file cost 119 MB to parse, as lines, the
    text they make, its bytes, their base64 and that as text."""
    view, _defects = mime_header_view(part)
    encodings = (
        part.get("content-transfer-encoding", ""),
        view.get("content-transfer-encoding", ""),
    )
    if any(str(value).strip().lower() not in _AS_IS for value in encodings):
        return False
    # mail-parser's own test: a file, named or disposed as one, and not inline text.
    disposition = str(view.get_content_disposition() or "").lower()
    named = disposition == "attachment" or decode_header_part(view.get_filename(), defects=[])
    if disposition == "inline" or not named:
        return False
    del part["Content-Transfer-Encoding"]
    part["Content-Transfer-Encoding"] = "base64"
    part.set_payload(runs.hold(body, as_is=True))
    return True


class _TextBodies:
    """Long text bodies in 7bit or 8bit (a log pasted into a mail), each decoded once
    from the raw bytes. Otherwise the body is a str with a surrogate per 8-bit byte
    (two bytes a character), which mail-parser encodes back to bytes and decodes
    again, beside the stdlib's checks of it, each a whole copy: a 23 MB body cost
    173 MB to parse. mail-parser reads a held body's marker as its text (ASCII, in 7bit
    or 8bit: as it is), and `read` puts the text mail-parser would have made of the
    body in its place."""

    def __init__(self, runs: Runs) -> None:
        self._runs = runs
        self._held: dict[str, EmailMessage] = {}  # marker: its part, whose charset reads it

    def hold(self, part: EmailMessage, body: str) -> bool:
        """Hold `body`, when mail-parser reads `part` as body text alone and as it came."""
        if part.get_content_subtype() not in ("plain", "html"):
            return False  # mail-parser keeps the text of any other part apart: not ours
        encoding = str(part.get("content-transfer-encoding", "")).strip().lower()
        if encoding not in ("", "7bit", "8bit"):
            return False
        # mail-parser's test for a file: named, or disposed as an attachment.
        view, _defects = mime_header_view(part)
        disposition = str(view.get_content_disposition() or "").lower()
        if disposition == "attachment" or decode_header_part(view.get_filename(), defects=[]):
            return False
        marker = self._runs.hold(body, as_is=True)
        part.set_payload(marker)
        self._held[marker] = part
        return True

    def read(self, joined: str) -> tuple[str, bytes | None]:
        """The text of `joined`, mail-parser's bodies of one kind joined, held ones put
        back; past `MAX_TEXT_CHARS` its head, and then the whole text in UTF-8 besides.
        A held body alone (most such mail) is decoded a slice at a time, never whole."""
        if joined in self._held:
            return self._decoded(joined)
        text = joined
        if self._held:
            text = _HELD.sub(
                lambda found: self._whole(found[0]) if found[0] in self._held else found[0],
                joined,
            )
        if len(text) <= MAX_TEXT_CHARS:
            return text, None
        return text[:MAX_TEXT_CHARS], text.encode("utf-8", "replace")

    def _whole(self, marker: str) -> str:
        head, whole = self._decoded(marker)
        return head if whole is None else whole.decode("utf-8")

    def _decoded(self, marker: str) -> tuple[str, bytes | None]:
        """What mail-parser makes of a held body (`MailParser._decode_body_payload`): read
        in its charset, else as UTF-8, else as UTF-8 with replacements; a body without
        8-bit bytes as the stdlib left it. Its head and whole, as `read` returns them."""
        data = self._runs.decode(marker)
        assert data is not None
        charset = "ascii"
        if not data.isascii():
            view, _defects = mime_header_view(self._held[marker])
            charset = view.get_content_charset("utf-8")
        for encoding, errors in ((charset, "strict"), ("utf-8", "strict")):
            try:
                return _decoded_in_slices(data, encoding, errors)
            except (LookupError, UnicodeError):
                continue
        return _decoded_in_slices(data, "utf-8", "replace")


# Characters of a body's text kept as its text (the text and the HTML each). Past them,
# the whole text is kept as a file of the message besides (`message.txt`, `message.html`):
# nobody reads that much as a mail's text (the portal shows 100,000 characters, the
# search reads 200,000), and storing it as text cost its worker a copy in UTF-8 three
# bytes a character long, next to the text's own two.
MAX_TEXT_CHARS = 1_000_000
_DECODE_SLICE = 1 << 20  # bytes decoded at a time


def _decoded_in_slices(data: bytes, encoding: str, errors: str) -> tuple[str, bytes | None]:
    """`data.decode(encoding, errors)`, failing where it fails, and any lone surrogate
    that makes failing too; cut as `_TextBodies.read` cuts it."""
    if not getattr(codecs.lookup(encoding), "_is_text_encoding", True):
        # What bytes.decode refuses, and an incremental decoder would run: a body labelled
        # `charset=zlib_codec` would be inflated (a bomb), `hex` would give bytes.
        raise LookupError(f"{encoding!r} is not a text encoding")
    if len(data) <= MAX_TEXT_CHARS:  # a character takes a byte at least
        text = data.decode(encoding, errors)
        if codecs.lookup(encoding).name != "utf-8":  # UTF-8 decodes to no lone surrogate
            text.encode("utf-8")
        return text, None
    # Read strictly as UTF-8 (or ASCII), the bytes are the whole text's UTF-8 already.
    as_they_are = errors == "strict" and codecs.lookup(encoding).name in ("utf-8", "ascii")
    decoder = codecs.getincrementaldecoder(encoding)(errors)
    head: list[str] = []
    kept = 0
    whole = io.BytesIO()
    for start in range(0, len(data), _DECODE_SLICE):
        piece = decoder.decode(
            data[start : start + _DECODE_SLICE], start + _DECODE_SLICE >= len(data)
        )
        if not as_they_are:
            whole.write(piece.encode("utf-8"))
        if kept <= MAX_TEXT_CHARS:
            head.append(piece)
            kept += len(piece)
    text = "".join(head)
    if kept <= MAX_TEXT_CHARS:  # a charset of more than a byte a character
        return text, None
    return text[:MAX_TEXT_CHARS], data if as_they_are else whole.getvalue()


# A held body's marker (`Runs.hold`), as mail-parser hands it on inside joined bodies.
_HELD = re.compile(r"MaildeskRun[0-9a-f]{32}R\d+")


def _flattened(container: EmailMessage) -> bool:
    """Does mail-parser flatten this container to text, as an attachment of its own?"""
    view, _defects = mime_header_view(container)
    return str(view.get_content_disposition() or "").lower() == "attachment"


class _Uuencoded(EmailMessage):
    """A uuencoded leaf whose body holds long runs: decoded from the raw bytes a line at
    a time, to the same bytes as the stdlib's decoding (which held 146 MB at once for a
    24 MB file: a bytes object per line, encoded and decoded, and their join). Outside a
    flattened container its body is one marker, which mail-parser hands on as base64
    text (its Content-Transfer-Encoding says so) and `_attachments` decodes with
    `Runs.decode`, or which mail-parser decodes as a text body through `get_payload`."""

    runs: Runs

    def get_payload(self, i: int | None = None, decode: bool = False) -> Any:
        if decode and i is None:
            return self.runs.uudecode(self._payload)  # type: ignore[attr-defined]
        return super().get_payload(i, decode)  # type: ignore[call-overload]


def _mime_view(msg: EmailMessage) -> EmailMessage:
    """`msg` with only the top header block's MIME headers, for mail-parser.

    mail-parser reads bodies and attachments through Content-* headers alone, but
    it also parses every address, date and Received header of the top block, and
    copies all headers into two dicts: work maildesk never uses (it reads headers
    from `msg`). The parts below the top block are shared, not copied.
    """
    view = copy.copy(msg)
    # The stdlib keeps a message's headers in this list, in order; deleting the
    # others one name at a time would cost (distinct names x headers).
    view._headers = [  # type: ignore[attr-defined]
        (name, value)
        for name, value in msg.raw_items()
        if name.lower().startswith("content-") or name.lower() == "mime-version"
    ]
    return view


def clean_text(value: str) -> str:
    """Fold control characters and Unicode line separators to single spaces, and drop
    the bidi controls that reorder what a one-line value shows."""
    return _BIDI_CONTROL.sub("", _CONTROL.sub(" ", value)).strip()


def fold_controls(value: str) -> str:
    """`clean_text` without the strip: a line's indentation stays."""
    return _CONTROL.sub(" ", value)


def _plain(fields: Fields, name: str) -> str:
    value = fields.get(name)
    return clean_text(str(value)) if value is not None else ""


def _keyword(fields: Fields, name: str) -> str:
    """The lower-cased keyword of a field like Auto-Submitted, without comments or parameters.

    A value we cannot read that way is returned whole, so it never passes for "no".
    """
    value = _plain(fields, name)
    found = _KEYWORD.match(value)
    keyword = found.group(1) if found else ""
    return (keyword or value).lower()


def _decoded(fields: Fields, name: str) -> str:
    value = fields.get(name)
    return "" if value is None else _decoded_value(value)


def _sender(fields: Fields) -> tuple[str, str]:
    # Split the header as written and decode only the display name after:
    # an encoded "," or "@" in a name must not create a second address.
    value = fields.get("From")
    raw_value = clean_text(str(value)) if value is not None else ""
    if not raw_value:
        raise UnparseableMessage("no From header")
    try:
        pairs = email.utils.getaddresses([raw_value])
    except RecursionError:  # the stdlib recurses per nested "(": thousands of them
        raise UnparseableMessage("From header nested too deep") from None
    if len(pairs) != 1:
        # `a@x)<b@y>` (CVE-2023-27043) splits into pieces of which some are no address.
        if any(not addr for _name, addr in pairs):
            raise UnparseableMessage("ambiguous From header")
        raise UnparseableMessage(f"From names {len(pairs)} addresses")
    name, addr = pairs[0]
    bracketed = re.findall(r"<([^<>]*)>", raw_value)
    # The CVE-2023-27043 shape: when angle brackets are present, the address
    # must be the bracketed one, or the header is ambiguous and not trusted.
    if bracketed and bracketed[-1].strip().lower() != addr.strip().lower():
        raise UnparseableMessage("ambiguous From header")
    addr = addr.strip().lower()
    if not _ADDR_SPEC.match(addr):
        raise UnparseableMessage("From is not a valid address")
    written = writable(addr)
    if written is None:  # e.g. a non-ASCII local part: no answer could ever reach it
        raise UnparseableMessage(f"From {addr!r} is no address maildesk can write to")
    # Cut to what a name holds where it is stored: PostgreSQL refused the whole mail.
    return clean_text(_decoded_value(name))[:NAME_LENGTH].rstrip(), written


def _addresses(fields: Fields, name: str) -> tuple[str, ...]:
    values = [clean_text(str(v)) for v in fields.get_all(name, [])]
    found: dict[str, None] = {}
    try:
        pairs = email.utils.getaddresses(values)
    except RecursionError:  # the stdlib recurses per nested "(": thousands of them
        log.warning("%s header nested too deep to read: left out", name)
        return ()
    for _display, addr in pairs:
        addr = addr.strip().lower()
        # Only what we can write to: a Cc becomes a participant who gets every answer.
        if _ADDR_SPEC.match(addr) and (written := writable(addr)) is not None:
            found.setdefault(written, None)
    return tuple(found)


def _decoded_value(value: object) -> str:
    try:
        return str(email.header.make_header(email.header.decode_header(str(value))))
    except (UnicodeError, LookupError, email.errors.HeaderParseError):
        return str(value)


def _ids(values: list[str]) -> tuple[str, ...]:
    found: list[str] = []
    for value in values:
        found.extend(m for m in _MSGID.findall(str(value)) if len(m) <= 900)
    return tuple(dict.fromkeys(found))


def _message_id(fields: Fields) -> str:
    ids = _ids(fields.get_all("Message-ID", []))
    return ids[0] if ids else ""


def _synthetic_id(
    fields: Fields,
    sender: str,
    subject: str,
    text: str,
    attachments: tuple[ParsedAttachment, ...],
) -> str:
    """A stable id for mail without one, so the same mail from two routes is stored once.

    Built from what survives transit (not the Received lines that differ per route).
    Attachments count too: a scanner mails each page with the same text (and often in
    the same second), and those are different mails.
    """
    digest = hashlib.sha256()
    for part in (sender, _plain(fields, "To"), _plain(fields, "Date"), subject, text):
        digest.update(part.encode("utf-8", "surrogateescape") + b"\0")
    # Content only: mail-parser makes up random names for unnamed parts. Without
    # attachments the id is the same as before they counted.
    for attachment in attachments:
        digest.update(hashlib.sha256(attachment.data).digest())
    return f"{digest.hexdigest()[:40]}@no-message-id.maildesk.invalid"


def _date(fields: Fields) -> datetime | None:
    value = fields.get("Date")
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(str(value))
    except (TypeError, ValueError, IndexError):
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _language(fields: Fields) -> str | None:
    """cs or en from Content-Language, else from Accept-Language (Outlook writes both)."""
    for header in ("Content-Language", "Accept-Language"):
        value = _plain(fields, header).lower()
        for lang in ("cs", "en"):
            if value.startswith(lang):
                return lang
    return None


def _attachments(
    items: list[dict[str, object]], runs: Runs, raw_size: int
) -> list[ParsedAttachment]:
    """The files of the message. mail-parser also gives each container marked as an
    attachment (a multipart, a forwarded message/rfc822) as text, beside the parts in
    it: 19 such containers nested made a 4 MB mail store 80 MB. A multipart is no file
    anyone sent, and is left out. Forwarded messages are kept, outermost first: the
    first always (read back, it may be larger than it was in the mail), the ones
    after it while all their copies come to no more than the mail itself."""
    result = []
    copies_left: int | None = None  # bytes later forwarded messages may still take
    for item in items:
        content_type = clean_text(str(item.get("mail_content_type") or "application/octet-stream"))
        container = content_type.lower()
        if container.startswith("multipart/"):
            continue
        payload = str(item.get("payload") or "")
        data: bytes | None = None
        if item.get("binary"):
            try:
                # A long body is decoded from the raw bytes (it was never a str);
                # binascii reads an ASCII str in place, b64decode would copy it first.
                found = runs.decode(payload)
                data = binascii.a2b_base64(payload) if found is None else found
            except ValueError:
                data = runs.restore(payload).encode("utf-8", "surrogateescape")
            size = len(data)
        else:  # a container flattened to text, the markers of the leaves in it kept
            size = runs.flattened_size(payload)
        if container.startswith("message/"):
            if copies_left is None:
                copies_left = raw_size - size
            elif size > copies_left:
                log.info("a forwarded message inside another is not kept twice")
                continue
            else:
                copies_left -= size
        if data is None:
            data = runs.flattened(payload)
        filename = clean_text(str(item.get("filename") or "attachment"))[:255]
        result.append(ParsedAttachment(filename or "attachment", content_type[:255], data))
    return result


_SYSTEM_LOCAL_PARTS = ("mailer-daemon", "postmaster", "mail-daemon", "mailerdaemon")


def _may_be_bounce(content_type: str, fields: Fields, from_addr: str) -> bool:
    """Cheap signs that a mail system, not a person, wrote this message."""
    local = from_addr.partition("@")[0]
    return (
        content_type == "multipart/report"
        or local in _SYSTEM_LOCAL_PARTS
        or local.startswith("microsoftexchange")
        or _plain(fields, "Return-Path") == "<>"
        or _keyword(fields, "Auto-Submitted") not in ("", "no")
    )


# A mail system's report (a few KB) comes first in a bounce, before the returned
# original. The detectors' expressions cost up to 2 s a megabyte of hostile lines,
# and anyone can write a MAILER-DAEMON From: past this many bytes, only the start
# is read.
BOUNCE_SCAN_BYTES = 64 * 1024


def _bounce_view(raw: bytes, msg: EmailMessage, runs: Runs) -> EmailMessage:
    """What the bounce detectors read: the message, or its start when it is large."""
    if len(raw) > BOUNCE_SCAN_BYTES:
        return email.message_from_bytes(raw[:BOUNCE_SCAN_BYTES], policy=email.policy.compat32)
    runs.restore_tree(msg, keep=lambda part, inside: False, as_text=lambda part: False)
    return msg


def _bounces(msg: EmailMessage) -> tuple[frozenset[str], frozenset[str]]:
    try:
        temporary, permanent = all_failures(msg)
    except Exception:  # a detector choking on odd mail must not stop the pipeline
        log.warning("bounce detection failed", exc_info=True)
        return frozenset(), frozenset()
    decode = lambda items: frozenset(  # noqa: E731
        (i.decode("utf-8", "replace") if isinstance(i, bytes) else str(i)).lower() for i in items
    )
    return decode(temporary), decode(permanent)


_QUOTED_ID = re.compile(rb"(?im)^message-id:[ \t]*<([^<>\s\0]{1,900})>")  # no NUL: see _MSGID
# The first ones are kept: a bounce names the mail it bounces near its start. They are
# read one by one, not all at once: a 23 MB body of such lines held a million of them.
_MAX_QUOTED_IDS = 20


def _quoted_ids(raw: bytes) -> tuple[str, ...]:
    """Message-IDs in header lines after the top-level header block (quoted originals)."""
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        end = raw.find(b"\n\n")
    if end < 0:
        return ()
    found: dict[str, None] = {}
    for match in _QUOTED_ID.finditer(raw, end):
        found.setdefault(match[1].decode("ascii", "replace"), None)
        if len(found) == _MAX_QUOTED_IDS:
            break
    return tuple(found)
