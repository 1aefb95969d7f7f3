"""DKIM: whether outgoing mail is signed, by which key, and how.

Signing is on when `[outbound] dkim_selector` and `dkim_key` (a PEM RSA private
key) are both set. The signing domain is the support address's domain, so the
signature aligns with From for DMARC. A message is signed once, when it is
composed and queued: the outbox sends the stored bytes unchanged, so a retry
carries the same valid signature. Canonicalization is relaxed/relaxed, which
survives relays that re-fold headers or adjust whitespace.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import dkim
from dkim.canonicalization import CanonicalizationPolicy
from dkim.crypto import UnparsableKeyError, parse_pem_private_key

from maildesk import dkimbody
from maildesk.config import ConfigError, Settings

# A composed mail in pieces (its header block with the empty line, then its body's
# blocks) -> the same pieces with a DKIM-Signature field in front.
Signer = Callable[[Sequence[bytes]], tuple[bytes, ...]]

# Headers signed when present (dkimpy's defaults cover the RFC 6376 list); From is
# signed once more than it occurs, so no From can be added without breaking it.
_CANONICALIZE = (b"relaxed", b"relaxed")
_POLICY = CanonicalizationPolicy.from_c_value(b"/".join(_CANONICALIZE))
_PROBE = (b"From: a@example.test\r\nSubject: probe\r\n\r\n", b"probe\r\n")


class DkimSigner:
    """Signs as `dkim.sign` does (rsa-sha256, relaxed/relaxed, its default headers),
    but over the pieces of a composed mail: dkimpy would want the whole message in
    one bytes object, then copy its body line by line and canonicalize it whole
    (two agents notified of a 24 MB attachment peaked at 241 MB signed, 126 unsigned).
    The body hash is ours (`dkimbody`, a slice at a time); dkimpy signs the header
    block. `tests/outbound/test_dkim.py` holds the result to `dkim.sign`'s, byte for
    byte."""

    def __init__(
        self, selector: str, domain: str, key: bytes, now: Callable[[], float] = time.time
    ) -> None:
        self.selector = selector.encode("ascii")
        self.domain = domain.encode("ascii")
        try:
            self._key = parse_pem_private_key(key)
        except UnparsableKeyError as exc:  # not a DKIMException: made one, as dkim.sign does
            raise dkim.KeyFormatError(str(exc)) from None
        self._now = now

    def __call__(self, pieces: Sequence[bytes]) -> tuple[bytes, ...]:
        head = pieces[0]
        if not head.endswith(b"\r\n\r\n"):
            raise ValueError("DKIM: the first piece must be the whole header block")
        headers = dkim.DKIM(head)  # what dkim.sign reads of the header block
        headers.hasher = hashlib.sha256  # which dkim.sign sets for rsa-sha256
        signed = tuple(name.lower() for name in headers.default_sign_headers())
        body_hash = dkimbody.pieces_hash(pieces[1:], relaxed=True, hasher=hashlib.sha256)
        fields = [
            (b"v", b"1"),
            (b"a", b"rsa-sha256"),
            (b"c", b"/".join(_CANONICALIZE)),
            (b"d", self.domain),
            (b"i", b"@" + self.domain),
            (b"q", b"dns/txt"),
            (b"s", self.selector),
            (b"t", str(int(self._now())).encode("ascii")),
            (b"h", b" : ".join(signed)),
            (b"bh", base64.b64encode(body_hash)),
            (b"b", b"0" * 60),  # as dkim.sign: b= folds onto a line of its own
        ]
        value = headers.gen_header(fields, signed, _POLICY, b"DKIM-Signature", self._key)
        return (b"DKIM-Signature: " + bytes(value), *pieces)


def signer_from_settings(settings: Settings) -> Signer | None:
    """The signer the settings ask for, or None; ConfigError if the key is unusable."""
    outbound = settings.outbound
    if not outbound.dkim_selector and not outbound.dkim_key:
        return None
    if not (outbound.dkim_selector and outbound.dkim_key):
        raise ConfigError("[outbound] dkim_selector and dkim_key must be set together")
    try:
        key = Path(outbound.dkim_key).read_bytes()
    except OSError as exc:
        raise ConfigError(f"[outbound] dkim_key: cannot read {outbound.dkim_key}: {exc}") from None
    try:
        signer = DkimSigner(outbound.dkim_selector, settings.support.domain, key)
        signer(_PROBE)  # a bad key fails at start-up, not at the first notification
    except (dkim.DKIMException, ValueError, UnicodeError) as exc:
        raise ConfigError(f"[outbound] dkim_key: not a usable private key: {exc}") from None
    return signer
