"""Header lines for outgoing mail, written and checked here rather than by the email package.

This module decides what may appear in a header we write. Python 3.11.7's email
package re-folds header values after decoding RFC 2047 encoded words, so a customer's
`=?UTF-8?Q?=0A?=Bcc: x` becomes a real `Bcc:` line (CVE-2024-6923), and its address
parser misreads `a@b.test)<c@d.test>` (CVE-2023-27043). So:

- Customer text (subjects, display names, file names) is never rejected: control
  characters become spaces, and text that is non-ASCII or holds `=?` is written as
  UTF-8 encoded words (RFC 2231 in parameters). No `=?` of theirs reaches the wire
  literally, so nothing of theirs can be decoded into a header break, here or downstream.
- Structural values (addresses, message ids, tokens) are checked against strict
  grammars and raise `HeaderError` naming the header. Nothing is repaired, except
  that a Unicode domain is written as its IDNA A-label.
- Lines are folded at 78 characters where possible and never exceed 998.
"""

from __future__ import annotations

import base64
import re
import string
import unicodedata
from collections.abc import Sequence

import idna

FOLD_AT = 78
MAX_LINE = 998
MAX_WORD = 75  # RFC 2047's limit for one encoded word
PHRASE_ROOM = 60  # room for one display-name token, so "Reply-To: " plus it fits in 78
MAX_MSG_ID = 250
# Customer text beyond this is cut: no client shows more, and the stdlib parser (which
# we, and Python-based recipients, run on these headers) slows more than linearly.
MAX_TEXT = 4_000


class HeaderError(ValueError):
    """A header value we refuse to write; the message starts with the header's name."""


_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_DOT_ATOM = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_ADDRESS = re.compile(rf"{_DOT_ATOM}@{_LABEL}(?:\.{_LABEL})*")
_MSG_ID = re.compile(rf"{_DOT_ATOM}@(?:{_DOT_ATOM}|\[[!-Z^-~]*\])")
_ATOMS = re.compile(rf"{_ATEXT}+(?: {_ATEXT}+)*")
_QUOTABLE = re.compile(r"[ !#-\[\]-~]*")  # printable ASCII without '"' and '\'
_PRINTABLE = re.compile(r"[ -~]*")
_BREAKING = ("Cc", "Zl", "Zp")  # controls, line and paragraph separators
_Q_SAFE = frozenset(string.ascii_letters + string.digits + "!*+-/")
_ATTR_CHAR = frozenset(string.ascii_letters + string.digits + "!#$&+-.^_`|~")


def clean_text(value: str) -> str:
    """Customer text made safe for a header: controls become spaces, ends are trimmed.

    U+2028/U+2029 count as controls (splitlines() breaks on them); lone surrogates,
    which cannot be encoded, become U+FFFD. Past MAX_TEXT characters it ends in "…".
    """
    head = value[: MAX_TEXT + 1]
    # A printable string holds no control, no separator but the space and no surrogate:
    # the common case, checked in C. Only other strings are read character by character.
    if not head.isprintable():
        head = "".join(_header_char(ch) for ch in head)
    text = head.strip()
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1].rstrip() + "…"


def _header_char(ch: str) -> str:
    category = unicodedata.category(ch)
    return " " if category in _BREAKING else "\ufffd" if category == "Cs" else ch


def breaks_line(value: str) -> bool:
    """Whether `value` holds NUL or anything str.splitlines() breaks on (CR, LF, VT, FF,
    FS/GS/RS, U+0085, U+2028, U+2029): a header value holding one is refused."""
    return "\0" in value or len(f"x{value}x".splitlines()) > 1


def check_address(header: str, value: str) -> str:
    """A plain addr-spec `local@domain`, ASCII only; a Unicode domain becomes its A-label."""
    local, at, domain = value.rpartition("@")
    if at and domain and not domain.isascii():
        try:
            domain = a_label(domain)
        except UnicodeError:
            raise HeaderError(f"{header}: unusable domain in {value!r}") from None
    address = f"{local}@{domain}"
    # "=?" is refused too: Python's parser decodes encoded words even inside a local part.
    if not _ADDRESS.fullmatch(address) or "=?" in local or len(local) > 64 or len(address) > 254:
        raise HeaderError(f"{header}: not a plain address: {value!r}")
    return address


