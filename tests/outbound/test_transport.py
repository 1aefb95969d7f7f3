"""Transports: Maildir delivers once per key; SMTP sends the explicit envelope and
classifies failures, checked against a real aiosmtpd server on a loopback port."""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from maildesk.outbound.transport import (
    DATA_SLICE,
    MaildirTransport,
    PermanentFailure,
    SmtpTransport,
    TemporaryFailure,
    data_lines,
    maildir_name,
    open_transport,
)
from tests.smtp_sink import SmtpSink, closed_port

MESSAGE = (
    b"From: Support <support@example.test>\r\n"
    b"To: alice@example.org\r\n"
    b"Bcc: injected@evil.test\r\n"
    b"Subject: [#42] Hello\r\n"
    b"Message-ID: <42.abc@example.test>\r\n"
    b"\r\n"
    b"Hi Alice,\r\n"
    b".a line starting with a dot\r\n"
    b"\r\n"
)

needs_openssl = pytest.mark.skipif(not shutil.which("openssl"), reason="needs openssl")


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as running:
        yield running


def smtp_to(sink: SmtpSink, **kwargs: Any) -> SmtpTransport:
    return SmtpTransport(
        "127.0.0.1", sink.port, local_hostname="maildesk.test", timeout=5, **kwargs
    )


# --- Maildir -----------------------------------------------------------------------


def test_maildir_writes_the_bytes_unchanged_into_new(tmp_path: Path) -> None:
    transport = open_transport(f"maildir:{tmp_path / 'outbox'}", "maildesk.test")
    transport.send("42.md-abc", "support@example.test", ["alice@example.org"], MESSAGE)
    root = tmp_path / "outbox"
    files = list((root / "new").iterdir())
    assert [f.name for f in files] == ["42.md-abc"]
    assert files[0].read_bytes() == MESSAGE
    assert not list((root / "tmp").iterdir()) and not list((root / "cur").iterdir())


HEAD = b"DKIM-Signature: v=1; a=rsa-sha256; d=example.test;\r\n b=c2lnbmVk\r\n"


def test_both_transports_put_a_head_in_front_of_the_stored_bytes(
    tmp_path: Path, sink: SmtpSink
) -> None:
    """A signature added at sending goes first, the stored bytes after it, as one mail
    (and SIZE counts both)."""
    maildir = open_transport(f"maildir:{tmp_path / 'outbox'}", "maildesk.test")
    maildir.send("7.md-x", "support@example.test", ["alice@example.org"], MESSAGE, head=HEAD)
    assert (tmp_path / "outbox" / "new" / "7.md-x").read_bytes() == HEAD + MESSAGE
    smtp = smtp_to(sink)
    smtp.send("7.md-x", "support@example.test", ["alice@example.org"], b".dot\r\n", head=HEAD)
    smtp.close()
    [got] = sink.wait_for(1)
    assert got.content == HEAD + b".dot\r\n"


def test_maildir_same_key_twice_leaves_one_file(tmp_path: Path) -> None:
    transport = MaildirTransport(tmp_path)
    transport.send("7.md-x", "", ["a@example.org"], MESSAGE)
    transport.send("7.md-x", "", ["a@example.org"], MESSAGE)
    assert len(list((tmp_path / "new").iterdir())) == 1


def test_maildir_same_key_after_a_reader_moved_it_to_cur(tmp_path: Path) -> None:
    transport = MaildirTransport(tmp_path)
    transport.send("7.md-x", "", ["a@example.org"], MESSAGE)
    (tmp_path / "new" / "7.md-x").rename(tmp_path / "cur" / "7.md-x:2,S")
    transport.send("7.md-x", "", ["a@example.org"], MESSAGE)
    assert not list((tmp_path / "new").iterdir())
    assert [f.name for f in (tmp_path / "cur").iterdir()] == ["7.md-x:2,S"]


def test_maildir_sees_a_move_to_cur_after_it_listed_cur(tmp_path: Path) -> None:
    """cur/ is listed once and listed again only when it changed: a message a reader
    moved there after the listing is still found, not written a second time."""
    transport = MaildirTransport(tmp_path)
    past = time.time() - 3600
    os.utime(tmp_path / "cur", (past, past))  # a folder nobody touched for an hour
    transport.send("1.md-x", "", ["a@example.org"], MESSAGE)
    transport.send("2.md-x", "", ["a@example.org"], MESSAGE)  # cur/ as listed before
    (tmp_path / "new" / "2.md-x").rename(tmp_path / "cur" / "2.md-x:2,S")
    transport.send("2.md-x", "", ["a@example.org"], MESSAGE)
    assert [f.name for f in (tmp_path / "new").iterdir()] == ["1.md-x"]
    assert [f.name for f in (tmp_path / "cur").iterdir()] == ["2.md-x:2,S"]


