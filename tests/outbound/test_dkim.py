"""DKIM: notifications are signed when configured, and the signature verifies."""

from __future__ import annotations

import base64
import dataclasses
import shutil
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any

import dkim
import pytest

from maildesk import config
from maildesk.clock import ManualClock
from maildesk.config import ConfigError
from maildesk.inbound import rawbytes
from maildesk.outbound.dkim import DkimSigner, signer_from_settings
from maildesk.outbound.outbox import OutboxSender
from maildesk.outbound.transport import open_transport
from maildesk.services import build
from tests.conftest import make_mail
from tests.helpers import outbox_rows, receive
from tests.smtp_sink import SmtpSink

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


@pytest.fixture(scope="module")
def key_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """A fresh RSA key as a PEM file, and the DNS TXT record that publishes it."""
    folder = tmp_path_factory.mktemp("dkim")
    key = folder / "dkim.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
    public = subprocess.run(
        ["openssl", "rsa", "-in", str(key), "-pubout", "-outform", "DER"],
        check=True,
        capture_output=True,
    ).stdout
    return key, b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)


def dns(record: bytes) -> Any:
    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        return record if name == b"mail2026._domainkey.example.test." else None

    return lookup


def test_notifications_are_signed_as_they_are_sent_and_verify(
    config_values: dict[str, Any], tmp_path: Path, clock: ManualClock, key_pair: tuple[Path, bytes]
) -> None:
    """Signed by the sender, at each attempt: the outbox keeps the composed bytes, and
    what the relay gets is those bytes under a signature that verifies, also when it
    took a second attempt."""
    key, record = key_pair
    shutil.copy(key, tmp_path / "dkim.pem")
    # A relative path resolves against the config file's folder (here tmp_path).
    config_values["outbound"].update(dkim_selector="mail2026", dkim_key="dkim.pem")
    settings = config.from_mapping(config_values, base_dir=tmp_path)
    assert settings.outbound.dkim_key == str(tmp_path / "dkim.pem")
    services = build(settings, clock)
    services.prepare()
    try:
        receive(services, make_mail(subject="Tiskárna nefunguje"))
        [row] = outbox_rows(services)
        assert not row.raw.startswith(b"DKIM-Signature:")  # queued as composed
        with SmtpSink() as sink:
            services.settings = dataclasses.replace(
                settings, outbound=dataclasses.replace(settings.outbound, url=sink.url)
            )
            sender = services.sender()
            sink.reply = "451 4.3.0 try again later"
            sender.send_due()
            sink.reply = None
            clock.advance(timedelta(minutes=5))
            sender.send_due()
            sender.transport.close()
            [received] = sink.wait_for(1)
        [after] = outbox_rows(services)
    finally:
        services.db.dispose()
    assert (after.state, after.attempts) == ("sent", 2)
    sent = received.content
    assert sent.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed;")
    assert b" d=example.test;" in sent and b" s=mail2026;" in sent
    assert sent.endswith(row.raw)  # the signature in front of the stored bytes, unchanged
    assert dkim.verify(sent, dnsfunc=dns(record))
    head, body = sent.split(b"\r\n\r\n", 1)
    forged_subject = head.replace(b"\r\nSubject: ", b"\r\nSubject: Re: ") + b"\r\n\r\n" + body
    forged_body = head + b"\r\n\r\n" + body.replace(b"Example Support", b"Exemplary Support")
    for forged in (forged_subject, forged_body):
        assert forged != sent and not dkim.verify(forged, dnsfunc=dns(record))


def test_a_large_stored_mail_is_signed_over_all_its_slices(
    config_values: dict[str, Any], tmp_path: Path, clock: ManualClock, key_pair: tuple[Path, bytes]
) -> None:
    """The sender hashes a stored mail's body a slice at a time: a body of several
    slices, with a line cut at each slice's end, verifies, and a change in its last
    slice breaks the signature."""
    key, record = key_pair
    config_values["outbound"].update(dkim_selector="mail2026", dkim_key=str(key))
    services = build(config.from_mapping(config_values, base_dir=tmp_path), clock)
    assert services.signer is not None
    sender = OutboxSender(
        services.db, open_transport("maildir:" + str(tmp_path / "out"), "test.host"), clock,
        services.settings.outbound, signer=services.signer,
    )  # fmt: skip
    line = b"x" * 997 + b"\r\n"  # 999 bytes: no slice of 1 MiB ends at a line's end
    raw = b"".join(composed(line * 3200))
    assert len(raw) > 3 * rawbytes.SLICE
    signature = sender._signature(raw)
    assert signature.startswith(b"DKIM-Signature: ") and signature.endswith(b"\r\n")
    assert dkim.verify(signature + raw, dnsfunc=dns(record))
    changed = raw[:-10] + b"y" + raw[-9:]
    assert not dkim.verify(signature + changed, dnsfunc=dns(record))
    assert sender._signature(b"") == b""  # a purged body goes out as it is, unsigned


