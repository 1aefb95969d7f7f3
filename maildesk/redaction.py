"""Which link tokens never leave maildesk's hands: set-password and paid-work links.

A set-password link quoted in a thread, a notification, the search index or a log
line would let whoever reads it take over the account; a paid-work link, approve
the work. Link rewriters and mail clients change a link before it comes back to
us, so a token is found by its own shape, wherever it stands: itsdangerous output,
`eyJ…` (a JSON object) or `.eJ…` (compressed), `.`, a timestamp of 4 to 8
characters, `.`, and 27 characters of HMAC-SHA1, all URL-safe base64. It is looked
for in the text after undoing what rewriters and clients do:

- quoted-printable: soft line breaks (`=` at a line's end) and `=3D`;
- a link wrapped onto the next line, quote markers (`> `) and all;
- percent-encoding, once or more (Outlook SafeLinks, Proofpoint v1, Barracuda);
- Proofpoint URL Defense v2 (`u=http-3A__host_…`: `-` for `%`, `_` for `/`) and
  v3 (`urldefense.com/v3/__URL__;BYTES!!…`: `*` for a character of BYTES);
- base64 (Sophos' `&u=`): a run of 48 or more base64 characters is decoded, and
  replaced whole if what it decodes to holds a token or one of our links.

Besides, whatever follows our paths (`/account/set-password?token=`, `/paid?token=`),
plain, percent-encoded or quoted-printable, is removed, token-shaped or not.

No encoder escapes a letter or a digit, and no decoding here makes one: a token's
`eyJ` or `eJ` stands in the text as it is, line breaks aside. Text without it, without
a run of 48 base64 characters (escapes and line breaks aside) and without "token"
(nearly all text) is returned without decoding. Every step is one pass, by patterns
without nested repeats: linear time.
"""

from __future__ import annotations

import binascii
import re
import string
from bisect import bisect_left, bisect_right
from collections.abc import Callable

_PATHS = ("/account/set-password?token=", "/paid?token=")
# The longest a rewritten link grows: a SafeLinks URL inside Proofpoint inside Sophos' base64
# is under 2 KB.
LINK_SLACK = 4096
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


# The token after our paths: URL-safe base64 and dots (itsdangerous), possibly cut by soft breaks.
_LINK = re.compile(
    f"({'|'.join(_path(p) for p in _PATHS)})((?:[A-Za-z0-9_.-]|=\r?\n)+)", re.IGNORECASE
)

# A token of ours: its payload is short (under 100 characters), which bounds the work at
# each "eyJ" of a long run; the signature may run on into the next line after a wrap.
_PAYLOAD_REST = r"[\w-]{0,256}+\.[\w-]{4,8}+\.[\w-]{27}"
_TOKENS = [re.compile(start + _PAYLOAD_REST, re.ASCII) for start in ("eyJ", r"\.eJ")]
MIN_BASE64 = 48  # the shortest token (36 characters), base64-encoded
_BASE64_CHARS = "A-Za-z0-9+/_-"
_BASE64 = re.compile(f"(?<![{_BASE64_CHARS}])[{_BASE64_CHARS}]{{{MIN_BASE64},}}+")
# A token's start, "eyJ" or ".eJ", maybe cut by the line breaks the first three _STEPS
# take out (`=?\r?\n[ \t>]*`), looked for in the reversed text: a pattern starting with
# the rare "J" is tried at far fewer places than one starting with "e" (1.5 µs for 2 KB
# of mail, against 3.5 for `"eJ" in text` alone).
_START_BACKWARDS = re.compile(r"J(?:[ \t>]*\n\r?=?)*(?:y(?:[ \t>]*\n\r?=?)*)?e")
# Bytes that may stand in a run of base64 (escapes too: %2F, =2F, Proofpoint's - and *).
_RUN_BYTES = bytes(int(re.match(f"[%=*{_BASE64_CHARS}]", chr(b)) is not None) for b in range(256))
_RUN = b"\1" * MIN_BASE64
_ALNUM = frozenset(string.ascii_letters + string.digits)


