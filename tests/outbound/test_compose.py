"""compose(): what a mail client sees in the bytes, including hostile customer text."""

from __future__ import annotations

import base64
import dataclasses
import email
import email.header
import email.policy
import email.utils
import random
import re
import unicodedata
from datetime import UTC, datetime, timedelta, timezone
from email.message import EmailMessage, MIMEPart

import pytest

from maildesk.outbound import headers
from maildesk.outbound.compose import (
    _PLAIN_BLOCK,
    _PLAIN_VALUE,
    Address,
    Attachment,
    HeaderError,
    OutgoingMail,
    _plain_and_named,
    _verify_each_line,
    compose,
    thread_index,
    verify_header_block,
)

CZECH = "Dobrý den, přijali jsme váš požadavek"
PRAGUE = timezone(timedelta(hours=1))
CREATED = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
CUSTOMER = "jan.novak@example.org"
BASE_HEADERS = ["date", "from", "to", "subject", "message-id", "mime-version", "content-type"]


def make_mail(**changes: object) -> OutgoingMail:
    mail = OutgoingMail(
        message_id="md.abc123@example.test",
        sender=Address("support@example.test", "Podpora"),
        to=(Address(CUSTOMER, "Jan Novák"),),
        subject="[#42] Tiskárna nefunguje",
        text=CZECH + "\n",
        date=datetime(2026, 1, 5, 10, 30, tzinfo=PRAGUE),
    )
    return dataclasses.replace(mail, **changes)  # type: ignore[arg-type]


def parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def header_block(data: bytes) -> bytes:
    return data.split(b"\r\n\r\n", 1)[0] + b"\r\n"


def text_of(part: MIMEPart | None) -> str:
    assert part is not None
    # Text travels in canonical form: CRLF line breaks.
    return str(part.get_content()).replace("\r\n", "\n")


def test_headers_a_client_shows() -> None:
    mail = make_mail(
        to=(Address(CUSTOMER, "Jiří Novák"), Address("eva@example.org", "Novák, Eva")),
        reply_to=Address("t.k3y@example.test", 'Support "Desk" (Prague)'),
        in_reply_to="CAF1@mail.example.org",
        references=("first@example.org", "CAF1@mail.example.org"),
        auto_submitted="auto-replied",
        suppress_auto_replies=True,
        thread_topic="Tiskárna nefunguje",
        thread_index=thread_index(CREATED, b"42@example.test"),
    )
    message = parse(compose(mail))
    assert [a.addr_spec for a in message["From"].addresses] == ["support@example.test"]
    assert message["From"].addresses[0].display_name == "Podpora"
    to = [(a.display_name, a.addr_spec) for a in message["To"].addresses]
    assert to == [("Jiří Novák", CUSTOMER), ("Novák, Eva", "eva@example.org")]
    reply_to = message["Reply-To"].addresses
    assert [(a.display_name, a.addr_spec) for a in reply_to] == [
        ('Support "Desk" (Prague)', "t.k3y@example.test")
    ]
    assert message["Subject"] == "[#42] Tiskárna nefunguje"
    assert message["Message-ID"] == "<md.abc123@example.test>"
    assert message["In-Reply-To"] == "<CAF1@mail.example.org>"
    assert message["References"] == "<first@example.org> <CAF1@mail.example.org>"
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["X-Auto-Response-Suppress"] == "OOF, AutoReply"
    assert message["Thread-Topic"] == "Tiskárna nefunguje"
    assert message["Thread-Index"] == mail.thread_index
    assert message["Date"].datetime == mail.date
    assert message["MIME-Version"] == "1.0"
    assert [k.lower() for k in message.keys()] == [
        "date", "from", "to", "reply-to", "subject", "message-id", "in-reply-to",
        "references", "mime-version", "auto-submitted", "x-auto-response-suppress",
        "thread-topic", "thread-index",
        "content-type", "content-transfer-encoding",
    ]  # fmt: skip
    assert not any(part.defects for part in message.walk())


