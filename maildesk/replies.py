"""The new text of a reply (quoted history and signature removed), thanks and approval words.

Our own line-oriented parser, not a library: mail-parser-reply, email-reply-parser, talon,
quotequail, unquotemail and email-reply-extractor each missed several of our formats (the Czech
Gmail, Apple Mail and Outlook quote headers, mutt's attribution, "S pozdravem" signatures, a ">"
line in new text), and talon also drags in scikit-learn and has had no release since 2017.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

# Non-breaking spaces (Gmail puts U+202F before AM/PM) and the BOM iOS Mail leaves in quotes.
_SPACES = str.maketrans({"\u00a0": " ", "\u202f": " ", "\u2007": " ", "\ufeff": ""})

# Attribution lines above a ">"-quoted message; one line, or two joined (Gmail wraps at 78).
_ATTRIBUTIONS = [
    # Gmail, Apple Mail and Thunderbird, en: "On Mon, Nov 23, 2026 at 10:00 AM Alice <a@x> wrote:",
    # "On 23. 11. 2026, at 10:00, Alice <a@x> wrote:", "On 23.11.26 10:00, Alice wrote:"
    re.compile(r"^On\b.*\d.*\bwrote:$"),
    # Gmail, cs: "po 23. 11. 2026 v 10:00 odesílatel Alice <a@x> napsal:"
    re.compile(r"^.*\d.*\bodesílatel\b.+\bnapsal(?:a|\(a\))?:$"),
    # Thunderbird, cs: "Dne 23. 11. 26 v 10:00 Alice napsal(a):"
    re.compile(r"^Dne\b.*\d.*\bnapsal(?:a|\(a\))?:$"),
    # Apple Mail, cs: "23. 11. 2026 v 10:00, Alice <a@x>:"
    re.compile(r"^\d{1,2}\. ?\d{1,2}\. ?\d{2,4},? v \d{1,2}:\d{2}, .+:$"),
    # mutt with a custom attribution: "* Alice <a@x> [2026-11-23 10:00]:"
    re.compile(r"^\* .+ \[\d{4}-\d{2}-\d{2}[^\]]*\]:$"),
]
# Outlook "-----Original Message-----" / "-----Původní zpráva-----"; Thunderbird's "-------- …".
_SEPARATOR = re.compile(r"^-{3,} ?(?:Original Message|Původní zpráva) ?-{3,}$", re.I)
# Outlook (desktop, web, new) header block: "From:"/"Od:" then "Sent:"/"Odesláno:", "To:"/"Komu:"…
# Gmail renders the labels of an HTML-quoted header in bold: "*From:* …".
_FROM = re.compile(r"^\*?(?:From|Od)\*?: ?\S", re.I)
_HEADER = re.compile(r"^\*?(?:Sent|Date|To|Cc|Subject|Odesláno|Datum|Komu|Kopie|Předmět)\*?:", re.I)
# The rule Outlook (web, new, Mac) draws above that block.
_RULE = re.compile(r"^_{10,}$")
# Signature delimiter "-- " (RFC 3676, Thunderbird, mutt, Gmail); editors often drop the space.
_SIG_DASHES = re.compile(r"^-- ?$")
# Mobile clients' footers: iOS Mail, Outlook mobile, Android, Windows Mail, in en and cs.
_MOBILE = re.compile(
    r"^(?:Sent from (?:my )?\S.*|Get Outlook for \S.*|Odesláno (?:z|ze|pomocí) \S.*"
    r"|Posláno z \S.*|Stáhněte si Outlook pro \S.*)$",
    re.I,
)
# Closing salutations, en and cs, alone on a line or followed by a name: "Best regards, Petra".
_CLOSING = re.compile(
    r"^(?:(?:best|kind|warm|warmest|kindest|many thanks and best) regards|regards|best"
    r"|best wishes|all the best|cheers|sincerely|yours sincerely|yours truly|thanks|thank you"
    r"|many thanks|s pozdravem|s přátelským pozdravem|se srdečným pozdravem|srdečně"
    r"|s úctou|děkuji a s pozdravem|děkuji|děkujeme|díky|hezký den|přeji hezký den|zdraví)"
    r"(?P<punct>[,.!]?)(?P<name>(?: \w[\w.-]*){0,3})$",
    re.I,
)
_THANKS_CLOSING = re.compile(r"^(?:thanks|thank you|many thanks|děkuji|děkujeme|díky)", re.I)


def _fold(text: str) -> str:
    """Lower case without diacritics: "Děkuji" -> "dekuji"."""
    decomposed = unicodedata.normalize("NFKD", text.translate(_SPACES))
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def _is_quoted(line: str) -> bool:
    return line.lstrip().startswith(">")


def _next_is_quoted(lines: list[str], start: int) -> bool:
    """Whether the first non-blank line from `start` on is a ">" quote."""
    for line in lines[start:]:
        if line.strip():
            return _is_quoted(line)
    return False


def _quote_start(lines: list[str]) -> int:
    """Index of the first line of quoted history (a header or separator), or len(lines)."""
    for i, line in enumerate(lines):
        text = line.strip()
        if not text or _is_quoted(line):
            continue
        if _SEPARATOR.match(text):
            return i
        if (
            _FROM.match(text)
            and sum(bool(_HEADER.match(x.strip())) for x in lines[i + 1 : i + 5]) >= 2
        ):
            above = i - 1
            return above if above >= 0 and _RULE.match(lines[above].strip()) else i
        if _attribution(text) and _next_is_quoted(lines, i + 1):
            return i
        after = lines[i + 1].strip() if i + 1 < len(lines) else ""
        if after and not _attribution(after) and _attribution(f"{text} {after}"):
            if _next_is_quoted(lines, i + 2):
                return i
    return len(lines)


def _attribution(line: str) -> bool:
    return any(pattern.match(line) for pattern in _ATTRIBUTIONS)


def _drop_trailing_quote(lines: list[str]) -> list[str]:
    """Cut the ">" block that runs to the end; a ">" line with new text below it stays."""
    end = len(lines)
    while end and (not lines[end - 1].strip() or _is_quoted(lines[end - 1])):
        end -= 1
    return lines[:end]


def _trim(lines: list[str]) -> list[str]:
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    return lines


def _drop_closing(lines: list[str]) -> list[str]:
    """Drop a closing salutation and the short name block under it, when text remains above."""
    tail = [i for i, line in enumerate(lines) if line.strip()][-6:]
    for i in tail:
        match = _CLOSING.match(lines[i].strip())
        if not match:
            continue
        name = match["name"].split()
        if not all(word[0].isupper() for word in name):
            continue  # "Regards to your team", "Thank you for your patience": a sentence
        if _THANKS_CLOSING.match(match.group(0)) and not (match["punct"] == "," or name):
            continue  # "Thanks!" ends a sentence; only "Thanks,\nPetra" is a sign-off
        block = [x.strip() for x in lines[i + 1 :] if x.strip()]
        short = all(len(x) <= 60 and not x.endswith("?") for x in block)
        if short and len(block) <= 5 and not any(x.lower().startswith("p.s") for x in block):
            above = _trim(lines[:i])
            if any(x.strip() for x in above):
                return above
    return lines


def new_text(body: str) -> str:
    """The text the writer added: quoted history and signature removed, trailing whitespace
    trimmed."""
    lines = body.translate(_SPACES).replace("\r\n", "\n").replace("\r", "\n").split("\n")
    cut = _quote_start(lines)
    found_header = cut < len(lines)
    lines = lines[:cut]
    for i, line in enumerate(lines):
        if _SIG_DASHES.match(line):
            lines = lines[:i]
            break
    if not found_header:  # above a header every line is new text, even one starting with ">"
        lines = _drop_trailing_quote(lines)
    lines = _trim(lines)
    while True:
        before = len(lines)
        if lines and _MOBILE.match(lines[-1].strip()):
            lines = _trim(lines[:-1])
        lines = _drop_closing(lines)
        if len(lines) == before:
            break
    while lines and not lines[0].strip():
        lines = lines[1:]
    return "\n".join(lines).rstrip()


# Anything that also asks or reports something: a question, a contrast, a negation, a problem.
_CONTRARY = re.compile(
    r"\?|n't\b|\b(?:but|however|though|although|still|not|no|nope|never|yet|unfortunately"
    r"|except|error|errors|fail|fails|failed|broken|crash|crashes|bug|ale|avsak|vsak|jenze"
    r"|stale|porad|bohuzel|zase|chyba|chybu|pada|spadlo|ne\w*)\b"
)
_THANKS = re.compile(
    r"\b(?:thanks?|thank you|thx|thnx|tnx|ty|dekuj\w*|diky|dik|dikec|works?|working|fixed"
    r"|solved|resolved|funguje|vyreseno|vyresen[aey]?|opraveno|pomohlo)\b"
)
# Words a thank-you or confirmation is made of; anything else means the writer says more.
_ALLOWED = set(
    """hi hello hey dear dobry den ahoj zdravim thanks thank thx thnx tnx ty you u cheers many
    much very so a lot million for the your quick fast prompt help support fix fixing assistance
    answer reply response info information again once more all guys team and to is it it's that
    this everything works work working now fine perfectly perfect great awesome excellent super
    ok okay good got understood confirmed solved resolved fixed problem issue helped did trick
    like charm set dekuji dekujeme dekuju dekujem diky dik dikec moc mockrat pekne velice velmi
    srdecne za pomoc rychlou rychlou odpoved opravu podporu informaci vyreseni radu funguje uz
    vse vsechno spravne perfektne je to v poradku vyreseno vyresen vyresena vyresene opraveno
    pomohlo skvele vyborne parada perfektni bezva dobre jasne rozumim potvrzuji jeste jednou i
    regards best kind s pozdravem hezky prijemny mejte se have nice day weekend vikend opravdu
    fakt really truly""".split()
)
_NAME_LINE = re.compile(r"^(?:[^\W\d_][\w.-]*\s*){1,3}$")
_VOCATIVE = re.compile(r",\s*(?:[^\W\d_][\w-]*\s*){1,2}[!.]*$")  # "Díky, Petro!"


def _without_names(text: str) -> str:
    """Drop a signed name: a last line of 1-3 capitalised words, or ", Name!" ending a line."""
    lines = [x.strip() for x in text.split("\n") if x.strip()]
    while (
        len(lines) > 1
        and _NAME_LINE.match(lines[-1])
        and all(w[0].isupper() for w in lines[-1].split())
    ):
        lines = lines[:-1]
    kept = []
    for line in lines:
        match = _VOCATIVE.search(line)
        if match and all(w[0].isupper() for w in match.group(0).strip(",!. ").split()):
            line = line[: match.start()]
        kept.append(line)
    return "\n".join(kept)


def is_only_thanks(text: str) -> bool:
    """True when the new text is nothing but thanks/confirmation, cs or en: "Děkuji", "Díky!",
    "Děkujeme, funguje to.", "Thanks!", "Thank you, works now", "Many thanks", "thx" ... but
    False for "Thanks, but it still does not work" / "Děkuji, ale pořád to nefunguje" or any text
    that also asks/reports something (a question mark, "but"/"ale"/"however"/"stále"/"pořád"/
    "still"/"not"/"ne…" negation words, or more than a short sentence or two).
    Diacritics-insensitive and case-insensitive. A whole body may be passed: quotes are stripped.
    """
    folded = _fold(_without_names(new_text(text))).replace("\u2019", "'")
    if _CONTRARY.search(folded) or not _THANKS.search(folded):
        return False
    words = re.findall(r"[a-z0-9']+", folded)
    sentences = [s for s in re.split(r"[.!;\n]+", folded) if s.strip(" ,:-)(")]
    return len(words) <= 20 and len(sentences) <= 3 and all(w in _ALLOWED for w in words)


# A negation right before the word: "I do not approve", "don't APPROVE", "NE SCHVALUJI".
_NEGATED = re.compile(r"(?:\bnot|n't|\bnever|\bno|\bne|\bnikoli)\W*$")


_GREETING = re.compile(
    r"^(dobry den|dobre rano|dobry vecer|ahoj|zdravim|hello|hi|hey|dear|good (morning|afternoon|"
    r"evening))\b[^.!?]{0,40}[,!]?$"
)


def has_word(text: str, words: Iterable[str]) -> bool:
    """Whether the new text's first non-empty line contains one of `words` as a whole word (case-
    and diacritics-insensitive) — used for approval words like "SCHVALUJI"/"APPROVE" and
    confirmation words like "POTVRZUJI"/"CONFIRM". A whole body may be passed: a quoted word never
    counts, and neither does one right after a negation ("do not approve").
    """
    lines = [x for x in new_text(text).split("\n") if x.strip()]
    # "Dobrý den,\nSCHVALUJI": a greeting line does not hide the answer below it.
    if len(lines) > 1 and _GREETING.match(_fold(lines[0]).strip()):
        lines = lines[1:]
    line = _fold(lines[0] if lines else "").replace("\u2019", "'")
    for word in words:
        folded = _fold(word).strip()
        if not folded:
            continue
        for match in re.finditer(rf"(?<!\w){re.escape(folded)}(?!\w)", line):
            if not _NEGATED.search(line[: match.start()]):
                return True
    return False
