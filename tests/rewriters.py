"""What link rewriters and mail clients make of a link, and what a reader makes of it back.

The rewriting side is written from the rewriters' documented formats (Proofpoint's own
decoder, Sophos' `u=`); the reading side is what anyone with those decoders could do
with a page, so a test can tell that nothing of a token is left to find.
"""

from __future__ import annotations

import base64
import html
import re
from urllib.parse import quote, unquote

SAFELINKS = "https://eur01.safelinks.protection.outlook.com/?url="


def safelinks(url: str) -> str:
    return f"{SAFELINKS}{quote(url, safe='')}&data=05%7C01%7Ccarol%40acme.test&reserved=0"


def proofpoint_v2(url: str) -> str:
    """As URL Defense v2 rewrites a link: percent-encoded, then `-` for `%`, `_` for `/`."""
    encoded = quote(url, safe="/").replace("-", "-2D").replace("_", "-5F")
    return (
        "https://urldefense.proofpoint.com/v2/url?u="
        + encoded.replace("%", "-").replace("/", "_")
        + "&d=DwMFaQ&c=euGZstcaTDllvimEN8b7jXrwqOf-v5A_CdpgnVfiiMM&r=Pz4xy&m=kJ9s&s=Qx1v&e="
    )


def proofpoint_v3(url: str, starred: str = "%#") -> str:
    """As URL Defense v3 rewrites a link: each character of `starred` a `*` (a run of
    them `**` and a letter for its length), listed in base64 after `__;`."""
    listed = "".join(ch for ch in url if ch in starred)
    wrapped = re.sub(
        f"[{re.escape(starred)}]{{2,}}",
        lambda run: "**" + chr(ord("A") + len(run.group()) - 2),
        url,
    )
    wrapped = re.sub(f"[{re.escape(starred)}]", "*", wrapped)
    encoded = base64.urlsafe_b64encode(listed.encode()).decode().rstrip("=")
    return f"https://urldefense.com/v3/__{wrapped}__;{encoded}!!ACWV5N9M2RV99hQ!Ob3Lk$"


def sophos(url: str) -> str:
    """As Sophos Email rewrites a link: the URL in base64, percent-encoded, in `u=`."""
    encoded = quote(base64.b64encode(url.encode()).decode(), safe="")
    return (
        "https://eu-central-1.protection.sophos.com?d=example.test&u="
        + encoded
        + "&i=NjNhOGE5&t=dWpHc2Rt&h=8b2f9d0c&s=AVNPUEhUT0NFTkNSWVBUSVaWMr"
    )


def wrapped(text: str, *cuts: int, prefix: str = "> ") -> str:
    """`text` quoted and broken at `cuts`, as a client wraps a long line."""
    pieces = [text[start:end] for start, end in zip((0, *cuts), (*cuts, len(text)), strict=True)]
    return "\n".join(prefix + piece for piece in pieces)


def readings(text: str) -> list[str]:
    """What a reader can make of `text` (or a page of HTML) with the rewriters' own
    decoders: lines joined, percent-encoding undone, Proofpoint's v2 `u=` decoded, and
    runs of base64 decoded."""
    text = html.unescape(text)
    joined = re.sub(r"=?\r?\n[> \t]*", "", text)
    v2 = re.sub(
        r"(?<=/v2/url\?u=)[^&\s]+",
        lambda m: m.group().replace("-", "%").replace("_", "/"),
        joined.replace("=3D", "="),
    )
    found = [text, joined, v2]
    for _ in range(3):
        found.append(unquote(found[-1]))
    for run in re.findall(r"[A-Za-z0-9+/_-]{16,}", found[-1]):
        for skip in range(4):
            data = run[skip:].replace("-", "+").replace("_", "/")
            data = data[: len(data) - (len(data) % 4 == 1)]
            data += "=" * (-len(data) % 4)
            found.append(unquote(base64.b64decode(data).decode("latin-1")))
    return found


def pieces(token: str) -> list[str]:
    """Any 12 characters of the token would do to recognize it."""
    return [token[i : i + 12] for i in range(0, len(token) - 12, 6)]


def leaks(text: str, token: str) -> bool:
    """Whether any reading of `text` holds a piece of `token`."""
    return any(piece in reading for reading in readings(text) for piece in pieces(token))