def a_label(domain: str) -> str:
    """A Unicode domain's ASCII form, as IDNA 2008 (with UTS #46 mapping) writes it;
    UnicodeError if it has none. Python's own "idna" codec is IDNA 2003, which maps
    `straße.de` to `strasse.de`, another domain: an account, a cap, a reply would be
    someone else's."""
    if len(domain) > 253:  # no name is longer, and punycode is quadratic in a label
        raise UnicodeError("domain too long")
    return idna.encode(domain, uts46=True).decode("ascii")


def as_stored(address: str) -> str:
    """`address` as addresses from mail are kept, to compare one typed into the config
    or a command with them: lower case, a Unicode domain as its A-label (left as written
    when it has none: it then matches nothing from mail)."""
    local, at, domain = address.strip().lower().rpartition("@")
    if at and not domain.isascii():
        try:
            domain = a_label(domain)
        except UnicodeError:
            pass
    return f"{local}{at}{domain}"


def writable(value: str) -> str | None:
    """`value` as `check_address` writes it, or None when it cannot be written: the
    gate for an address from mail to become someone we write to, so that no stored
    participant or requester makes every later mail of their ticket fail."""
    try:
        return check_address("address", value)
    except HeaderError:
        return None


def is_valid_msg_id(value: str) -> bool:
    """Whether `value` (without angle brackets) is a message id we are willing to write."""
    return len(value) <= MAX_MSG_ID and "=?" not in value and bool(_MSG_ID.fullmatch(value))


def fold(name: str, tokens: Sequence[str]) -> str:
    """`Name: tok tok ...` with CRLF; a fold may replace any single space between tokens."""
    # The last guard: whatever built the tokens, only printable ASCII goes out (checked
    # on all of them at once: the space that joins them is printable too).
    if not _PRINTABLE.fullmatch("".join(tokens)):
        bad = next(token for token in tokens if not _PRINTABLE.fullmatch(token))
        raise HeaderError(f"{name}: unprintable character in {bad!r}")
    single = f"{name}: {' '.join(tokens)}" if tokens else f"{name}:"
    if len(single) <= FOLD_AT:  # most fields: no token would start a new line
        return single + "\r\n"
    lines, line = [], f"{name}:"
    for i, token in enumerate(tokens):
        if i and len(line) + 1 + len(token) > FOLD_AT:
            lines.append(line)
            line = ""
        line += " " + token
    lines.append(line)
    if max(len(line) for line in lines) > MAX_LINE:
        raise HeaderError(f"{name}: a line would exceed {MAX_LINE} characters")
    return "\r\n".join(lines) + "\r\n"


def encoded_words(text: str, first_room: int = MAX_WORD) -> list[str]:
    """`text` as UTF-8 encoded words, Q or B, whichever is shorter; none splits a character.

    The first word is at most `first_room` long, to fit after the header name. Q uses the
    alphabet RFC 2047 allows in a phrase, so the words serve subjects and display names.
    """
    q_words, b_words = _words(text, first_room, b=False), _words(text, first_room, b=True)
    return min(q_words, b_words, key=lambda words: sum(map(len, words)))


def _q(text: str) -> str:
    return "".join(
        "_" if ch == " " else ch if ch in _Q_SAFE else "".join(f"={b:02X}" for b in ch.encode())
        for ch in text
    )