def test_maildir_names_are_safe_and_distinct(tmp_path: Path) -> None:
    keys = ["../escape", ".hidden", "a:2,S", "a/b", "a_b", "a=2Fb", "=", "ü", "x" * 300, "x" * 301]
    names = [maildir_name(k) for k in keys]
    assert len(set(names)) == len(keys)
    for name in names:
        assert "/" not in name and ":" not in name and not name.startswith(".")
        assert len(name.encode()) <= 255
    transport = MaildirTransport(tmp_path / "box")
    for key in keys:
        transport.send(key, "", ["a@example.org"], MESSAGE)
    assert sorted(f.name for f in (tmp_path / "box" / "new").iterdir()) == sorted(names)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["box"]  # nothing escaped


def test_maildir_names_follow_their_rule_byte_by_byte() -> None:
    """The rule written out, byte by byte: a name written before an upgrade is the name
    the new code looks for, so a retry after the upgrade still finds it delivered."""
    safe = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")

    def by_rule(key: str) -> str:
        name = "".join(chr(b) if b in safe else f"={b:02X}" for b in key.encode("utf-8"))
        name = "=2E" + name[1:] if name.startswith(".") else name
        if len(name) > 200:
            name = name[:150] + "=" + hashlib.sha256(key.encode("utf-8")).hexdigest()
        return name

    rng = random.Random(5)
    pieces = ["a", "Z", "9", "-", "_", ".", "=", "@", ":", "/", " ", "\x00", "ü", "ř", "😀", "md.x"]
    keys = ["".join(rng.choices(pieces, k=rng.randint(1, 90))) for _ in range(5000)]
    keys += ["12.md.k3y@example.test", "." * 250]
    assert [maildir_name(k) for k in keys] == [by_rule(k) for k in keys]


def test_maildir_path_must_be_absolute() -> None:
    with pytest.raises(ValueError, match="absolute"):
        open_transport("maildir:var/outbox", "maildesk.test")


# --- SMTP: what is sent ------------------------------------------------------------


def test_smtp_sends_the_explicit_envelope_not_the_headers(sink: SmtpSink) -> None:
    transport = open_transport(sink.url, "maildesk.test")
    try:
        # hidden@ is a Bcc-style recipient absent from the headers; the Bcc: header's
        # injected@ must not become a recipient.
        transport.send("1", "bounces@example.test", ["alice@example.org", "hidden@x.test"], MESSAGE)
    finally:
        transport.close()
    [got] = sink.wait_for(1)
    assert got.mail_from == "bounces@example.test"
    assert got.rcpt_tos == ("alice@example.org", "hidden@x.test")
    assert got.content == MESSAGE


def test_smtp_null_sender(sink: SmtpSink) -> None:
    transport = smtp_to(sink)
    transport.send("1", "", ["alice@example.org"], MESSAGE)
    transport.close()
    assert sink.wait_for(1)[0].mail_from == ""


def test_smtp_bare_line_feeds_go_out_as_crlf(sink: SmtpSink) -> None:
    transport = smtp_to(sink)
    transport.send("1", "", ["alice@example.org"], b"Subject: x\n\nline\n.\nMAIL FROM:<x@y>\r")
    transport.close()
    [got] = sink.wait_for(1)
    assert got.content == b"Subject: x\r\n\r\nline\r\n.\r\nMAIL FROM:<x@y>\r\n"


def test_smtp_sends_a_large_message_whole_in_slices(sink: SmtpSink) -> None:
    """DATA goes out a slice at a time: the relay still gets every line, dots and
    line ends as they should be, across the slices' edges."""
    rng = random.Random(7)
    lines = [b"." * rng.randrange(0, 3) + bytes(rng.choices(b"ab .", k=70)) for _ in range(60_000)]
    body = b"\n".join(lines)  # bare LFs: they go out as CRLF
    raw = b"Subject: big\r\n\r\n" + body
    transport = smtp_to(sink)
    transport.send("1", "", ["alice@example.org"], raw)
    transport.close()
    [got] = sink.wait_for(1)
    assert len(raw) > 4 * DATA_SLICE
    assert got.content == b"Subject: big\r\n\r\n" + b"\r\n".join(lines) + b"\r\n"


