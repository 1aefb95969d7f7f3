"""The pre-parse guard: each limit refuses with a reason naming it; real mail passes; and the
MIME levels and parts it counts are never fewer than those Python's parser then builds."""

from __future__ import annotations

import email
import sysconfig
from email.message import Message
from pathlib import Path

import pytest

from maildesk.inbound.guard import (
    MAX_MIME_FIELD_BYTES,
    MAX_PART_HEADER_LINES,
    HostileInput,
    Limits,
    check,
)

CORPUS = sorted((Path(sysconfig.get_paths()["stdlib"]) / "test/test_email/data").glob("msg_*.txt"))
LIMITS = Limits()


def refused(raw: bytes, limits: Limits = LIMITS) -> str:
    with pytest.raises(HostileInput) as info:
        check(raw, limits)
    assert str(info.value) == info.value.reason
    return info.value.reason


def nest(
    depth: int, ctype: str = 'multipart/mixed; boundary="{b}"', nl: str = "\n", tag: str = "b"
) -> bytes:
    """`depth` multiparts, each the only part of the one around it, around one text part;
    level i has the boundary tag + i, given to `ctype` as {b} (and i as {i})."""
    lines = ["Subject: nested", "From: a@example.test"]
    for i in range(depth):
        lines += ["Content-Type: " + ctype.format(b=f"{tag}{i}", i=i), "", f"--{tag}{i}"]
    lines += ["Content-Type: text/plain", "", "leaf"]
    lines += [f"--{tag}{i}--" for i in reversed(range(depth))]
    return (nl.join(lines) + nl).encode()


def many_parts(count: int) -> bytes:
    head = 'Subject: parts\nContent-Type: multipart/mixed; boundary="b"\n\n'
    return (head + "--b\nContent-Type: text/plain\n\nx\n" * count + "--b--\n").encode()


def depth(msg: Message) -> int:
    """Nested containers as the parser built them: multipart with a boundary, message/*."""
    ctype = msg.get_content_type()
    own = ctype.startswith("message/") or (
        ctype.startswith("multipart/") and msg.get_boundary() is not None
    )
    kids = msg.get_payload() if msg.is_multipart() else []
    return own + max((depth(kid) for kid in kids if isinstance(kid, Message)), default=0)


def parts(msg: Message) -> int:
    """Parts of multiparts, and the header blocks of message/delivery-status bodies."""
    return sum(
        len(p.get_payload())
        for p in msg.walk()
        if p.is_multipart()
        and (
            p.get_content_maintype() == "multipart"
            or p.get_content_type() == "message/delivery-status"
        )
    )


def assert_counts_at_least_parser(raw: bytes) -> Message:
    """The guard counts at least the parser's levels and parts: one fewer refuses."""
    msg = email.message_from_bytes(raw)
    levels, count = depth(msg), parts(msg)
    if levels:
        limits = Limits(max_mime_depth=levels - 1, max_mime_parts=10**9)
        assert "MIME nesting depth" in refused(raw, limits)
    if count:
        limits = Limits(max_mime_depth=10**9, max_mime_parts=count - 1)
        assert "MIME part count" in refused(raw, limits)
    return msg


# -- each rule, refused with a reason naming its limit ------------------------------------


def test_message_size() -> None:
    raw = b"Subject: x\n\n" + b"y" * 1000
    assert refused(raw, Limits(max_message_size=1000)) == "message is 1012 bytes (limit 1000)"
    check(raw, Limits(max_message_size=1012))


def test_header_block() -> None:
    block = b"\n".join(b"X-Filler-%06d: %s" % (i, b"v" * 60) for i in range(4000))
    assert refused(block + b"\n\nbody\n") == f"header block is {len(block)} bytes (limit 262144)"


