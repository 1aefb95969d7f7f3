"""DKIM: notifications are signed when configured, and the signature verifies."""

from __future__ import annotations

import base64
import dataclasses
import shutil
import subprocess
from pathlib import Path
from typing import Any

import dkim
import pytest

from maildesk import config
from maildesk.clock import ManualClock
from maildesk.config import ConfigError
from maildesk.outbound.dkim import signer_from_settings
from maildesk.services import build
from tests.conftest import make_mail
from tests.helpers import outbox_rows, receive

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


def test_notifications_are_signed_and_verify(
    config_values: dict[str, Any], tmp_path: Path, clock: ManualClock, key_pair: tuple[Path, bytes]
) -> None:
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
    finally:
        services.db.dispose()
    assert row.raw.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed;")
    assert b" d=example.test;" in row.raw and b" s=mail2026;" in row.raw
    assert dkim.verify(row.raw, dnsfunc=dns(record))
    head, body = row.raw.split(b"\r\n\r\n", 1)
    forged_subject = head.replace(b"\r\nSubject: ", b"\r\nSubject: Re: ") + b"\r\n\r\n" + body
    forged_body = head + b"\r\n\r\n" + body.replace(b"Example Support", b"Exemplary Support")
    for forged in (forged_subject, forged_body):
        assert forged != row.raw and not dkim.verify(forged, dnsfunc=dns(record))


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
    assert signer_from_settings(with_outbound(dkim_selector="s", dkim_key=str(key_pair[0])))