class _Shifts:
    """Where each piece a decoding step rewrote came from, to map a span back."""

    def __init__(self) -> None:
        self.starts: list[int] = []  # in the new text, ascending
        self.pieces: list[tuple[int, int, int, int]] = []  # new start, new end, old start, old end

    def old(self, start: int, end: int) -> tuple[int, int]:
        """The span of the old text that [start, end) of the new one came from."""
        i = bisect_right(self.starts, start) - 1
        if i >= 0:
            _, new_end, old_start, old_end = self.pieces[i]
            start = old_start if start < new_end else start - new_end + old_end
        i = bisect_left(self.starts, end) - 1
        if i >= 0:
            _, new_end, _, old_end = self.pieces[i]
            end = old_end if end <= new_end else end - new_end + old_end
        return start, end


def _rewrite(
    text: str, pattern: re.Pattern[str], replace: Callable[[re.Match[str]], str]
) -> tuple[str, _Shifts]:
    """`text` with every match of `pattern` replaced. A replacement of the same length
    keeps every character where it was, so only the others are recorded."""
    pieces: list[str] = []
    shifts = _Shifts()
    kept = shift = 0
    for found in pattern.finditer(text):
        start, end = found.span()
        new = replace(found)
        if len(new) != end - start:
            shifts.starts.append(start + shift)
            shifts.pieces.append((start + shift, start + shift + len(new), start, end))
            shift += len(new) - (end - start)
        elif new == found.group():
            continue
        pieces += (text[kept:start], new)
        kept = end
    if not pieces:
        return text, shifts
    pieces.append(text[kept:])
    return "".join(pieces), shifts


def _byte(found: re.Match[str]) -> str:
    """An escaped character (%2F, =3D) if it is punctuation: no encoder escapes a letter
    or a digit, and a line break made here would join lines (see the docstring)."""
    ch = chr(int(found.group(1), 16))
    return ch if ch in string.punctuation else found.group()


def _proofpoint_v2(found: re.Match[str]) -> str:
    return found.group(1) + found.group(2).replace("-", "%").replace("_", "/")


_STAR = re.compile(r"\*(?:\*[A-Za-z0-9_-])?")
_RUNS = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"
_RUN_LENGTHS = {ch: n for n, ch in enumerate(_RUNS, 2)}


def _proofpoint_v3(found: re.Match[str]) -> str:
    """`URL__;BYTES!…` with each `*` of URL the next character of BYTES (base64), and
    each `**X` the next run of them, of a length X names."""
    wrapped = found.group(2)
    end = wrapped.find("__;")
    if end < 0:
        return found.group()
    listed = wrapped[end + 3 :].partition("!")[0]
    try:
        padding = "=" * (-len(listed) % 4)
        chars = binascii.a2b_base64(listed.replace("-", "+").replace("_", "/") + padding).decode()
    except (ValueError, UnicodeDecodeError):
        return found.group()
    pieces: list[str] = []
    kept = used = 0
    for star in _STAR.finditer(wrapped, 0, end):
        count = _RUN_LENGTHS[star.group()[2]] if len(star.group()) == 3 else 1
        instead = chars[used : used + count]
        used += count
        if len(instead) == count and not _ALNUM.intersection(instead):
            pieces += (wrapped[kept : star.start()], instead)
            kept = star.end()
    return found.group(1) + "".join(pieces) + wrapped[kept:]


# Each step undoes one encoding, in the order they are applied last to first. Each pattern
# starts with a literal: one that does not is tried at every character, ten times slower.
_STEPS: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]] = [
    (re.compile(r"\r(?=\n)"), lambda found: ""),
    (re.compile(r"=\n"), lambda found: ""),  # quoted-printable soft breaks
    (re.compile(r"\n[ \t>]*+"), lambda found: ""),  # wraps, and the quote markers after them
    (re.compile(r"=([0-9A-F]{2})"), _byte),  # quoted-printable
    (re.compile(r"(urldefense(?:\.proofpoint)?\.\w+/v2/url\?u=)([^&\s]*+)"), _proofpoint_v2),
    (re.compile(r"(urldefense(?:\.proofpoint)?\.\w+/v3/__)(\S*+)"), _proofpoint_v3),
    (re.compile(r"%(?:25)*([0-9A-Fa-f]{2})"), _byte),  # once or more
]


