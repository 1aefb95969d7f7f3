"""Which link tokens never leave maildesk's hands: set-password and paid-work links.

A set-password link quoted in a thread, a notification or a log line would let
whoever reads it take over the account; a paid-work link, approve the work.
Mail clients and scanners rewrite links before they come back to us, so the
token is found in every shape seen in the wild, not only the plain one:

- plain: `/account/set-password?token=…`;
- percent-encoded, once or more, as Outlook SafeLinks wraps it:
  `…safelinks.protection.outlook.com/?url=https%3A%2F%2F…%2Faccount%2Fset-password%3Ftoken%3D…`;
- quoted-printable: `=3D` for `=`, and soft line breaks (`=` at the end of a
  line) anywhere inside, as a raw or badly decoded message shows it.

The pattern is one pass over the text with no nested repeats (linear time).
"""

from __future__ import annotations

import re

_PATHS = ("/account/set-password?token=", "/paid?token=")
_SOFT_BREAK = r"(?:=\r?\n)?"


def _unit(ch: str) -> str:
    """One character of a path, plain or percent-encoded (%2F, %252F, …) or QP (=3D)."""
    forms = [re.escape(ch)]
    if not ch.isalnum() and ch != "-":
        forms.append(f"%(?:25)*{ord(ch):02X}")
    if ch == "=":
        forms.append("=3D")
    return forms[0] if len(forms) == 1 else f"(?:{'|'.join(forms)})"


def _path(text: str) -> str:
    return _SOFT_BREAK.join(_unit(ch) for ch in text)


# The token: URL-safe base64 and dots (itsdangerous), possibly cut by soft breaks.
_LINK = re.compile(
    f"({'|'.join(_path(p) for p in _PATHS)})((?:[A-Za-z0-9_.-]|=\r?\n)+)", re.IGNORECASE
)


def redact_links(text: str) -> str:
    """`text` with every set-password and paid-work token replaced by an ellipsis."""
    # Every shape holds "token" in some case, split at most by soft line breaks: text
    # without it (nearly all) is not scanned with the pattern, five times slower.
    lowered = text.lower()
    if "token" not in lowered:
        soft_breaks = "=\n" in lowered or "=\r\n" in lowered
        if not soft_breaks or "token" not in lowered.replace("=\r\n", "").replace("=\n", ""):
            return text
    return _LINK.sub(lambda m: m.group(1) + "…", text)
