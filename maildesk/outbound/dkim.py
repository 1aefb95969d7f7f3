"""DKIM: whether outgoing mail is signed, by which key, and how.

Signing is on when `[outbound] dkim_selector` and `dkim_key` (a PEM RSA private
key) are both set. The signing domain is the support address's domain, so the
signature aligns with From for DMARC. The outbox stores a mail as composed and
the sender signs it at each attempt, in front of the stored bytes
(`OutboxSender._signature`): signing at queueing ran inside the processor's
write transaction, and held SQLite's one write lock for about half of its
time (a new ticket queues three mails). A retry carries a fresh signature.
Canonicalization is relaxed/relaxed, which survives relays that re-fold
headers or adjust whitespace.

dkimpy reads and canonicalizes the header block; the RSA signature itself is
OpenSSL's, through `cryptography`. dkimpy computes it in pure Python: 7 ms of
CPU per mail against 0.25 ms.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import dkim
from dkim.canonicalization import CanonicalizationPolicy

from maildesk import dkimbody
from maildesk.config import ConfigError, Settings

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

# A mail in pieces (its header block with the empty line, then its body's blocks, as
# composed or as slices of the stored bytes) -> the same pieces with a DKIM-Signature
# field in front.
Piece = bytes | memoryview
Signer = Callable[[Sequence[Piece]], tuple[Piece, ...]]

# Headers signed when present (dkimpy's defaults cover the RFC 6376 list); From is
# signed once more than it occurs, so no From can be added without breaking it.
_CANONICALIZE = (b"relaxed", b"relaxed")
_POLICY = CanonicalizationPolicy.from_c_value(b"/".join(_CANONICALIZE))
_PROBE = (b"From: a@example.test\r\nSubject: probe\r\n\r\n", b"probe\r\n")
_FIELD = b"DKIM-Signature"


class DkimSigner:
    """Signs as `dkim.sign` does (rsa-sha256, relaxed/relaxed, its default headers),
    but over the pieces of a composed mail: dkimpy would want the whole message in
    one bytes object, then copy its body line by line and canonicalize it whole
    (two agents notified of a 24 MB attachment peaked at 241 MB signed, 126 unsigned).
    The body hash is ours (`dkimbody`, a slice at a time); dkimpy signs the header
    block as `DKIM.gen_header` does, and OpenSSL signs its hash (RSASSA-PKCS1-v1_5 is
    deterministic: the same bytes as dkimpy's own arithmetic). `tests/outbound/
    test_dkim.py` holds the result to `dkim.sign`'s, byte for byte."""

    def __init__(
        self, selector: str, domain: str, key: bytes, now: Callable[[], float] = time.time
    ) -> None:
        self.selector = selector.encode("ascii")
        self.domain = domain.encode("ascii")
        # Imported here: OpenSSL's bindings cost a process 9 MB of RSS, for signing only.
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

        try:
            private = serialization.load_pem_private_key(key, password=None)
        except (ValueError, TypeError) as exc:  # not a DKIMException: made one, as dkim.sign does
            raise dkim.KeyFormatError(str(exc)) from None
        if not isinstance(private, rsa.RSAPrivateKey):
            raise dkim.KeyFormatError(f"not an RSA key: {type(private).__name__}")
        self._key: RSAPrivateKey = private
        self._padding = padding.PKCS1v15()
        self._prehashed = utils.Prehashed(hashes.SHA256())  # dkimpy hashed the headers
        self._now = now

    def __call__(self, pieces: Sequence[Piece]) -> tuple[Piece, ...]:
        head = bytes(pieces[0])
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
        return (_FIELD + b": " + self._value(headers, signed, fields), *pieces)

    def _value(
        self, headers: dkim.DKIM, signed: tuple[bytes, ...], fields: list[tuple[bytes, bytes]]
    ) -> bytes:
        """The field's value, signed: what `DKIM.gen_header` makes, with OpenSSL's RSA."""
        unsigned = dkim.fold(b"; ".join(b"=".join(f) for f in fields), namelen=len(_FIELD))
        unsigned = dkim.RE_BTAG.sub(b"\\1", unsigned)
        digest = hashlib.sha256()
        canonical = _POLICY.canonicalize_headers(headers.headers)
        dkim.hash_headers(digest, _POLICY, canonical, signed, (_FIELD, b" " + unsigned), {})
        signature = self._key.sign(digest.digest(), self._padding, self._prehashed)
        fields = [*fields[:-1], (b"b", base64.b64encode(signature))]
        value = b"; ".join(b"=".join(f) for f in fields) + b"\r\n"
        return bytes(dkim.fold(value, namelen=len(_FIELD)))


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