def test_without_the_keys_nothing_is_signed(settings: config.Settings) -> None:
    assert signer_from_settings(settings) is None


def test_half_a_configuration_or_a_bad_key_fails_at_start(
    settings: config.Settings, tmp_path: Path, key_pair: tuple[Path, bytes]
) -> None:
    def with_outbound(**changes: str) -> config.Settings:
        return dataclasses.replace(
            settings, outbound=dataclasses.replace(settings.outbound, **changes)
        )

    with pytest.raises(ConfigError, match="set together"):
        signer_from_settings(with_outbound(dkim_selector="mail2026"))
    with pytest.raises(ConfigError, match="cannot read"):
        signer_from_settings(with_outbound(dkim_selector="s", dkim_key=str(tmp_path / "none")))
    junk = tmp_path / "junk.pem"
    junk.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ConfigError, match="not a usable private key"):
        signer_from_settings(with_outbound(dkim_selector="s", dkim_key=str(junk)))
    # A valid key of another kind: rsa-sha256 is what we sign with.
    other = tmp_path / "ed25519.pem"
    subprocess.run(
        ["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(other)],
        check=True,
        capture_output=True,
    )
    with pytest.raises(ConfigError, match="not a usable private key: not an RSA key"):
        signer_from_settings(with_outbound(dkim_selector="s", dkim_key=str(other)))
    locked = tmp_path / "locked.pem"
    subprocess.run(
        ["openssl", "genrsa", "-aes256", "-passout", "pass:secret", "-out", str(locked), "2048"],
        check=True,
        capture_output=True,
    )
    with pytest.raises(ConfigError, match="not a usable private key"):
        signer_from_settings(with_outbound(dkim_selector="s", dkim_key=str(locked)))
    assert signer_from_settings(with_outbound(dkim_selector="s", dkim_key=str(key_pair[0])))


# --- signing a composed mail in pieces, as dkim.sign signs it whole -------------------

# Bodies whose canonical form has something to do: trailing blank lines, whitespace
# runs and line ends, a line or a CR LF pair split between two pieces, a last line
# without its line end, an empty body.
PIECES = [
    (b"Hello\r\n",),
    (b"Hello  \r\n\tworld\t \r\n", b" \r\n\r\n\r\n"),
    (b"split li", b"ne\r", b"\nand \t", b" more\r\n\r\n"),
    (b"no final line end  \t",),
    (b"",),
    (),
    (b"\r\n\r\n", b"\r\n"),
    (b"QUJD" * 19 + b"\r\n") * 3000 + b"\r\n",  # a base64 block (one piece of 230 KB)
]


def composed(body: tuple[bytes, ...] | bytes) -> tuple[bytes, ...]:
    head = (
        b"Date: Mon, 30 Nov 2026 10:00:00 +0000\r\nFrom: Support <support@example.test>\r\n"
        b"To: alice@customer.test\r\nSubject: [#7] =?utf-8?q?Tisk=C3=A1rna?=\r\n"
        b"Message-ID: <md.x@example.test>\r\nMIME-Version: 1.0\r\n\r\n"
    )
    return (head, *((body,) if isinstance(body, bytes) else body))


@pytest.mark.parametrize("body", PIECES, ids=range(len(PIECES)))
def test_a_mail_signed_in_pieces_is_what_dkimpy_signs_whole(
    body: tuple[bytes, ...] | bytes, key_pair: tuple[Path, bytes]
) -> None:
    key, record = key_pair
    pieces = composed(body)
    whole = b"".join(pieces)
    moment = 1_796_000_000  # the same t= for both
    ours = DkimSigner("mail2026", "example.test", key.read_bytes(), now=lambda: moment)(pieces)

    theirs = dkim.DKIM(whole)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dkim.time, "time", lambda: moment)
        signature = theirs.sign(
            b"mail2026", b"example.test", key.read_bytes(), canonicalize=(b"relaxed", b"relaxed")
        )
    assert ours[1:] == pieces  # the mail's own bytes are not copied or changed
    assert ours[0] == signature
    assert dkim.verify(b"".join(ours), dnsfunc=dns(record))


def test_the_signature_covers_every_piece_of_the_body(key_pair: tuple[Path, bytes]) -> None:
    key, record = key_pair
    signer = DkimSigner("mail2026", "example.test", key.read_bytes())
    pieces = composed((b"first block\r\n", b"second block\r\n", b"third block\r\n"))
    signed = signer(pieces)
    assert dkim.verify(b"".join(signed), dnsfunc=dns(record))
    changed = (*signed[:3], b"second blocK\r\n", *signed[4:])
    assert not dkim.verify(b"".join(changed), dnsfunc=dns(record))
