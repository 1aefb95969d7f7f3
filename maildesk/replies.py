"""The new text of a reply (quoted history and signature removed), thanks and approval words.

Our own line-oriented parser, not a library: mail-parser-reply, email-reply-parser, talon,
quotequail, unquotemail and email-reply-extractor each missed several of our formats (the Czech
Gmail, Apple Mail and Outlook quote headers, mutt's attribution, "S pozdravem" signatures, a ">"
line in new text), and talon also drags in scikit-learn and has had no release since 2017.
"""

from __future__ import annotations

import bisect
import itertools
import re
from collections.abc import Iterable

from maildesk.folding import fold

# Non-breaking spaces (Gmail puts U+202F before AM/PM) and the BOM iOS Mail leaves in quotes.
_SPACES = str.maketrans({"\u00a0": " ", "\u202f": " ", "\u2007": " ", "\ufeff": ""})
_ODD_SPACE = re.compile("[\u00a0\u202f\u2007\ufeff]")


def _plain_spaces(text: str) -> str:
    # str.translate looks every character up in a dict; a search finds none much faster,
    # and most mail has none.
    return text.translate(_SPACES) if _ODD_SPACE.search(text) else text


# Attribution lines above a ">"-quoted message; one line, or two joined (Gmail wraps at 78).
_ATTRIBUTIONS = [
    # Gmail, Apple Mail and Thunderbird, en: "On Mon, Nov 23, 2026 at 10:00 AM Alice <a@x> wrote:",
    # "On 23. 11. 2026, at 10:00, Alice <a@x> wrote:", "On 23.11.26 10:00, Alice wrote:"
    # Each pattern takes the leftmost digit and the leftmost "odesílatel" (possessive and atomic:
    # a later one can only leave less room), so a line is read in one pass, not n² or n³.
    re.compile(r"On\b\D*+\d.*\bwrote:$"),
    # Gmail, cs: "po 23. 11. 2026 v 10:00 odesílatel Alice <a@x> napsal:"
    re.compile(r"\D*+\d(?>.*?\bodesílatel\b).+\bnapsal(?:a|\(a\))?:$"),
    # Thunderbird, cs: "Dne 23. 11. 26 v 10:00 Alice napsal(a):"
    re.compile(r"Dne\b\D*+\d.*\bnapsal(?:a|\(a\))?:$"),
    # Apple Mail, cs: "23. 11. 2026 v 10:00, Alice <a@x>:"
    re.compile(r"^\d{1,2}\. ?\d{1,2}\. ?\d{2,4},? v \d{1,2}:\d{2}, .+:$"),
    # mutt with a custom attribution, "* Alice <a@x> [2026-11-23 10:00]:", is _mutt below.
]
# The date of mutt's attribution; `_mutt` looks for it after the line's last "]" but one.
_MUTT_DATE = re.compile(r" \[\d{4}-\d{2}-\d{2}")
# Outlook "-----Original Message-----" / "-----Původní zpráva-----"; Thunderbird's "-------- …".
_SEPARATOR = re.compile(r"^-{3,} ?(?:Original Message|Původní zpráva) ?-{3,}$", re.I)
# Outlook (desktop, web, new) header block: "From:"/"Od:" then "Sent:"/"Odesláno:", "To:"/"Komu:"…
# Gmail renders the labels of an HTML-quoted header in bold: "*From:* …".
_FROM = re.compile(r"^\*?(?:From|Od)\*?: ?\S", re.I)
_HEADER = re.compile(r"^\*?(?:Sent|Date|To|Cc|Subject|Odesláno|Datum|Komu|Kopie|Předmět)\*?:", re.I)
# The rule Outlook (web, new, Mac) draws above that block.
_RULE = re.compile(r"^_{10,}$")
# Signature delimiter "-- " (RFC 3676, Thunderbird, mutt, Gmail); editors often drop the space.
# A reply's new text is looked for in its first MAX_TEXT characters. People write a few KB;
# the reading costs up to ~1 µs per short line, so the cap bounds it to well under a second.
MAX_TEXT = 1 << 20
TRUNCATED = "[…]"
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
    """Lower case without diacritics, spaces of every kind made plain: "Děkuji" -> "dekuji"."""
    return fold(_plain_spaces(text))