def _words(text: str, first_room: int, *, b: bool) -> list[str]:
    prefix = "=?UTF-8?B?" if b else "=?UTF-8?Q?"

    def word(chunk: str) -> str:
        body = base64.b64encode(chunk.encode()).decode("ascii") if b else _q(chunk)
        return f"{prefix}{body}?="

    words: list[str] = []
    room, chunk, size = min(first_room, MAX_WORD), "", 0
    for ch in text:
        # size counts raw bytes for B (4 characters per 3 bytes) and characters for Q.
        n = len(ch.encode()) if b else len(_q(ch))
        grown = 4 * -(-(size + n) // 3) if b else size + n
        if chunk and len(prefix) + grown + 2 > room:
            words.append(word(chunk))
            room, chunk, size = MAX_WORD, "", 0
        chunk, size = chunk + ch, size + n
    if chunk:
        words.append(word(chunk))
    return words


def unstructured(name: str, text: str) -> str:
    """A free-text header such as Subject: cleaned, then plain if safe, else encoded."""
    text = clean_text(text)
    if not text:
        return f"{name}:\r\n"
    if text.isascii() and "=?" not in text:
        # Split only at a space followed by a non-space, so runs of spaces survive unfolding.
        pieces = re.split(r" (?=[^ ])", text)
        if max(map(len, pieces)) <= MAX_LINE - len(name) - 2:
            return fold(name, pieces)
    return fold(name, encoded_words(text, FOLD_AT - len(name) - 2))


def mailbox_tokens(header: str, display_name: str, address: str) -> list[str]:
    """`name <addr>` as fold tokens, or the bare address when there is no name."""
    address = check_address(header, address)
    name = clean_text(display_name)
    return [*_phrase(name), f"<{address}>"] if name else [address]


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _phrase(name: str) -> list[str]:
    """A display name as atoms, one quoted string, or encoded words (tried in that order)."""
    plain = name.isascii() and "=?" not in name
    if plain and _ATOMS.fullmatch(name) and max(map(len, name.split(" "))) <= PHRASE_ROOM:
        return name.split(" ")
    if plain and len(_quote(name)) <= PHRASE_ROOM:
        return [_quote(name)]
    words = encoded_words(name, PHRASE_ROOM)
    if len(words) == 1:
        return words
    # Between adjacent encoded words RFC 2047 decoders drop the space and Python's phrase
    # parser adds one. So a long name keeps its plain words plain (atom or quoted) and
    # encodes only runs of the others: most splits then fall on spaces both agree on.
    tokens: list[str] = []
    run: list[str] = []
    for word in [*name.split(), ""]:
        if word and not (word.isascii() and "=?" not in word and len(word) < PHRASE_ROOM - 2):
            run.append(word)
            continue
        if run:
            tokens += encoded_words(" ".join(run), PHRASE_ROOM)
            run = []
        if word:
            tokens.append(word if _ATOMS.fullmatch(word) else _quote(word))
    return tokens


def address_list(name: str, mailboxes: Sequence[tuple[str, str]]) -> str:
    """From/To/Reply-To from (display name, address) pairs."""
    if not mailboxes:
        raise HeaderError(f"{name}: no address given")
    groups = [mailbox_tokens(name, display_name, address) for display_name, address in mailboxes]
    for group in groups[:-1]:
        group[-1] += ","
    return fold(name, [token for group in groups for token in group])


def msg_ids(name: str, ids: Sequence[str]) -> str:
    """Message-ID, In-Reply-To, References: ids given without angle brackets."""
    bad = [value for value in ids if not is_valid_msg_id(value)]
    if bad or not ids:
        raise HeaderError(f"{name}: not a usable message id: {bad[0] if bad else ''!r}")
    return fold(name, [f"<{value}>" for value in ids])


def structured(
    name: str, value: str, grammar: re.Pattern[str], params: Sequence[tuple[str, str]] = ()
) -> str:
    """A machine-made value checked against `grammar`, then MIME parameters.

    Parameter values may be customer text (a file name) and are encoded by `_param_tokens`.
    """
    if not grammar.fullmatch(value):
        raise HeaderError(f"{name}: invalid value {value!r}")
    tokens = [value]
    for param, text in params:
        tokens[-1] += ";"
        tokens += _param_tokens(param, text)
    return fold(name, tokens)


def _param_tokens(param: str, text: str) -> list[str]:
    """`param="text"` when plain and short, else RFC 2231 `param*=utf-8''...` sections."""
    text = clean_text(text)
    if _QUOTABLE.fullmatch(text) and "=?" not in text and len(text) <= PHRASE_ROOM:
        return [f'{param}="{text}"']
    units = [ch if ch in _ATTR_CHAR else "".join(f"%{b:02X}" for b in ch.encode()) for ch in text]
    # Sections end on character boundaries: Python decodes each section on its own.
    sections = ["utf-8''"]
    for unit in units:
        if len(sections[-1]) + len(unit) > PHRASE_ROOM and sections[-1] != "utf-8''":
            sections.append("")
        sections[-1] += unit
    if len(sections) == 1:
        return [f"{param}*={sections[0]}"]
    return [
        f"{param}*{i}*={section}" + ";" * (i < len(sections) - 1)
        for i, section in enumerate(sections)
    ]
