"""Which `next` targets a redirect after login may go to: our own paths, nothing else.

Browsers forgive a lot in a Location header: they drop tabs and newlines
(`/\t/evil.test` becomes `//evil.test`, another host), read `\\` as `/`, and
a scheme-relative `//host` or `https:` leaves the site. So a target is
accepted only when it is printable ASCII, starts with exactly one `/`, holds
no backslash, and still does after percent-decoding (a few rounds, for the
double-encoded forms); anything else sends the person to the default page.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

MAX_LENGTH = 2000
_DECODE_ROUNDS = 3
_PRINTABLE_PATH = re.compile(r"/[!-~]*")  # no space, no control, no non-ASCII


def is_local_path(value: str) -> bool:
    """Whether redirecting to `value` stays on this site, however a browser reads it."""
    if len(value) > MAX_LENGTH:
        return False
    form = value
    for _ in range(_DECODE_ROUNDS + 1):
        if not _safe_form(form):
            return False
        try:
            decoded = unquote(form, errors="strict") if "%" in form else form
        except UnicodeDecodeError:
            return False
        if decoded == form:
            return True
        form = decoded
    return False  # still encoded after several rounds: nobody needs that


def _safe_form(form: str) -> bool:
    if not _PRINTABLE_PATH.fullmatch(form) or form[1:2] == "/" or "\\" in form:
        return False
    parts = urlsplit(form)
    return not parts.scheme and not parts.netloc