def test_mails_of_one_second_each_show_their_own_zone() -> None:
    """One instant in two zones is one datetime key; each mail still shows its zone."""
    utc = datetime(2026, 1, 5, 9, 30, 0, 250_000, tzinfo=UTC)
    moments = (utc, utc.astimezone(PRAGUE), utc + timedelta(seconds=1), utc)
    dates = [parse(compose(make_mail(date=moment)))["Date"] for moment in moments]
    assert dates == [
        "Mon, 05 Jan 2026 09:30:00 +0000",
        "Mon, 05 Jan 2026 10:30:00 +0100",
        "Mon, 05 Jan 2026 09:30:01 +0000",
        "Mon, 05 Jan 2026 09:30:00 +0000",
    ]


def test_optional_headers_are_left_out() -> None:
    message = parse(compose(make_mail()))
    assert [k.lower() for k in message.keys()] == [*BASE_HEADERS, "content-transfer-encoding"]


def test_czech_plain_text_body() -> None:
    message = parse(compose(make_mail()))
    assert message.get_content_type() == "text/plain"
    assert message.get_content_charset() == "utf-8"
    assert text_of(message) == CZECH + "\n"


def test_missing_final_line_break_is_added() -> None:
    assert text_of(parse(compose(make_mail(text=CZECH)))) == CZECH + "\n"


def test_html_alternative() -> None:
    html = f"<p>{CZECH}</p>\n"
    message = parse(compose(make_mail(text=CZECH + "\n\nS pozdravem\n", html=html)))
    assert message.get_content_type() == "multipart/alternative"
    assert text_of(message.get_body(("plain",))) == CZECH + "\n\nS pozdravem\n"
    assert text_of(message.get_body(("html",))) == html
    preferred = message.get_body(("html", "plain"))
    assert preferred is not None and preferred.get_content_type() == "text/html"


def test_attachments_come_back_byte_identical() -> None:
    pdf = b"%PDF-1.4\n" + bytes(range(256)) * 40
    attachments = (
        Attachment("faktura.pdf", "application/pdf", pdf),
        Attachment("Přehled požadavků – leden 2026.xlsx", "application/vnd.ms-excel", b"\x00x"),
        Attachment('a "quoted" name; with=?utf-8?q?=0A?=Bcc: x.txt', "text/plain", b"hi\r\n"),
        Attachment("empty.bin", "application/octet-stream", b""),
    )
    mail = make_mail(html="<p>ahoj</p>", attachments=attachments)
    message = parse(compose(mail))
    assert message.get_content_type() == "multipart/mixed"
    assert text_of(message.get_body(("plain",))) == CZECH + "\n"
    got = [(part.get_filename(), part.get_content_type()) for part in message.iter_attachments()]
    assert got == [(a.filename, a.content_type) for a in attachments]
    assert [bytes(part.get_payload(decode=True)) for part in message.iter_attachments()] == [
        a.data for a in attachments
    ]
    content_headers = {"content-type", "content-transfer-encoding", "content-disposition"}
    for part in list(message.walk())[1:]:
        assert {k.lower() for k in part.keys()} <= content_headers
    assert not any(part.defects for part in message.walk())


@pytest.mark.parametrize("html", [None, "<p>x</p>"])
def test_lines_are_crlf_ascii_and_short(html: str | None) -> None:
    long_line = "Řádek " * 400  # one 2,400-character line in the body
    attachment = Attachment("data.bin", "application/octet-stream", bytes(5000))
    data = compose(make_mail(text=long_line, html=html, attachments=(attachment,)))
    assert data.isascii()
    assert b"\n" not in data.replace(b"\r\n", b"") and b"\r" not in data.replace(b"\r\n", b"")
    assert data.endswith(b"\r\n")
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    # The header block of an ordinary mail folds within 78.
    assert max(len(line) for line in header_block(data).split(b"\r\n")) <= 78


@pytest.mark.parametrize("seed", range(40))
def test_text_of_many_lines_comes_back_as_written(seed: int) -> None:
    """Texts past the lines that choose the encoding: Czech and Cyrillic, spaces and tabs
    at line ends, "=" and dots at line starts, lines past 76 characters, blank lines."""
    rng = random.Random(seed)
    pieces = ["Řádek", "ok", "Привет", "=3D", ".", " ", "\t", "x" * 90, "a=b", "€", ""]
    lines = ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 12))) for _ in range(30)]
    text = "\n".join(lines[: rng.randint(1, 30)]) + "\n"
    data = compose(make_mail(text=text, html=text.replace("\n", "<br>\n")))
    message = parse(data)
    assert text_of(message.get_body(("plain",))) == text
    assert text_of(message.get_body(("html",))) == text.replace("\n", "<br>\n")
    body = data.split(b"\r\n\r\n", 1)[1]
    assert max(len(line) for line in body.split(b"\r\n")) <= 76  # RFC 2045's limit
    assert not any(part.defects for part in message.walk())