def test_data_lines_is_smtps_data_transform_in_any_slices() -> None:
    def whole(data: bytes) -> bytes:  # RFC 5321 4.5.2, over line ends made CRLF
        lines = re.split(rb"\r\n|\r|\n", data)
        if lines[-1] == b"":
            lines.pop()
        return b"".join(
            (b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines
        )

    rng = random.Random(3)
    for _ in range(5000):
        data = b"".join(rng.choices([b"a", b".", b"\r", b"\n", b"\r\n", b" "], k=rng.randrange(40)))
        size = rng.choice([1, 2, 3, 5, 8, DATA_SLICE])
        assert b"".join(data_lines(data, size)) == (whole(data) or b"\r\n"), (data, size)


@pytest.mark.parametrize("bad", ["a@b>\r\nRCPT TO:<evil@x.test", "alice@example.org)<bob@x.test>"])
def test_smtp_refuses_a_malformed_envelope_address(sink: SmtpSink, bad: str) -> None:
    transport = smtp_to(sink)
    with pytest.raises(PermanentFailure, match="unusable envelope address"):
        transport.send("1", "", [bad], MESSAGE)
    transport.close()
    assert sink.messages == []


# --- SMTP: failures ----------------------------------------------------------------


def test_smtp_451_is_temporary_and_the_connection_stays_usable(sink: SmtpSink) -> None:
    transport = smtp_to(sink)
    sink.reply = "451 4.3.0 try later"
    with pytest.raises(TemporaryFailure) as caught:
        transport.send("1", "", ["alice@example.org"], MESSAGE)
    assert str(caught.value) == "451 4.3.0 try later"
    sink.reply = None
    transport.send("1", "", ["alice@example.org"], MESSAGE)
    transport.close()
    assert len(sink.wait_for(1)) == 1 and sink.sessions == 1


def test_smtp_550_is_permanent(sink: SmtpSink) -> None:
    sink.reply = "550 5.7.1 rejected as spam"
    transport = smtp_to(sink)
    with pytest.raises(PermanentFailure, match="^550 5.7.1 rejected as spam$"):
        transport.send("1", "", ["alice@example.org"], MESSAGE)
    transport.close()


def test_smtp_every_recipient_refused_is_permanent(sink: SmtpSink) -> None:
    sink.rcpt_replies = {"a@x.test": "550 5.1.1 no such user", "b@x.test": "553 5.1.3 bad"}
    transport = smtp_to(sink)
    with pytest.raises(PermanentFailure, match="all recipients refused: a@x.test: 550"):
        transport.send("1", "", ["a@x.test", "b@x.test"], MESSAGE)
    transport.close()
    assert sink.messages == []


def test_smtp_partly_refused_5xx_delivers_to_the_rest_and_names_the_refused(
    sink: SmtpSink,
) -> None:
    sink.rcpt_replies = {"gone@x.test": "550 5.1.1 no such user"}
    transport = smtp_to(sink)
    with pytest.raises(PermanentFailure) as caught:
        transport.send("1", "", ["alice@example.org", "gone@x.test"], MESSAGE)
    transport.close()
    assert "gone@x.test: 550 5.1.1 no such user" in str(caught.value)
    assert "alice" not in str(caught.value)
    assert [m.rcpt_tos for m in sink.wait_for(1)] == [("alice@example.org",)]


def test_smtp_any_4xx_recipient_is_temporary_and_nobody_gets_a_copy(sink: SmtpSink) -> None:
    # Otherwise the retry of the whole message would duplicate it for alice.
    sink.rcpt_replies = {"slow@x.test": "450 4.2.0 greylisted", "gone@x.test": "550 5.1.1 no"}
    transport = smtp_to(sink)
    with pytest.raises(TemporaryFailure, match="slow@x.test: 450 4.2.0 greylisted"):
        transport.send("1", "", ["alice@example.org", "slow@x.test", "gone@x.test"], MESSAGE)
    transport.close()
    assert sink.messages == []


def test_smtp_connection_refused_is_temporary() -> None:
    with closed_port() as port:
        transport = SmtpTransport("127.0.0.1", port, timeout=5)
        with pytest.raises(TemporaryFailure, match="refused"):
            transport.send("1", "", ["alice@example.org"], MESSAGE)


def test_smtp_silent_server_times_out_as_temporary() -> None:
    with socket.socket() as listener:  # accepts the TCP handshake, never says a word
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        transport = SmtpTransport("127.0.0.1", listener.getsockname()[1], timeout=0.3)
        with pytest.raises(TemporaryFailure, match="timed out"):
            transport.send("1", "", ["alice@example.org"], MESSAGE)


# --- SMTP: the connection ----------------------------------------------------------


def test_smtp_reuses_one_connection_across_sends(sink: SmtpSink) -> None:
    transport = smtp_to(sink)
    transport.send("1", "", ["alice@example.org"], MESSAGE)
    transport.send("2", "", ["bob@example.org"], MESSAGE)
    transport.close()
    first, second = sink.wait_for(2)
    assert sink.sessions == 1 and first.peer == second.peer


def test_smtp_reconnects_once_when_the_server_dropped_the_connection(sink: SmtpSink) -> None:
    transport = smtp_to(sink)
    transport.send("1", "", ["alice@example.org"], MESSAGE)
    sink.drop_connections()
    transport.send("2", "", ["bob@example.org"], MESSAGE)
    transport.close()
    first, second = sink.wait_for(2)
    assert sink.sessions == 2 and first.peer != second.peer


# --- SMTP: AUTH and TLS ------------------------------------------------------------

PASSWORD = "p@ss w%rd/:?"


def test_smtp_auth_with_url_encoded_credentials() -> None:
    with SmtpSink(username="maildesk", password=PASSWORD) as sink:
        url = f"smtp://maildesk:{quote(PASSWORD, safe='')}@127.0.0.1:{sink.port}"
        transport = open_transport(url, "maildesk.test")
        transport.send("1", "", ["alice@example.org"], MESSAGE)
        transport.close()
        assert sink.wait_for(1)[0].login == "maildesk"


def test_smtp_wrong_password_is_temporary_and_the_reason_hides_it() -> None:
    with SmtpSink(username="maildesk", password=PASSWORD) as sink:
        wrong = "hunter2-secret"
        transport = smtp_to(sink, username="maildesk", password=wrong)
        with pytest.raises(TemporaryFailure) as caught:
            transport.send("1", "", ["alice@example.org"], MESSAGE)
        assert "535" in str(caught.value)
        assert wrong not in str(caught.value) and PASSWORD not in str(caught.value)
        assert sink.messages == []


def test_smtp_missing_credentials_are_temporary() -> None:
    with SmtpSink(username="maildesk", password=PASSWORD) as sink:
        transport = smtp_to(sink)
        with pytest.raises(TemporaryFailure, match="^530 "):
            transport.send("1", "", ["alice@example.org"], MESSAGE)
        transport.close()


@needs_openssl
def test_smtp_starttls_verifies_the_server_certificate() -> None:
    with SmtpSink(starttls=True, username="u", password=PASSWORD) as sink:
        trusting = ssl.create_default_context(cafile=sink.cert_path)
        transport = smtp_to(
            sink, starttls=True, ssl_context=trusting, username="u", password=PASSWORD
        )
        transport.send("1", "", ["alice@example.org"], MESSAGE)
        transport.close()
        assert sink.wait_for(1)[0].login == "u"
        # The default context does not trust a self-signed certificate: retry later.
        untrusting = smtp_to(sink, starttls=True)
        with pytest.raises(TemporaryFailure, match="CERTIFICATE_VERIFY_FAILED"):
            untrusting.send("2", "", ["alice@example.org"], MESSAGE)
        assert len(sink.messages) == 1


@needs_openssl
def test_smtps_implicit_tls() -> None:
    with SmtpSink(implicit_tls=True) as sink:
        trusting = ssl.create_default_context(cafile=sink.cert_path)
        transport = smtp_to(sink, implicit_tls=True, ssl_context=trusting)
        transport.send("1", "", ["alice@example.org"], MESSAGE)
        transport.close()
        assert sink.wait_for(1)[0].content == MESSAGE


# --- URLs --------------------------------------------------------------------------


def test_unknown_scheme_is_a_value_error_without_the_password() -> None:
    with pytest.raises(ValueError, match="'lmtp'") as caught:
        open_transport("lmtp://user:s3cret@host:24", "maildesk.test")
    assert "s3cret" not in str(caught.value)


def test_url_defaults_and_options() -> None:
    plain = open_transport("smtp://relay.example.test", "h")
    implicit = open_transport("smtps://u:p@relay.example.test", "h")
    starttls = open_transport("smtp://u:p@relay.example.test:587?starttls=true", "h")
    assert isinstance(plain, SmtpTransport) and plain.port == 25 and not plain.starttls
    assert isinstance(implicit, SmtpTransport) and implicit.port == 465 and implicit.implicit_tls
    assert isinstance(starttls, SmtpTransport) and starttls.port == 587 and starttls.starttls
    assert starttls.username == "u"


@pytest.mark.parametrize(
    "url",
    [
        "smtp://u:p@relay.example.test",  # password in the clear to a remote host
        "smtp://relay.example.test?startls=true",  # a typo must not mean plain text
        "smtps://relay.example.test?starttls=true",
        "smtp://u@relay.example.test",
    ],
)
def test_unsafe_or_unclear_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        open_transport(url, "h")