def _is_quoted(line: str) -> bool:
    return line.lstrip().startswith(">")


def _next_is_quoted(lines: list[str], start: int) -> bool:
    """Whether the first non-blank line from `start` on is a ">" quote."""
    for i in range(start, len(lines)):  # by index: a slice would copy the rest per call
        if lines[i].strip():
            return _is_quoted(lines[i])
    return False


def _quote_start(lines: list[str]) -> int:
    """Index of the first line of quoted history (a header or separator), or len(lines)."""
    for i, line in enumerate(lines):
        text = line.strip()
        if not text or text[0] == ">":
            continue
        if not (
            text[0] in _HEADER_STARTS
            or text[0].isdecimal()
            or _SENDER_CS in text
            or (i + 1 < len(lines) and _SENDER_CS in lines[i + 1])
        ):
            continue  # no pattern below can match: skip the dozen regexes (most lines)
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
    return any(pattern.match(line) for pattern in _ATTRIBUTIONS) or _mutt(line)


def _mutt(line: str) -> bool:
    """mutt's "* Alice <a@x> [2026-11-23 10:00]:": a date bracket that runs to the final "]"."""
    if not (line.startswith("* ") and line.endswith("]:")):
        return False
    last = line.rfind("]", 0, len(line) - 2)  # the bracket must open after any earlier "]"
    return _MUTT_DATE.search(line, max(3, last + 1), len(line) - 2) is not None


# What a separator, an Outlook header block or an attribution (alone, or joined with the line
# below it) starts with, or contains: the cheap test before the regexes.
_HEADER_STARTS = frozenset("-*FfOoD")
_SENDER_CS = "odesílatel"


# The functions below work on lines[:end] and return a new end, so dropping lines one at a
# time never copies the list (a slice per line made 10^5 blank lines quadratic).


def _drop_trailing_quote(lines: list[str], end: int) -> int:
    """Cut the ">" block that runs to the end; a ">" line with new text below it stays."""
    while end and (not lines[end - 1].strip() or _is_quoted(lines[end - 1])):
        end -= 1
    return end


def _trim(lines: list[str], end: int) -> int:
    while end and not lines[end - 1].strip():
        end -= 1
    return end


def _drop_closing(lines: list[str], end: int, first: int) -> int:
    """Drop a closing salutation and the short name block under it, when text remains above
    (`first` is the first non-blank line)."""
    tail: list[int] = []
    i = end
    while i > first and len(tail) < 6:
        i -= 1
        if lines[i].strip():
            tail.append(i)
    for i in reversed(tail):
        match = _CLOSING.match(lines[i].strip())
        if not match:
            continue
        name = match["name"].split()
        if not all(word[0].isupper() for word in name):
            continue  # "Regards to your team", "Thank you for your patience": a sentence
        if _THANKS_CLOSING.match(match.group(0)) and not (match["punct"] == "," or name):
            continue  # "Thanks!" ends a sentence; only "Thanks,\nPetra" is a sign-off
        block = [lines[j].strip() for j in tail if j > i]
        short = all(len(x) <= 60 and not x.endswith("?") for x in block)
        if short and len(block) <= 5 and not any(x.lower().startswith("p.s") for x in block):
            above = _trim(lines, i)
            if above > first:
                return above
    return end


