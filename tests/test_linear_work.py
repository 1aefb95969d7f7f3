"""Every text transformation on customer input grows linearly with the input (issue 7, item 4).

Each hostile shape is run at size n and 8n: a linear stage takes about 8x as long, a quadratic
one 64x, a cubic one 512x; the bound is 24x. CPU time (process_time), the best of a few runs
(each large run bracketed by small ones), and a bound three times the linear ratio, so a busy
machine does not fail it (at 4n against a bound of 8x, another process thrashing the caches
made a linear stage measure 8.1x and 10.5x); no absolute time is asserted. Each shape is also
checked on a small sample for the result a reader expects. The end-to-end test over SMTP
compares a hostile mail with an ordinary mail of the same size in the same run.
"""

from __future__ import annotations

import base64
import email.policy
import hashlib
import re
import time
import tracemalloc
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path

import pytest

from maildesk import dkimbody
from maildesk.base64runs import long_runs
from maildesk.config import TrustSettings
from maildesk.html_text import SLICE, html_to_text
from maildesk.mailauth import MailAuth, parse_authentication_results
from maildesk.message import parse
from maildesk.redaction import redact_links
from maildesk.replies import MAX_TEXT, TRUNCATED, has_word, is_only_thanks, new_text
from maildesk.tickets import search
from tests.conftest import RunningDaemon, eml, make_mail, wait_for
from tests.dns_server import dns_server, make_key
from tests.helpers import ticket, tickets

FACTOR = 8  # the large input is FACTOR times the small one
GROWTH_BOUND = 24.0  # time(FACTOR n) / time(n)
PAIRS = 9
MIN_SAMPLE = 0.02  # seconds of CPU per measurement; small inputs are run several times

Shape = Callable[[int], str]