def test_header_field_counts_its_continuation_lines() -> None:
    folded = b"Subject: " + b"\n ".join([b"word" * 20] * 500) + b"\nFrom: a@example.test\n\nhi\n"
    assert len(folded) < LIMITS.max_header_bytes
    reason = refused(folded)
    assert reason.startswith("header field Subject is ") and reason.endswith("(limit 32768)")
    assert refused(folded.replace(b"\n", b"\r\n")).startswith("header field Subject is ")
    # Unfolded length is measured, not the line count: 32768 bytes exactly still passes.
    check(b"Subject: " + b"\n x" * ((32768 - 9) // 2) + b"\n\nhi\n", LIMITS)


def test_header_field_cap_applies_to_nested_parts() -> None:
    raw = many_parts(1).replace(b"Content-Type: text/plain", b"X-Big: " + b"a" * 40000)
    assert refused(raw) == "header field X-Big is 40007 bytes unfolded (limit 32768)"


def fields_below_the_top(raw: bytes) -> int:
    """The header fields the parser builds for the parts and forwarded messages."""
    msg = email.message_from_bytes(raw)
    return sum(len(part) for part in msg.walk() if part is not msg)


def test_header_lines_of_the_parts_are_capped_in_all() -> None:
    """No byte cap holds a part's header block, and the parser reads it a line at a time
    while mail-parser scans its fields at each lookup: 8 MB of `X-A: b` lines in one part
    cost 3 s of CPU and 250 MB, 25 MB would cost three times that."""
    lines = b"X-A: b\n" * (MAX_PART_HEADER_LINES - 1) + b"Content-Type: text/plain\n"
    one_part = many_parts(1).replace(b"Content-Type: text/plain\n", lines)
    assert fields_below_the_top(one_part) == MAX_PART_HEADER_LINES
    check(one_part, LIMITS)
    longer = one_part.replace(b"X-A", b"X-A: b\nX-A", 1)
    assert refused(longer) == "header lines of the parts reach 20001 (limit 20000)"
    hostile = many_parts(1).replace(b"\n\nx", b"\n" + b"X-A: b\n" * 1_000_000 + b"\nx")
    assert refused(hostile) == "header lines of the parts reach 1000001 (limit 20000)"


def test_header_lines_of_the_parts_count_together_folded_lines_too() -> None:
    per_part = MAX_PART_HEADER_LINES // 400
    folded = b"X-A: b\n" + b" c\n" * (per_part - 2) + b"Content-Type: text/plain\n"
    spread = many_parts(400).replace(b"Content-Type: text/plain\n", folded)
    check(spread, LIMITS)
    over = spread.replace(b"X-A: b\n", b"X-A: b\nX-B: b\n", 1)
    assert refused(over) == "header lines of the parts reach 20001 (limit 20000)"
    # A forwarded message's header block is read by the parser as one more.
    forwarded = (
        b"From: a@example.test\nContent-Type: message/rfc822\n\n"
        + b"Received: x\n" * MAX_PART_HEADER_LINES
        + b"Subject: fwd\n\nhi\n"
    )
    assert refused(forwarded) == "header lines of the parts reach 20001 (limit 20000)"


def test_encoded_word_subject_of_600_kb() -> None:
    subject = b"Subject: " + b" ".join([b"=?UTF-8?Q?caf=C3=A9?="] * 30000)
    raw = subject + b"\nFrom: a@example.test\n\nbody\n"
    assert len(subject) > 600_000
    block = len(subject) + len(b"\nFrom: a@example.test")
    assert refused(raw) == f"header block is {block} bytes (limit 262144)"
    # Alone in a roomier block it still breaks the field cap.
    roomy = Limits(max_header_bytes=1024 * 1024)
    assert (
        refused(raw, roomy)
        == f"header field Subject is {len(subject)} bytes unfolded (limit 32768)"
    )


def test_bare_cr_is_always_refused() -> None:
    assert refused(b"Subject: x\r\n\r\nbody\rmore\r\n") == "bare CR (not followed by LF) at byte 18"
    assert refused(b"Subject: x\n\nbody\rmore\n").startswith("bare CR")


def test_crlf_message_with_one_bare_lf_inside_a_line() -> None:
    raw = b"Subject: x\r\nFrom: a@example.test\r\n\r\nline one\nBcc: smuggled\r\nend\r\n"
    assert refused(raw) == "mixed line endings: 5 CRLF and 1 bare LF"


def test_one_line_ending_throughout_passes() -> None:
    lf = b"Subject: x\nFrom: a@example.test\n\nline one\nline two\n"
    check(lf, LIMITS)
    check(lf.replace(b"\n", b"\r\n"), LIMITS)
    check(b"no line break at all", LIMITS)


def test_3000_deep_nesting() -> None:
    assert refused(nest(3000)) == "MIME nesting depth reaches 21 (limit 20)"
    assert refused(nest(3000, nl="\r\n")) == "MIME nesting depth reaches 21 (limit 20)"


def test_100000_parts() -> None:
    assert refused(many_parts(100_000)) == "MIME part count reaches 501 (limit 500)"


def test_caps_are_exact() -> None:
    check(nest(20), LIMITS)
    check(many_parts(500), LIMITS)
    assert refused(nest(21)) == "MIME nesting depth reaches 21 (limit 20)"
    assert refused(many_parts(501)) == "MIME part count reaches 501 (limit 500)"


def test_just_under_the_caps_the_parser_works() -> None:
    raw = nest(20).replace(b"leaf\n", b"leaf\n" + b"--b19\n\nx\n" * 480)  # 500 parts
    fields = b"".join(b"X-Long-%d: %s\n" % (i, b"\n x" * 16000) for i in range(5))  # 32 KB each
    raw = raw.replace(b"Subject: nested\n", b"Subject: nested\n" + fields)
    assert LIMITS.max_header_bytes - 30_000 < raw.index(b"\n\n") < LIMITS.max_header_bytes
    check(raw, LIMITS)
    msg = email.message_from_bytes(raw)  # no RecursionError, and as deep and wide as counted
    assert (depth(msg), parts(msg)) == (20, 500)


# -- real mail passes, and the guard counts what the parser builds -----------------------


def test_the_corpus_is_there() -> None:
    assert len(CORPUS) >= 40, "CPython's test_email data is missing"


@pytest.mark.parametrize("path", CORPUS, ids=[p.name for p in CORPUS])
def test_real_mail_passes(path: Path) -> None:
    raw = path.read_bytes()
    check(raw, LIMITS)
    msg = assert_counts_at_least_parser(raw)
    # No over-count either: at exactly the parser's numbers the guard accepts.
    check(raw, Limits(max_mime_depth=depth(msg), max_mime_parts=parts(msg)))


def test_malformed_structure_is_not_refused() -> None:
    check(b"Subject: x\nContent-Type: multipart/mixed\n\nno boundary parameter\n", LIMITS)
    check(
        b'Subject: x\nContent-Type: multipart/mixed; boundary="b"\n\n--b\n\nunterminated\n', LIMITS
    )
    check(
        b'Subject: x\nContent-Type: multipart/mixed; boundary="b"\n\nno delimiter at all\n', LIMITS
    )
    check(b"Subject: x\nno blank line, this line is body\n", LIMITS)


@pytest.mark.parametrize(
    "ctype",
    [
        "multipart/mixed; boundary={b}",
        'MULTIPART/Mixed; BOUNDARY="{b}"',
        'multipart/mixed;\n\tboundary="{b}"',
        'multipart/mixed; foo="x;boundary=zz"; boundary="{b}"',
        'multipart/mixed; boundary="\\"{b}\\""',  # compat32 unquotes twice
        'multipart/mixed; boundary="{b}"; boundary="other"',
        'multipart/mixed; boundary*1="{i}"; boundary*0="b"',  # RFC 2231 sections, sorted
        "multipart/mixed; boundary*=us-ascii'en'{b}",
        "multipart/mixed; boundary*0*=us-ascii''%62; boundary*1={i}",
    ],
)
def test_boundary_spellings_the_parser_reads(ctype: str) -> None:
    raw = nest(25, ctype)
    assert depth(email.message_from_bytes(raw)) == 25
    assert refused(raw) == "MIME nesting depth reaches 21 (limit 20)"


def test_message_rfc822_parts_count_as_levels() -> None:
    inner = nest(12, tag="c").decode()
    raw = nest(10).replace(
        b"Content-Type: text/plain\n\nleaf", f"Content-Type: message/rfc822\n\n{inner}".encode()
    )
    assert depth(email.message_from_bytes(raw)) == 23
    assert refused(raw) == "MIME nesting depth reaches 21 (limit 20)"


def test_digest_parts_default_to_message_rfc822() -> None:
    # A digest part without headers is a message/rfc822: its body is a message of its own.
    level = "Content-Type: multipart/digest; boundary=d{i}\n\n--d{i}\n\n"
    raw = ("Subject: digest\n" + "".join(level.format(i=i) for i in range(12)) + "x\n").encode()
    assert depth(email.message_from_bytes(raw)) == 24
    assert refused(raw) == "MIME nesting depth reaches 21 (limit 20)"


def test_repeated_boundary_lines_are_one_delimiter_even_a_close_one() -> None:
    # The parser swallows boundary lines that follow a delimiter, `--b--` included, so the
    # nesting after `--b--` is a part, not the epilogue.
    raw = nest(1).replace(b"--b0\n", b"--b0\n--b0--\n" + nest(30).split(b"\n", 2)[2], 1)
    assert_counts_at_least_parser(raw)
    assert refused(raw).startswith("MIME nesting depth")


def test_outer_boundary_wins_over_an_inner_one_of_the_same_name() -> None:
    raw = (
        b'Subject: x\nContent-Type: multipart/mixed; boundary="a"\n\n--a\n'
        b'Content-Type: multipart/alternative; boundary="a"\n\n--a\n'
        b"Content-Type: text/plain\n\none\n--a\nContent-Type: text/plain\n\ntwo\n--a--\n"
    )
    assert_counts_at_least_parser(raw)
    check(raw, Limits(max_mime_depth=2, max_mime_parts=3))


def test_boundary_line_of_an_outer_level_is_the_outer_one() -> None:
    # `--x--` is the outer delimiter (boundary `x--`), not the close of the inner `x`: the part
    # after it is parsed, and the nesting in it counts.
    head = 'Subject: x\nContent-Type: multipart/mixed; boundary="x--"\n\n--x--\n'
    inner = 'Content-Type: multipart/mixed; boundary="x"\n\n--x\n\ninner\n--x--\n'
    raw = (head + inner).encode() + nest(25, tag="c").split(b"\n", 2)[2] + b"--x----\n"
    assert depth(email.message_from_bytes(raw)) == 26
    assert refused(raw) == "MIME nesting depth reaches 21 (limit 20)"


def test_boundary_lines_end_header_blocks_even_when_they_look_like_headers() -> None:
    head = b'Subject: x\nContent-Type: multipart/mixed; boundary="a:b"\n\n'
    raw = head + b"--a:b\nX-Part: no blank line follows\n" * 30 + b"--a:b--\n"
    assert parts(assert_counts_at_least_parser(raw)) == 30


def test_delivery_status_blocks_are_parsed_as_messages() -> None:
    # Each header block of a DSN body is a message; without blank lines one can nest.
    dsn = "Content-Type: message/delivery-status\n\nReporting-MTA: dns; x\n\n"
    deep = "".join(f"Content-Type: multipart/mixed; boundary=d{i}\n--d{i}\n" for i in range(25))
    raw = nest(1).replace(b"Content-Type: text/plain\n\nleaf", (dsn + deep + "x").encode())
    assert depth(email.message_from_bytes(raw)) >= 25
    assert refused(raw) == "MIME nesting depth reaches 21 (limit 20)"
    blank_lines = nest(1).replace(b"Content-Type: text/plain\n\nleaf", (dsn + "\n" * 600).encode())
    assert refused(blank_lines) == "MIME part count reaches 501 (limit 500)"


def test_mail_parser_epilogue_is_walked_too() -> None:
    # mail-parser re-parses the root epilogue after `--R` as a message when a part lacks its
    # start boundary, so nesting hidden there is counted as a fresh message.
    hidden = nest(30).decode()
    raw = (
        'Subject: x\nContent-Type: multipart/mixed; boundary="R"\n\n--R\n'
        'Content-Type: multipart/mixed; boundary="missing"\n\nno start boundary\n'
        f"--R--\n--R\n{hidden}--R--\n"
    ).encode()
    assert refused(raw) == "MIME nesting depth reaches 21 (limit 20)"


def test_too_many_content_type_parameters_are_refused() -> None:
    """email.message._parseparam is quadratic in the ';' of one value."""
    params = "; ".join(f"a{i}=b" for i in range(150))
    raw = (
        "From: a@example.test\r\nContent-Type: multipart/mixed; boundary=x; "
        f"{params}\r\n\r\n--x\r\n\r\nhi\r\n--x--\r\n"
    ).encode()
    with pytest.raises(HostileInput, match=r"Content-Type has 151 parameters \(limit 100\)"):
        check(raw, Limits())
    disposition = (
        "From: a@example.test\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n"
        f"Content-Disposition: attachment; {params}\r\n\r\nhi\r\n--x--\r\n"
    ).encode()
    with pytest.raises(HostileInput, match="Content-Disposition has"):
        check(disposition, Limits())


def named_parts(count: int, filename: str) -> bytes:
    part = (
        "--b\nContent-Type: application/octet-stream\n"
        f"Content-Disposition: attachment; filename={filename}\n\nQUJD\n"
    )
    head = 'From: a@example.test\nContent-Type: multipart/mixed; boundary="b"\n\n'
    return (head + part * count + "--b--\n").encode()


def test_content_type_and_disposition_fields_are_capped_in_all() -> None:
    """mail-parser decodes a part's filename (encoded words, RFC 2231 %-escapes) a few times,
    in Python: 490 filenames of 30 KB of encoded words cost 5.8 s, of %-escapes 3.5 s."""
    words = '"' + "=?utf-8?q?a=C3=A1?= " * 1_500 + '"'
    reason = refused(named_parts(490, words))
    assert reason.startswith("Content-Type and Content-Disposition fields reach ")
    assert reason.endswith(f" bytes (limit {MAX_MIME_FIELD_BYTES})")
    escapes = "; ".join(f"filename*{i}*=" + "%C3%A1" * 50 for i in range(99))
    assert refused(named_parts(490, escapes)).startswith("Content-Type and Content-Disposition")
    # Long real names pass: 500 attachments named in 1 KB each.
    check(named_parts(499, '"' + "=?utf-8?q?P=C5=99=C3=ADloha?= " * 34 + '"'), LIMITS)


def forwarded(levels: int, body: bytes) -> bytes:
    """A mail forwarding as an attachment a mail that forwards one, and so on, `levels` deep."""
    mail = b"From: a@example.test\nSubject: first\n\n" + body
    attached = b"Content-Type: message/rfc822\nContent-Disposition: attachment\n\n"
    for _ in range(levels):
        mail = b"From: a@example.test\n" + attached + mail
    return mail


def test_containers_marked_as_attachments_are_flattened_a_bounded_number_of_times() -> None:
    """mail-parser flattens each container marked as an attachment to text, the ones inside it
    included: 19 forwarded mails, each inside the one before, in 16 MB cost 8.9 s and 392 MB.
    Each container's bytes count once for each such container it is in."""
    limits = Limits(max_message_size=100_000)
    body = b"printer log, line 1\n" * 1_450
    assert 6 * len(body) < 2 * limits.max_message_size < 7 * len(body)
    check(forwarded(6, body), limits)
    reason = refused(forwarded(7, body), limits)
    assert reason.startswith("containers marked as attachments hold ")
    assert reason.endswith(" bytes, counted once for each one they are in (limit 200000)")
    # Side by side, each forwarded mail counts once.
    part = b"--b\nContent-Type: message/rfc822\nContent-Disposition: attachment\n\n"
    mail = b"Subject: x\n\n" + body
    side = b'Content-Type: multipart/mixed; boundary="b"\n\n' + (part + mail) * 3 + b"--b--\n"
    check(side, limits)