def new_text(body: str) -> str:
    """The text the writer added: quoted history and signature removed, trailing whitespace
    trimmed. Only the first MAX_TEXT characters are read; a longer text is cut there and ends
    in TRUNCATED, unless its quoted history starts before."""
    truncated = len(body) > MAX_TEXT
    if truncated:
        line_end = body.rfind("\n", 0, MAX_TEXT + 1)  # cut at a line's end if there is one
        body = body[: line_end if line_end > 0 else MAX_TEXT]
    lines = _plain_spaces(body).replace("\r\n", "\n").replace("\r", "\n").split("\n")
    end = _quote_start(lines)
    found_header = end < len(lines)
    for i in range(end):
        if _SIG_DASHES.match(lines[i]):
            end = i
            truncated = False  # the new text ends above the signature, inside what was read
            break
    first = 0
    while first < end and not lines[first].strip():
        first += 1
    if truncated and not found_header:
        # The end of the text is past the cut: its quote block, sign-off or footer is unseen.
        return "\n".join(lines[first:end]).rstrip() + "\n\n" + TRUNCATED
    if not found_header:  # above a header every line is new text, even one starting with ">"
        end = _drop_trailing_quote(lines, end)
    end = _trim(lines, end)
    while True:
        before = end
        if end > first and _MOBILE.match(lines[end - 1].strip()):
            end = _trim(lines, end - 1)
        end = _drop_closing(lines, end, first)
        if end == before:
            break
    return "\n".join(lines[first:end]).rstrip()


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
# Words are separated by at least one space: "(word\s*){1,3}" could split "aaaa!" in n³ ways.
_NAME_LINE = re.compile(r"[^\W\d_][\w.-]*+(?:\s++[^\W\d_][\w.-]*+){0,2}\s*+$")
_VOCATIVE = re.compile(r",\s*+[^\W\d_][\w-]*+(?:\s++[^\W\d_][\w-]*+)?\s*+[!.]*+$")  # "Díky, Petro!"


def _without_names(text: str) -> str:
    """Drop a signed name: a last line of 1-3 capitalised words, or ", Name!" ending a line."""
    lines = [x.strip() for x in text.split("\n") if x.strip()]
    end = len(lines)
    while (
        end > 1
        and _NAME_LINE.match(lines[end - 1])
        and all(w[0].isupper() for w in lines[end - 1].split())
    ):
        end -= 1
    kept = []
    for line in lines[:end]:
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
# It is the last word before the match ("n't": the word "t" after "n'"), found among the words
# of the line by bisection: searching the text before every match made "ne X " * n quadratic.
_NEGATIONS = frozenset({"not", "never", "no", "ne", "nikoli"})
_WORD = re.compile(r"\w+")


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
    ends: list[int] = []
    starts: list[int] = []
    for word in words:
        folded = _fold(word).strip()
        if not folded:
            continue
        for match in re.finditer(rf"(?<!\w){re.escape(folded)}(?!\w)", line):
            if not ends:  # the words of the line, once
                for found in _WORD.finditer(line):
                    starts.append(found.start())
                    ends.append(found.end())
            if not _negated(line, match.start(), starts, ends):
                return True
    return False


# What an agent's answer to a confirmation mail begins with to run its commands.
_AGREEING = frozenset({"yes", "ano", "ok", "confirm", "potvrzuji"})


def agrees(text: str) -> bool:
    """Whether the new text's first line begins with a plain yes ("Yes", "ano.",
    "CONFIRM") and says nothing against it there: no question, no negation. "No. I did
    not send this!" and "yes? I never asked for that" do not agree. Quoted lines and
    their attribution are skipped: the answer may sit below the quoted mail."""
    own = (
        x
        for x in text[:MAX_TEXT].split("\n")
        if x.strip() and not _is_quoted(x) and not _attribution(x.strip())
    )
    lines = list(itertools.islice(own, 2))  # a greeting, and the line below it
    if len(lines) > 1 and _GREETING.match(_fold(lines[0]).strip()):
        lines = lines[1:]
    line = _fold(lines[0] if lines else "").replace("\u2019", "'")
    words = _WORD.findall(line)
    return (
        bool(words)
        and words[0] in _AGREEING
        and "?" not in line
        and "n't" not in line
        and _NEGATIONS.isdisjoint(words)
    )


def _negated(line: str, at: int, starts: list[int], ends: list[int]) -> bool:
    """Whether the last word before `at` (only non-word characters between) is a negation."""
    k = bisect.bisect_right(ends, at) - 1
    if k < 0:
        return False
    start, end = starts[k], ends[k]
    return line[start:end] in _NEGATIONS or (
        line[start:end] == "t" and line[start - 2 : start] == "n'"
    )