HTML_SHAPES: dict[str, Shape] = {
    "unfinished tags <a<a<a": lambda n: "<a" * (n // 2),
    "bare <<<<": lambda n: "<" * n,
    "nested <div>": lambda n: "<div>" * (n // 5) + "x",
    "deep nesting, then stray end tags": lambda n: "<div>" * (n // 12) + "</span>" * (n // 14),
    "unclosed <b id=i><p>": lambda n: "".join(f"<b id={i}><p>x" for i in range(n // 16)),
    "huge attribute value": lambda n: '<a href="' + "x" * n + '">y</a>',
    "many attributes": lambda n: "<a " + "".join(f"x{i}=1 " for i in range(n // 8)) + ">y</a>",
    "unclosed quotes": lambda n: "<a " + 'x="' * (n // 3),
    "unclosed comments": lambda n: "<!--" * (n // 4),
    "huge character reference": lambda n: "&#" + "1" * n + ";",
    "deep <blockquote> with many lines": lambda n: "<blockquote>" * (n // 24) + "<br>x" * (n // 10),
    "unfinished </script": lambda n: "<script>" + "</scr" * (n // 5),
    "many blank lines": lambda n: "<p>x</p>" + "\n" * n + "<p>y</p>",
}

TEXT_SHAPES: dict[str, Shape] = {
    "'1 odesílatel ' on one line": lambda n: "1 odesílatel " * (n // 13),
    "'a' * n + '!'": lambda n: "a" * n + "!",
    "capitalised words": lambda n: "Ab " * (n // 3) + "!",
    "a line of quote markers": lambda n: ">" * n,
    "quoted lines": lambda n: "x\n" + "> q\n" * (n // 4),
    "blank lines": lambda n: "x" + "\n" * n + "y",
    "leading blank lines": lambda n: "\n" * n + "x",
    "spaces": lambda n: " " * n + "x",
    "punctuation": lambda n: "!." * (n // 2),
    "'On 1 ' digits": lambda n: "On " + "1 " * (n // 2),
    "attribution lines": lambda n: "On 1 wrote:\n" * (n // 12),
    "mutt brackets": lambda n: "* " + " [2026-11-23" * (n // 12) + ":",
    "closing lines": lambda n: "x\n" + "Best regards\n" * (n // 13),
    "name lines": lambda n: "Thanks\n" + "Jan\n" * (n // 4),
    "commas before words": lambda n: ",a" * (n // 2) + "?",
    "negated approvals": lambda n: "ne APPROVE " * (n // 11),
    "combining marks": lambda n: "a" + "\u0301\u0316" * (n // 4),
    "Tibetan vowel signs": lambda n: "\u0f73" * (n // 3),
    "dashes": lambda n: "-" * n,
    "Outlook header lines": lambda n: "From: x\nTo: y\n" * (n // 14),
}

TEXT_STAGES: dict[str, Callable[[str], object]] = {
    "new_text": new_text,
    "is_only_thanks": is_only_thanks,
    "has_word": lambda text: has_word(text, ["SCHVALUJI", "APPROVE"]),
    # What the search index stores for each message body (maildesk/tickets/search.py).
    "search document": lambda text: search.document("", text),
}


def _cpu(stage: Callable[[str], object], text: str, loops: int) -> float:
    started = time.process_time()
    for _ in range(loops):
        stage(text)
    return time.process_time() - started


def growth(stage: Callable[[str], object], shape: Shape, n: int, pairs: int = PAIRS) -> float:
    """time(8n) / time(n), the best of up to PAIRS bracketed measurements.

    Each large run sits between two small runs and is compared with their mean, so a process
    that starts or stops on the other core (with its cache misses, or on a shared hyperthread)
    slows both sides of one ratio alike instead of only the large side; measuring all the
    small runs first and all the large ones afterwards once made a linear stage measure 24.4x
    in CI. A quadratic stage measures about 64x in every pair, so taking the best pair
    cannot hide it; it stops at the first pair in bound.
    """
    small, large = shape(n), shape(FACTOR * n)
    once = _cpu(stage, small, 1)
    loops = max(1, min(1000, int(MIN_SAMPLE / max(once, 1e-6))))
    before = _cpu(stage, small, loops)
    best = float("inf")
    for _ in range(pairs):
        grown = _cpu(stage, large, loops)
        after = _cpu(stage, small, loops)
        best = min(best, grown / max((before + after) / 2, 1e-9))
        if best < GROWTH_BOUND:
            break
        before = after
    return best


def test_the_measure_tells_a_quadratic_stage_from_a_linear_one() -> None:
    # A pattern that starts with a* and then fails rescans the rest of the text from every
    # position: the shape of the quadratic regexes this file guards against.
    quadratic = re.compile(r"a*!").search

    def linear(text: str) -> int:
        return text.count("a")

    def shape(n: int) -> str:
        return "a" * n

    assert growth(quadratic, shape, 2_000, pairs=2) > GROWTH_BOUND
    assert growth(linear, shape, 64_000) < GROWTH_BOUND


# -- HTML to text ----------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2_000, 64_000])
@pytest.mark.parametrize("name", sorted(HTML_SHAPES))
def test_html_to_text_grows_linearly(name: str, n: int) -> None:
    ratio = growth(html_to_text, HTML_SHAPES[name], n)
    assert ratio < GROWTH_BOUND, f"{name}: time(8n)/time(n) = {ratio:.1f} at n={n}"


@pytest.mark.parametrize(
    ("html", "text"),
    [
        ("<a<a<a", "<a<a<a"),  # a tag that never ends is text, as before
        ("<div>" * 3 + "x", "x"),
        ("<div>" * 3 + "x" + "</span>" * 3 + "y", "xy"),
        ("<b id=1><p>x<b id=2><p>y", "x\ny"),
        ('<a href="' + "x" * 100 + '">link</a> text', "link text"),
        ("<!--<!--", ""),
        ("&#" + "1" * 5000 + ";ok", "\ufffdok"),  # the stdlib's unescape raised ValueError
        ("<blockquote>" * 30 + "x<br>y", "> " * 20 + "x\n" + "> " * 20 + "y"),
        ("<script>if (a<b) x()</scr</script>ok", "ok"),
        ("a < b &amp; c", "a < b & c"),
        ("<p>x</p>" + "\n" * 50 + "<p>y</p>", "x\n\ny"),
        ('<a title="x>y">z</a>', "z"),
    ],
)
def test_html_to_text_of_hostile_shapes(html: str, text: str) -> None:
    assert html_to_text(html) == text


def test_html_to_text_keeps_quotes_paragraphs_and_drops_markup() -> None:
    html = (
        "<html><head><style>p {margin:0}</style><title>t</title></head><body>"
        "<p>Dobr&yacute;&nbsp;den,</p><div>tisk&aacute;rna <b>nefunguje</b>.</div>"
        "<blockquote><p>P&#367;vodn&iacute; zpr&aacute;va</p></blockquote>"
        "<pre>  a\n  b</pre><script>alert(1)</script></body></html>"
    )
    assert html_to_text(html) == (
        "Dobrý den,\n\ntiskárna nefunguje.\n\n> Původní zpráva\n\n  a\n  b"
    )


def test_html_past_the_tag_budget_is_still_read_as_text() -> None:
    html = "<br>" * 150_000 + "<p>Tail &amp; end</p>"
    assert html_to_text(html).endswith("Tail & end")


# Long text of short pieces (lines, runs of white space, references): each step over a text
# made a Python object of some 50 bytes per piece, so 16 MB of `<pre>ab` lines held 890 MB.
HTML_MEMORY_SHAPES: dict[str, Shape] = {
    "<pre> lines": lambda n: "<pre>" + "ab\n" * (n // 3),
    "<pre> lines ending in a space": lambda n: "<pre>" + "ab \n" * (n // 4),
    "<pre> references": lambda n: "<pre>" + "ab&lt;" * (n // 6),
    "lines": lambda n: "ab\n" * (n // 3),
    "vertical tabs": lambda n: "ab\x0b" * (n // 3),
    "references": lambda n: "ab&lt;" * (n // 6),
    "blank lines": lambda n: "ab\n\n<br><br>" * (n // 12),
}


def peak_bytes(stage: Callable[[str], object], text: str) -> int:
    """The most memory Python held at once while `stage` ran: allocations, counted the same
    on any machine (tracemalloc), unlike a process's RSS."""
    tracemalloc.start()
    try:
        stage(text)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("name", sorted(HTML_MEMORY_SHAPES))
def test_html_to_text_holds_a_few_times_its_input(name: str) -> None:
    html = HTML_MEMORY_SHAPES[name](1 << 20)
    ratio = peak_bytes(html_to_text, html) / len(html)
    assert ratio < 6, f"{name}: {ratio:.1f} bytes held per character of HTML"


def test_html_to_text_in_slices_reads_as_in_one_piece() -> None:
    """Long text is converted a slice at a time (`SLICE` characters), cut where no step can
    tell: white space runs, quoted lines and references across the cuts read as before."""
    words = "Dobrý&nbsp;den, \u2028 tiskárna\x0b  &amp; " * (SLICE // 8)
    assert html_to_text(words) == ("Dobrý den, tiskárna & " * (SLICE // 8)).strip()
    quoted = "<blockquote><pre>" + ("  x\n" + " " * SLICE + "&#32;y\n \n") * 3
    assert html_to_text(quoted) == "\n".join(["> x", "> y", ">"] * 3)
    lines = "<pre>" + "a  \n\n\n" * SLICE
    assert html_to_text(lines) == "\n\n".join(["a"] * SLICE)


# -- reply text, thanks and approval words -----------------------------------------------


@pytest.mark.parametrize("n", [1_000, 64_000])
@pytest.mark.parametrize("stage", sorted(TEXT_STAGES))
@pytest.mark.parametrize("name", sorted(TEXT_SHAPES))
def test_reply_text_stages_grow_linearly(name: str, stage: str, n: int) -> None:
    ratio = growth(TEXT_STAGES[stage], TEXT_SHAPES[name], n)
    assert ratio < GROWTH_BOUND, f"{stage} on {name}: time(8n)/time(n) = {ratio:.1f} at n={n}"


def test_reply_text_past_the_cap_is_cut_and_marked() -> None:
    # Above MAX_TEXT only the first MiB is read; the work stays flat as the input grows.
    ratio = growth(new_text, TEXT_SHAPES["name lines"], 2 * MAX_TEXT)
    assert ratio < GROWTH_BOUND
    long_text = "Dobrý den,\n" + "řádek logu 42\n" * (2 * MAX_TEXT // 14)
    cut = new_text(long_text)
    assert cut.startswith("Dobrý den,\nřádek logu 42\n")
    assert cut.endswith("\n\n" + TRUNCATED)
    assert len(cut) <= MAX_TEXT + 10
    # A quote header inside the first MiB still ends the new text, with no mark.
    quoted = (
        "Díky.\n\nOn Mon, Nov 23, 2026 at 10:00 AM Petra <p@x.test> wrote:\n" + "> q\n" * MAX_TEXT
    )
    assert new_text(quoted) == "Díky."


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1 odesílatel " * 100, ("1 odesílatel " * 100).strip()),
        (
            "Díky!\n\npo 23. 11. 2026 v 10:00 odesílatel Alice <a@x.test> napsal:\n> Funguje to?",
            "Díky!",
        ),
        ("Ok.\n\n* Alice <a@x.test> [2026-11-23 10:00]:\n> Is it?", "Ok."),
        ("Ok.\n\n* Alice ] [2026-11-23 10:00]:\n> Is it?", "Ok."),
        ("\n" * 1000 + "x" + "\n" * 1000, "x"),
        ("x\n" + "Best regards\n" * 50, "x"),
        ("Thanks\n" + "Jan\n" * 50, "Thanks\n" + "Jan\n" * 49 + "Jan"),
    ],
)
def test_new_text_of_hostile_shapes(text: str, expected: str) -> None:
    assert new_text(text) == expected


def test_thanks_and_approval_words_on_hostile_shapes() -> None:
    assert not is_only_thanks("a" * 2000 + "!")
    assert is_only_thanks("Děkuji" + "\u0301" * 5000 + "!")  # the marks fold away
    assert is_only_thanks("Díky, " + "Petro" + "!")
    assert not has_word("ne APPROVE " * 1000, ["APPROVE"])
    assert has_word("ne APPROVE " * 1000 + "APPROVE", ["APPROVE"])
    assert not has_word("I don't approve" + " " * 10_000 + "approve?", ["NOPE"])
    assert not has_word("don't" + " " * 10_000 + "APPROVE", ["APPROVE"])


# -- subject clean-up and parsing --------------------------------------------------------------


def _mail(subject: str) -> str:
    msg = EmailMessage()
    msg["From"] = "alice@customer.test"
    msg["To"] = "support@example.test"
    msg["Subject"] = "x"
    msg.set_content("Hello")
    return msg.as_string().replace("Subject: x", "Subject: " + subject)


SUBJECT_SHAPES: dict[str, Shape] = {
    "encoded words": lambda n: _mail("=?utf-8?q?a?= " * (n // 14)),
    "encoded words without spaces": lambda n: _mail("=?utf-8?b?YQ==?=" * (n // 16)),
    "unfinished encoded words": lambda n: _mail("=?" * (n // 2)),
    "control characters": lambda n: _mail("a\x01" * (n // 2)),
}


@pytest.mark.parametrize("name", sorted(SUBJECT_SHAPES))
def test_subject_clean_up_grows_linearly(name: str) -> None:
    # The guard caps one header at 32 KB; up to there the work grows linearly.
    ratio = growth(lambda raw: parse(raw.encode()), SUBJECT_SHAPES[name], 3_500)
    assert ratio < GROWTH_BOUND, f"{name}: time(8n)/time(n) = {ratio:.1f}"


def _body_in(charset: str, body: bytes) -> str:
    encoded = base64.encodebytes(body).decode()
    return (
        "From: mallory@evil.test\nTo: support@example.test\nSubject: hi\nMIME-Version: 1.0\n"
        f"Content-Type: text/plain; charset={charset}\nContent-Transfer-Encoding: base64\n\n"
        + encoded
    )


# A body's charset is the sender's word, and Python decodes a few in Python: punycode
# in quadratic time (a 5 MB body took 156 s), idna at 150 times UTF-8's cost.
def test_a_body_labelled_punycode_is_parsed_in_linear_time() -> None:
    def shape(n: int) -> str:
        return _body_in("punycode", b"-" + b"a" * n)

    ratio = growth(lambda raw: parse(raw.encode()), shape, 100_000, pairs=3)
    assert ratio < GROWTH_BOUND, f"time(8n)/time(n) = {ratio:.1f}"


@pytest.mark.parametrize(
    ("charset", "body"),
    [
        ("idna", b"xn--hxajbheg2az3al"),
        ("punycode", b"abc-"),
        ('"PunyCode"', b"abc-"),
        ("*=''%70unycode", b"abc-"),  # RFC 2231, %-escaped
    ],
)
def test_a_body_in_a_slow_charset_is_read_as_utf8(charset: str, body: bytes) -> None:
    """Linear is not enough for idna (25 MB would take a minute): the label is ignored,
    and the body read as UTF-8, as a charset we do not know would be."""
    raw = _body_in(charset, body).replace("charset=*=", "charset*=")
    assert parse(raw.encode()).text.strip() == body.decode()


# Runs of base64 or uuencoded lines: looked for in every message over 1 MiB
# (maildesk/base64runs.py).
BASE64_SHAPES: dict[str, Shape] = {
    "short lines between dashes": lambda n: "QUJD\n-\n" * (n // 7),
    "one long line that is almost base64": lambda n: "Q" * n + " \n",
    "lines ending in a lone CR": lambda n: "QUJD\r" * (n // 5),
    "long runs of short lines": lambda n: ("QQ==\n" * 1000 + "\n") * (n // 5001),
    "one long line that is almost uuencode": lambda n: "M!" * (n // 2) + "a\n",
    "one long line of what a header starts with": lambda n: "M" * n + "\n",
    "header-like lines, each no run's start": lambda n: "M:\n" * (n // 3),
    "uuencoded lines between boundary lines": lambda n: "M!\n--\n" * (n // 6),
}


@pytest.mark.parametrize("name", sorted(BASE64_SHAPES))
def test_the_run_scan_grows_linearly(name: str) -> None:
    ratio = growth(lambda text: list(long_runs(text.encode())), BASE64_SHAPES[name], 256_000)
    assert ratio < GROWTH_BOUND, f"{name}: time(8n)/time(n) = {ratio:.1f}"


# A signed mail's body, canonicalized for its DKIM body hash before any DNS lookup
# (maildesk/dkimbody.py): a stranger chooses the body and may add any signature.
DKIM_BODY_SHAPES: dict[str, Shape] = {
    "one line of spaces": lambda n: " " * n + "x\r\n",
    "tabs and spaces": lambda n: " \t" * (n // 2) + "x\r\n",
    "short lines of spaces": lambda n: ("  " * 400 + "x\r\n") * (n // 803),
}


@pytest.mark.parametrize("name", sorted(DKIM_BODY_SHAPES))
def test_the_dkim_body_hash_grows_linearly(name: str) -> None:
    def relaxed_hash(body: str) -> bytes:
        return dkimbody.body_hash(body.encode(), 0, True, hashlib.sha256)

    ratio = growth(relaxed_hash, DKIM_BODY_SHAPES[name], 16_000)
    assert ratio < GROWTH_BOUND, f"{name}: time(8n)/time(n) = {ratio:.1f}"


def _signed(folding: int) -> str:
    """A mail whose DKIM-Signature has `folding` bytes of folded whitespace in b=."""
    return (
        "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=evil.test; s=s1;\r\n"
        " h=from:subject; bh=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=; b=A"
        + "\r\n " * (folding // 3)
        + "!\r\nFrom: x@evil.test\r\nSubject: hi\r\n\r\nbody\r\n"
    )


def test_reading_a_dkim_signature_grows_linearly() -> None:
    """dkimpy's tag regular expressions are quadratic in a field's whitespace: a field
    that long is no signature maildesk checks (`mailauth.MAX_SIGNATURE_FIELD`)."""
    auth = MailAuth(TrustSettings(dns_servers=("127.0.0.1:9",), dns_timeout=0.1))

    def check(raw: str) -> object:
        return auth.check(raw.encode(), "x@evil.test", (), False)

    ratio = growth(check, _signed, 3_000)
    assert ratio < GROWTH_BOUND, f"time(8n)/time(n) = {ratio:.1f}"
    assert not check(_signed(30_000)).proven


def _naming(names: str, fields: int) -> bytes:
    """A mail of `fields` header fields and a signature whose h= is `names`: its body hash
    right, its b= anything (the fields are hashed before b= is read)."""
    body = b"hi\r\n"
    digest = dkimbody.body_hash(b"\r\n" + body, 2, True, hashlib.sha256)
    return (
        "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=evil.test; s=sel;\r\n"
        f" h=from:{names}; bh={base64.b64encode(digest).decode()}; b={'A' * 344}\r\n"
        "From: x@evil.test\r\nSubject: hi\r\n" + "a:\r\n" * fields + "\r\n" + body.decode()
    ).encode()


def test_a_signature_naming_many_fields_costs_little_more_than_an_ordinary_one(
    tmp_path: Path,
) -> None:
    """dkimpy scans the header block from the bottom for each distinct field h= names, with
    the sender's own key in DNS: 700 names over 60,000 fields (256 KB) cost 5.6 s of CPU for
    one signature (`mailauth.MAX_FIELD_SCANS`). A real signature still proves its mail."""
    key = make_key(tmp_path, "evil.test")
    with dns_server({key.record_name: key.record}) as address:
        auth = MailAuth(TrustSettings(dns_servers=(address,), dns_timeout=5.0))

        def cpu(raw: bytes) -> float:
            check = lambda _: auth.check(raw, "x@evil.test", (), False)  # noqa: E731
            return min(_cpu(check, "", 1) for _ in range(3))

        hostile = _naming(":".join(f"x{i}" for i in range(600)), 16_000)
        ratio = cpu(hostile) / cpu(_naming("subject", 16_000))
        assert ratio < 4, f"the signature naming 600 fields cost {ratio:.1f} times an ordinary one"
        many = _mail("hi").replace("Subject: hi\n", "Subject: hi\n" + "a: b\n" * 5_000)
        signed = key.sign(many.replace("alice@customer.test", "x@evil.test").encode())
        assert auth.check(signed, "x@evil.test", (), False).proven


def _returned(original: bytes) -> bytes:
    """Postfix's bounce of our mail with `original` returned in full after its report."""
    dsn = eml("bounce-postfix-dsn.eml").replace(b"{ORIGINAL_ID}", b"1.ack@example.test")
    boundary = b"--4dK7vQ2Wm9z1xyZ.1767603603/mx.customer.test--"
    part = b"--4dK7vQ2Wm9z1xyZ.1767603603/mx.customer.test\nContent-Type: text/plain\n\n"
    return dsn.replace(boundary, part + original + b"\n" + boundary)


def test_a_large_bounce_is_read_from_its_report() -> None:
    """The bounce detectors read a bounce's first 64 KB: its report comes first, so a
    bounce returning a 2 MB original still names the recipient that failed."""
    assert parse(_returned(b"x" * 2_000_000)).bounced_recipients == {"alice@customer.test"}


def test_hostile_lines_in_a_bounce_cost_little_more_than_in_a_persons_mail() -> None:
    """Anyone may write a MAILER-DAEMON From:, and the detectors' expressions cost
    about 2.5 s a megabyte of such lines when none of them recognizes the report
    (10 s for 4 MB, past the budget at 8 MB), so they read a bounce's first 64 KB
    only. 4 MB of such lines from MAILER-DAEMON cost a few times the same mail from
    a person, which no detector reads (it was 250 times)."""
    body = b"did not reach the following recipient(s):\n" + (b"," * 998 + b"\n") * 4200

    def cpu(sender: bytes) -> float:
        raw = b"From: " + sender + b"\nTo: support@example.test\nSubject: Undelivered\n\n" + body
        return min(_cpu(lambda text: parse(raw), "", 1) for _ in range(3))

    ratio = cpu(b"MAILER-DAEMON@mx.customer.test") / cpu(b"alice@customer.test")
    assert ratio < 16, f"the bounce cost {ratio:.1f} times the same mail from a person"


# Our MTA's Authentication-Results, with text the sender chose in it (mailauth.py).
AUTHENTICATION_RESULTS_SHAPES: dict[str, Shape] = {
    "nested comments": lambda n: "mx.example.test; dkim=pass " + "(" * n,
    "closed nested comments": lambda n: "mx; dkim=pass " + "(" * (n // 2) + ")" * (n // 2),
    "escapes in a comment": lambda n: "mx; dkim=pass (" + "\\(" * (n // 2),
    "unclosed quotes": lambda n: "mx; dkim=pass header.d=" + '"a' * (n // 2),
    "escapes in a quote": lambda n: 'mx; dkim=pass header.d="' + '\\"' * (n // 2),
    "many results": lambda n: "mx;" + " dkim=pass header.d=x.test;" * (n // 27),
    "many properties": lambda n: "mx; dkim=pass" + " header.d=x.test" * (n // 16),
    "one value of many pieces": lambda n: "mx; dkim=pass header.d=" + '"a"=' * (n // 4),
}


@pytest.mark.parametrize("name", sorted(AUTHENTICATION_RESULTS_SHAPES))
def test_reading_authentication_results_grows_linearly(name: str) -> None:
    ratio = growth(parse_authentication_results, AUTHENTICATION_RESULTS_SHAPES[name], 4_000)
    assert ratio < GROWTH_BOUND, f"{name}: time(8n)/time(n) = {ratio:.1f}"


def test_subject_of_encoded_words_reads_as_text() -> None:
    parsed = parse(_mail("=?utf-8?q?Tisk=C3=A1rna?= =?utf-8?q?_nefunguje?=").encode())
    assert parsed.subject == "Tiskárna nefunguje"
    assert parse(_mail("a\x01\x1fb").encode()).subject == "a b"


# -- link redaction --------------------------------------------------------------------------

# Every step of maildesk/redaction.py: the quick checks, the line joins, the decoders, the
# token pattern at each "eyJ", and base64 runs decoded from four places each.
_TAIL = ".aVt9kA." + "b" * 27  # a token's timestamp and signature
REDACTION_SHAPES: dict[str, Shape] = {
    "eyJ eyJ eyJ": lambda n: "eyJ" * (n // 3),
    "eyJ and dots": lambda n: "eyJa." * (n // 5),
    "tokens one character short": lambda n: ("eyJ" + "a" * 40 + _TAIL[:-1] + " ") * (n // 80),
    "a long payload": lambda n: "eyJ" + "a" * n + _TAIL,
    "token starts cut by line breaks": lambda n: "ey\n> J" * (n // 6),
    "J at every line's start": lambda n: "e\n>J" * (n // 4),
    "soft breaks": lambda n: "eyJ" + "=\n" * (n // 2),
    "a line of quote markers": lambda n: "eyJ\n" + ">" * n,
    "line breaks and markers": lambda n: "eyJ" + "\r\n> " * (n // 4),
    "percent escapes": lambda n: "eyJ " + "%25" * (n // 3) + "2F",
    "quoted-printable escapes": lambda n: "eyJ " + "=3D" * (n // 3),
    "proofpoint v2 prefixes": lambda n: "eyJ " + "urldefense.proofpoint.com/v2/url?u=" * (n // 35),
    "proofpoint v3 prefixes": lambda n: "eyJ " + "urldefense.com/v3/__" * (n // 20),
    "proofpoint v3 stars": lambda n: (
        "urldefense.com/v3/__" + "**A" * (n // 7) + "__;" + "JSUl" * (n // 7)
    ),
    "one base64 run": lambda n: "A" * n,
    "base64 runs": lambda n: ("QUJD" * 12 + " ") * (n // 49),
    "base64 of eyJ": lambda n: "ZXlK" * (n // 4),
    "links with tokens": lambda n: (
        ("https://h.test/account/set-password?token=eyJ" + "a" * 40 + _TAIL + " ") * (n // 120)
    ),
}


@pytest.mark.parametrize("n", [2_000, 32_000])
@pytest.mark.parametrize("name", sorted(REDACTION_SHAPES))
def test_link_redaction_grows_linearly(name: str, n: int) -> None:
    ratio = growth(redact_links, REDACTION_SHAPES[name], n)
    assert ratio < GROWTH_BOUND, f"{name}: time(8n)/time(n) = {ratio:.1f} at n={n}"


def test_link_redaction_of_hostile_shapes() -> None:
    token = "eyJ" + "a" * 40 + _TAIL
    assert redact_links("eyJ" * 10 + token) == "…"  # from the run's first "eyJ"
    assert "b" * 27 not in redact_links("eyJ" * 1000 + token)  # from one 256 before the dot
    assert redact_links(token[:-1]) == token[:-1]
    assert redact_links("eyJ" + "a" * 300 + _TAIL) == "eyJ" + "a" * 300 + _TAIL  # not ours
    assert redact_links("x ey\n> J" + token[3:] + " y") == "x … y"
    assert redact_links("A" * 5000) == "A" * 5000


# -- end to end ------------------------------------------------------------------------------


def _html_mail(html: str, subject: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Mallory <mallory@customer.test>"
    msg["To"] = "support@example.test"
    msg["Subject"] = subject
    msg.set_content(html, subtype="html", cte="base64")
    return msg.as_bytes(policy=email.policy.SMTP)


def test_hostile_html_mail_does_not_stall_the_mail_behind_it(daemon: RunningDaemon) -> None:
    """1 MB of HTML built from the shapes that were quadratic or cubic, then an ordinary
    mail: both become tickets in about the time an ordinary 1 MB mail takes in this run."""
    size = 1 << 20
    services = daemon.services
    log = "".join(f"line {i} of the printer log: paper jam in tray 2\n" for i in range(size // 45))
    started = time.monotonic()
    daemon.send(make_mail(subject="Printer log", body=log))
    wait_for(lambda: len(tickets(services)) == 1, 120, "the ordinary 1 MB mail's ticket")
    ordinary = time.monotonic() - started

    part = size // 4
    hostile = (
        "<p>"
        + "1 odesílatel " * (part // 13)
        + "</p>"  # the cubic reply regex
        + "<div>" * (part // 5)  # the stack searches of HTML5 parsers
        + "<p>"
        + "a" * (part // 2)
        + "!</p>"  # the cubic name regex
        + "<a" * (part // 2)  # the stdlib HTMLParser's re-scan
    )
    started = time.monotonic()
    daemon.send(_html_mail(hostile, "Mallory's mail"), sender="mallory@customer.test")
    daemon.send(make_mail(subject="Printer broken", body="The printer prints blank pages."))
    # Deadline relative to the ordinary mail: the old code needed over an hour here.
    wait_for(lambda: len(tickets(services)) == 3, max(60, 30 * ordinary), "both tickets")
    both = time.monotonic() - started

    subjects = {t["subject"]: t["number"] for t in tickets(services)}
    assert set(subjects) == {"Printer log", "Mallory's mail", "Printer broken"}
    text = ticket(services, subjects["Mallory's mail"])["messages"][0]["body_text"]
    assert text.startswith("1 odesílatel 1 odesílatel")
    assert "<div>" not in text
    # Two mails, one of them as big as the ordinary one: a few times its time, not hours.
    assert both < 6 * ordinary, f"hostile + next: {both:.2f} s, ordinary 1 MB: {ordinary:.2f} s"
