"""DKIM: whether outgoing mail is signed, by which key, and how.

Signing is on when `[outbound] dkim_selector` and `dkim_key` (a PEM RSA private
key) are both set. The signing domain is the support address's domain, so the
signature aligns with From for DMARC. A message is signed once, when it is
composed and queued: the outbox sends the stored bytes unchanged, so a retry
carries the same valid signature. Canonicalization is relaxed/relaxed, which
survives relays that re-fold headers or adjust whitespace.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import dkim

from maildesk.config import ConfigError, Settings

# Headers signed when present (dkimpy's defaults cover the RFC 6376 list); From is
# signed once more than it occurs, so no From can be added without breaking it.
_CANONICALIZE = (b"relaxed", b"relaxed")
_PROBE = b"From: a@example.test\r\nSubject: probe\r\n\r\nprobe\r\n"


class DkimSigner:
    def __init__(self, selector: str, domain: str, key: bytes) -> None:
        self.selector = selector.encode("ascii")
        self.domain = domain.encode("ascii")
        self._key = key

    def __call__(self, message: bytes) -> bytes:
        """`message` with a DKIM-Signature header in front."""
        signature = dkim.sign(
            message, self.selector, self.domain, self._key, canonicalize=_CANONICALIZE
        )
        return bytes(signature) + message


def signer_from_settings(settings: Settings) -> Callable[[bytes], bytes] | None:
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
    signer = DkimSigner(outbound.dkim_selector, settings.support.domain, key)
    try:
        signer(_PROBE)  # a bad key fails at start-up, not at the first notification
    except (dkim.DKIMException, ValueError, UnicodeError) as exc:
        raise ConfigError(f"[outbound] dkim_key: not a usable private key: {exc}") from None
    return signer