HOSTILE_SUBJECTS = [
    "Hi\r\nBcc: evil@x.test",
    "Hi\nBcc: evil@x.test",
    "Hi\rBcc: evil@x.test\x00\x1b[31m",
    "=?UTF-8?Q?=0A?=Bcc: evil@x.test",
    "=?utf-8?b?DQpCY2M6IGV2aWxAeC50ZXN0?=",
    "Re: =?utf-8?q?=0D=0ABcc=3A_evil=40x=2Etest?= ahoj",
    "Žádost\u2028Bcc: evil@x.test\u0085To: evil@x.test",
    "Příliš žluťoučký kůň úpěl ďábelské ódy " * 52,  # about 2,000 characters
    "x" * 2000,
    "word " * 400 + "\r\nBcc: evil@x.test",
]


def cleaned(text: str) -> str:
    return re.sub(r"[\x00-\x1f\x7f\x85\u2028\u2029]", " ", text).strip()


@pytest.mark.parametrize("subject", HOSTILE_SUBJECTS)
def test_hostile_subject_stays_one_header(subject: str) -> None:
    data = compose(make_mail(subject=subject, thread_topic=subject))
    message = parse(data)
    assert "Bcc" not in message
    raw_names = [line.split(b":")[0].lower() for line in header_block(data).split(b"\r\n")]
    assert raw_names.count(b"to") == 1 and b"bcc" not in raw_names
    assert len(message.get_all("To", [])) == 1
    assert [a.addr_spec for a in message["To"].addresses] == [CUSTOMER]
    assert message["Subject"] == cleaned(subject)
    assert message["Thread-Topic"] == cleaned(subject)
    assert [k.lower() for k in message.keys()] == [
        *BASE_HEADERS[:-1], "thread-topic", "content-type", "content-transfer-encoding"
    ]  # fmt: skip
    assert max(len(line) for line in data.split(b"\r\n")) <= 998


def test_clean_text_changes_only_breaks_and_surrogates() -> None:
    """Header text is checked in C when printable, character by character otherwise:
    both must agree with the rule, on strings mixing both kinds around the length cap."""

    def by_rule(value: str) -> str:
        kept = "".join(
            " " if unicodedata.category(ch) in ("Cc", "Zl", "Zp") else
            "\ufffd" if unicodedata.category(ch) == "Cs" else ch
            for ch in value[: headers.MAX_TEXT + 1]
        ).strip()  # fmt: skip
        cap = headers.MAX_TEXT
        return kept if len(kept) <= cap else kept[: cap - 1].rstrip() + "…"

    alphabet = "aZ ž\t\r\n\x00\x7f\x85\xa0\u2028\u2029\u200b\ufeff\ud800\U0010ffff"
    rng = random.Random(9)
    for _ in range(3000):
        size = rng.choice([0, 1, 3, 40, headers.MAX_TEXT - 1, headers.MAX_TEXT + 2])
        value = "".join(rng.choice(alphabet) for _ in range(size))
        assert headers.clean_text(value) == by_rule(value)