def _spans(text: str, nested: bool = False, quick: bool = True) -> list[tuple[int, int]]:
    """Where `text` holds a token, after undoing the encodings; a base64 run holding one
    (not inside another run: `nested`) is a span whole. `quick`: skip the steps that
    cannot find anything in `text` (False only to test that they cannot)."""
    found: list[tuple[int, int]] = []
    # The checks look at ASCII bytes: str.lower() of non-ASCII text cost 20 µs for 3 KB.
    raw = text.encode("ascii", "replace")
    lowered = raw.lower()
    # Our links hold "token" in some case, split at most by soft line breaks; the Kelvin
    # sign is the one other character IGNORECASE takes for a letter of it (a K).
    if (
        not quick
        or b"token" in lowered
        or "\u212a" in text
        or (
            (b"=\n" in lowered or b"=\r\n" in lowered)
            and b"token" in lowered.replace(b"=\r\n", b"").replace(b"=\n", b"")
        )
    ):
        found += (m.span(2) for m in _LINK.finditer(text))
    # No decoding makes a letter and only line breaks are taken out: text without a
    # token's start (nearly all) is not decoded for tokens.
    token = not quick or ("J" in text and _START_BACKWARDS.search(text[::-1]) is not None)
    # A base64 run is decoded where one line holds MIN_BASE64 of its characters in a row
    # (a wrap leaves that much of a link on some line).
    runs = not nested and _RUN in raw.translate(_RUN_BYTES)
    if not token and not runs:
        return found
    decoded, steps = text, []
    for pattern, replace in _STEPS:
        decoded, shifts = _rewrite(decoded, pattern, replace)
        steps.append(shifts)
    spans = [m.span() for tokens in _TOKENS for m in tokens.finditer(decoded)] if token else []
    if runs:
        spans += (m.span() for m in _BASE64.finditer(decoded) if _holds_token(m.group()))
    for start, end in spans:
        for shifts in reversed(steps):
            start, end = shifts.old(start, end)
        found.append((start, end))
    return found


def _holds_token(run: str) -> bool:
    """Whether a run of base64 decodes, from any of its first four characters (a run
    may start with the end of a word before it), to text holding a token or our link."""
    for skip in range(4):
        data = run[skip:].replace("-", "+").replace("_", "/")  # either alphabet
        if len(data) % 4 == 1:
            data = data[:-1]  # a lone character holds no byte
        # Padded, not cut to whole groups: a link's token is its last bytes.
        data += "=" * (-len(data) % 4)
        if _spans(binascii.a2b_base64(data).decode("latin-1"), nested=True):
            return True
    return False


def redact_links(text: str) -> str:
    """`text` with every set-password and paid-work token replaced by an ellipsis."""
    spans = _spans(text)
    return _replaced(text, spans, len(text)) if spans else text


def redact_head(text: str, limit: int) -> str:
    """The first `limit` characters of `text`, redacted. A token the limit cuts is removed
    whole (read up to `LINK_SLACK` characters on): its first part alone, cut by `limit`,
    would not be recognized, and would leave the rest of the signature to guess."""
    if len(text) <= limit:
        return redact_links(text)
    head = text[: limit + LINK_SLACK]
    return _replaced(head, [span for span in _spans(head) if span[0] < limit], limit)


def _replaced(text: str, spans: list[tuple[int, int]], end: int) -> str:
    """`text` up to `end` (or the end of a span across it), each span an ellipsis."""
    pieces: list[str] = []
    kept = 0
    for start, stop in sorted(spans):
        if start > kept or not pieces:
            pieces += (text[kept:start], "…")
        kept = max(kept, stop)
    pieces.append(text[kept:end])
    return "".join(pieces)