HOSTILE_NAMES = [
    "Eve\r\nBcc: x@y",
    "a@b.test)<c@d.test>",
    "a@b.test>, <c@d.test",
    '"Eve" <c@d.test>, x',
    "=?utf-8?q?Eve=0D=0ABcc=3A_x=40y?=",
    'Eve\\"\r\n\tBcc: x@y',
    'Jiří Novák (ředitel), "IT" <x@y>',
    "Ing. Jiří Novák, Ph.D., Technická univerzita v Liberci, Fakulta mechatroniky",
    'Support (Helpdesk) <help@evil.test>, "Second" <evil@x.test>; group: a@b.test;',
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_display_name_keeps_the_intended_address(name: str) -> None:
    mail = make_mail(to=(Address(CUSTOMER, name),), sender=Address("support@example.test", name))
    data = compose(mail)
    message = parse(data)
    assert "Bcc" not in message
    assert len(message.get_all("To", [])) == 1
    to = message["To"].addresses
    assert [(a.display_name, a.addr_spec) for a in to] == [(cleaned(name), CUSTOMER)]
    assert [a.addr_spec for a in message["From"].addresses] == ["support@example.test"]
    # The legacy parser (the one CVE-2023-27043 is about) must agree on the raw value.
    raw = email.message_from_bytes(data, policy=email.policy.compat32)
    assert [addr for _, addr in email.utils.getaddresses(raw.get_all("To", []))] == [CUSTOMER]


def test_long_display_name_decodes_per_rfc_2047() -> None:
    # Too long for one encoded word. RFC 2047 decoders join adjacent encoded words;
    # Python's policy.default phrase parser puts a space between them instead.
    name = "Žluťoučký kůň " * 20
    data = compose(make_mail(to=(Address(CUSTOMER, name),)))
    raw_to = email.message_from_bytes(data, policy=email.policy.compat32)["To"]
    decoded = email.header.make_header(email.header.decode_header(raw_to))
    assert str(decoded) == f"{name.strip()} <{CUSTOMER}>"
    (address,) = parse(data)["To"].addresses
    assert address.addr_spec == CUSTOMER
    assert address.display_name.replace(" ", "") == name.replace(" ", "")
    assert max(len(line) for line in header_block(data).split(b"\r\n")) <= 78


@pytest.mark.parametrize(
    ("changes", "header"),
    [
        ({"to": (Address("evil@x.test\r\nBcc: y@z.test"),)}, "To"),
        ({"to": (Address("<jan@example.org>"),)}, "To"),
        ({"to": (Address("jan novak@example.org"),)}, "To"),
        ({"to": (Address("a@b.test,c@d.test"),)}, "To"),
        ({"to": (Address('"jan"@example.org'),)}, "To"),
        ({"to": (Address("a@b.test)<c@d.test>"),)}, "To"),
        ({"to": (Address("=?utf-8?q?=0A?=@x.test"),)}, "To"),
        ({"to": ()}, "To"),
        ({"sender": Address("support@")}, "From"),
        ({"reply_to": Address("x@y..test")}, "Reply-To"),
        ({"message_id": "<md.abc@example.test>"}, "Message-ID"),
        ({"message_id": "no-at-sign"}, "Message-ID"),
        ({"in_reply_to": "a@b\r\nBcc: x@y"}, "In-Reply-To"),
        ({"references": ("ok@example.org", "bad id@example.org")}, "References"),
        ({"auto_submitted": "auto-replied\r\nBcc: x@y"}, "Auto-Submitted"),
        ({"thread_index": "not base64!"}, "Thread-Index"),
        ({"thread_index": base64.b64encode(bytes(23)).decode()}, "Thread-Index"),
        ({"date": datetime(2026, 1, 5, 10, 30)}, "Date"),
        ({"attachments": (Attachment("x", "text/plain; charset=x", b""),)}, "Content-Type"),
        ({"attachments": (Attachment("x", "message/rfc822", b""),)}, "Content-Type"),
    ],
)
def test_structural_values_are_refused(changes: dict[str, object], header: str) -> None:
    with pytest.raises(HeaderError, match=f"^{header}:"):
        compose(make_mail(**changes))


def test_huge_subject_is_cut_not_refused() -> None:
    data = compose(make_mail(subject="Ž" * 300_000))
    subject = parse(data)["Subject"]
    assert subject == "Ž" * 3_999 + "…"
    assert len(header_block(data)) < 20_000


def test_unicode_domain_is_written_as_a_label() -> None:
    message = parse(compose(make_mail(to=(Address("info@příklad.cz"),))))
    assert [a.addr_spec for a in message["To"].addresses] == ["info@xn--pklad-zsa96e.cz"]
    # IDNA 2008: ß is a letter of its own, not "ss" (IDNA 2003, Python's codec).
    message = parse(compose(make_mail(to=(Address("info@straße.de"),))))
    assert [a.addr_spec for a in message["To"].addresses] == ["info@xn--strae-oqa.de"]


def test_verify_header_block_catches_an_extra_header() -> None:
    block = b"Subject: hi\r\nBcc: evil@x.test\r\n"
    verify_header_block(b"Subject: hi\r\n", ["Subject"])
    with pytest.raises(HeaderError):
        verify_header_block(block, ["Subject"])
    with pytest.raises(HeaderError):
        verify_header_block(b"Subject: hi\r\nstray line\r\n", ["Subject"])
    with pytest.raises(HeaderError):
        verify_header_block(b"Subject: =?UTF-8?Q?a=0Ab?=\r\n", ["Subject"])


# Blocks built to make a line parser and the stdlib's disagree about where a header
# starts: continuations, odd names, a mbox "From " line, blank and whitespace lines.
_TRICKY_BLOCKS = [
    b"Subject: hi\r\n",
    b"Subject: hi\r\n there\r\n",
    b"Subject: hi\r\n\tthere\r\n",
    b"Subject:\r\n hi\r\n",
    b"Subject: hi\r\n \r\n",
    b"Subject: hi\r\n\r\nBcc: evil@x.test\r\n",
    b"Subject: hi\r\nFrom evil@x.test\r\n",
    b"From evil@x.test\r\nSubject: hi\r\n",
    b"Subject: hi\r\n: empty name\r\n",
    b"Subject : hi\r\n",
    b"Subject: hi\r\nX-A~b!: c\r\n",
    b"Subject: hi\rBcc: evil@x.test\r\n",
    b"Subject: hi\nBcc: evil@x.test\r\n",
    b"Subject: hi\r\n  Bcc: evil@x.test\r\n",
    b"Subject: =?UTF-8?B?YQpiYw==?=\r\n",
    b"Subject: =?UTF-8?Q?a=E2=80=A8b?=\r\n",
    b"Subject: a =?UTF-8?Q?b?=\r\n",
    "Subject: hí\r\n".encode(),
]


@pytest.mark.parametrize("block", _TRICKY_BLOCKS)
def test_verified_block_is_read_alike_by_the_stdlib(block: bytes) -> None:
    """A block our verifier passes has, for the stdlib parser, exactly the expected
    headers, no body, and no value that decodes to a line break."""
    try:
        verify_header_block(block, ["Subject"])
    except HeaderError:
        return
    parsed = email.message_from_bytes(block + b"\r\n", policy=email.policy.compat32)
    assert [name.lower() for name in parsed.keys()] == ["subject"]
    assert not parsed.get_payload()
    decoded = str(email.policy.default.header_fetch_parse("Subject", parsed["Subject"]))
    assert len(f"x{decoded}x".splitlines()) == 1


def test_verifier_passes_the_plain_tricky_blocks() -> None:
    """The differential test above is not vacuous: ordinary shapes pass."""
    passed = []
    for block in _TRICKY_BLOCKS:
        try:
            verify_header_block(block, ["Subject"])
        except HeaderError:
            continue
        passed.append(block)
    assert passed == [
        b"Subject: hi\r\n",
        b"Subject: hi\r\n there\r\n",
        b"Subject: hi\r\n\tthere\r\n",
        b"Subject:\r\n hi\r\n",
        b"Subject: hi\r\n  Bcc: evil@x.test\r\n",  # a folded Subject, for both parsers
        b"Subject: a =?UTF-8?Q?b?=\r\n",
    ]


def test_one_pass_check_passes_only_what_each_line_check_passes() -> None:
    """verify_header_block first tries one pass over the whole block (`_plain_and_named`)
    and reads it line by line only when that fails: the one pass must never accept a
    block the line by line reading refuses, over random blocks of the pieces that
    matter (name characters, colons, blanks, controls, CR, LF, "=?", "%", 8-bit)."""
    pieces = [b"Subject", b"Bcc", b"X", b":", b": ", b"a", b" ", b"\t", b"\x0b", b"\r", b"\n"]
    pieces += [b"\r\n", b"\r\n ", b"\r\n\t", b"=", b"?", b"=?", b"%0A", b"\xc3\xad", b"\x00"]
    rng = random.Random(11)
    passed = 0
    for _ in range(20_000):
        weights = [
            8 if piece.isalpha() or piece in (b" ", b": ", b"\r\n ") else 1 for piece in pieces
        ]
        block = b"".join(rng.choices(pieces, weights, k=rng.randrange(1, 16)))
        block = rng.choice([b"Subject: ", b""]) + block + rng.choice([b"\r\n", b""])
        want = rng.choice([["subject"], ["subject", "bcc"], ["subject", "x"]])
        if _plain_and_named(block, want):
            passed += 1
            _verify_each_line(block, want)  # raises HeaderError if it disagrees
    assert passed > 400  # the one pass is exercised, not only refused


def test_plain_patterns_accept_what_their_definition_accepts() -> None:
    """The one-pass patterns are written for speed; over random strings of the pieces
    that matter they accept exactly what their definition does: each character printable
    ASCII or a tab, none a "%", no "=" before a "?"; a block, lines of a field name and
    such a value or of a blank and such a value with something besides blanks, in CRLF."""
    allowed = set("\t" + "".join(map(chr, range(0x20, 0x7F)))) - {"%"}

    def plain(value: str) -> bool:
        return set(value) <= allowed and "=?" not in value

    def block_by_lines(block: str) -> bool:
        if not block.endswith("\r\n"):
            return False
        lines = block[:-2].split("\r\n")
        for number, line in enumerate(lines):
            field = re.match(r"[!-9;-~]+:", line)
            if field is not None:
                value = line[field.end() :]
            elif number > 0 and line[:1] in (" ", "\t") and line.strip(" \t"):
                value = line[1:]
            else:
                return False
            if not plain(value):
                return False
        return True

    pieces = ["Subject", "X", ":", " ", "\t", "a", "=", "?", "=?", "%", "\r\n", "\r\n ", "\r", "\n"]
    pieces += ["\x00", "\x7f", "í"]
    rng = random.Random(17)
    accepted = 0
    for _ in range(20_000):
        text = "".join(rng.choices(pieces, k=rng.randrange(0, 14)))
        assert (_PLAIN_VALUE.fullmatch(text) is not None) == plain(text), text
        block = rng.choice(["Subject:", ""]) + text + rng.choice(["\r\n", ""])
        expected = block_by_lines(block)
        assert (_PLAIN_BLOCK.fullmatch(block) is not None) == expected, block
        accepted += expected
    assert accepted > 500  # blocks are accepted as well as refused


def test_fold_breaks_only_where_a_line_would_grow_past_78() -> None:
    """Unfolded, a field is its tokens joined by single spaces; a line is broken before
    a token only when that token would take it past 78 characters."""
    rng = random.Random(5)
    for _ in range(5000):
        tokens = ["x" * rng.choice([1, 2, 5, 20, 40, 77, 90]) for _ in range(rng.randrange(0, 8))]
        name = rng.choice(["To", "Subject", "X-Long-Header-Name"])
        folded = headers.fold(name, tokens)
        lines = folded.removesuffix("\r\n").split("\r\n")
        assert "".join(lines) == " ".join([f"{name}:", *tokens])
        for line, after in zip(lines, lines[1:], strict=False):
            assert len(line) + 1 + len(after.split(" ")[1]) > 78  # its next token did not fit
        for line in lines:
            words = line.split(" ")[1:]
            assert len(line) <= 78 or len(words) == 1  # only a token alone may be longer


def test_thread_index_groups_a_ticket() -> None:
    key = b"42@example.test"
    first = base64.b64decode(thread_index(CREATED, key))
    later = [
        base64.b64decode(thread_index(CREATED, key, CREATED + delta))
        for delta in (timedelta(minutes=5), timedelta(days=3), timedelta(days=900))
    ]
    assert len(first) == 22 and all(len(raw) == 27 for raw in later)
    assert first[0] == 0x01  # the byte Microsoft calls "reserved, 1"
    assert all(raw[:22] == first for raw in later)
    assert len({raw[22:] for raw in later}) == 3
    other = base64.b64decode(thread_index(CREATED, b"43@example.test", CREATED))
    assert other[:6] == first[:6] and other[6:22] != first[6:22]
    # Deterministic: the same inputs give the same header.
    assert thread_index(CREATED, key, CREATED) == thread_index(CREATED, key, CREATED)


def test_thread_index_child_block_encodes_the_delay() -> None:
    created = int((CREATED - datetime(1601, 1, 1, tzinfo=UTC)).total_seconds()) * 10**7
    for delay, code in ((timedelta(hours=2), 0), (timedelta(days=900), 1)):
        raw = base64.b64decode(thread_index(CREATED, b"k", CREATED + delay))
        word = int.from_bytes(raw[22:26], "big")
        assert word >> 31 == code
        shift = 23 if code else 18
        diff = int(delay.total_seconds()) * 10**7 + created % (1 << 16)
        assert word & 0x7FFFFFFF == diff >> shift
