"""Text without diacritics or case, in time linear in its length: "Děkuji" -> "dekuji".

Reply detection (maildesk/replies.py) and search (maildesk/tickets/search.py)
both compare words this way, so `prace` finds and matches `práce`.
"""

from __future__ import annotations

import functools
import re
import sys
import unicodedata


def fold(text: str) -> str:
    """Lower case without combining marks."""
    if text.isascii():  # nothing to decompose; the common case, and a fast one
        return text.casefold()
    # Mostly ASCII (a Czech text): each run of other characters is folded on its own and
    # the ASCII between them stays as it is, instead of decomposing all of it (a third
    # less time). Either way gives the same result, as no character's fold depends on
    # its neighbours: NFKD decomposes each one alone and only reorders the marks it puts
    # side by side, and the marks all go; casefold maps each character alone.
    if len(text.encode("ascii", "ignore")) < len(text) * 7 // 8:
        return _decomposed(text).casefold()  # another script: all of it at once, in C
    # Cut at spaces, in C: the ASCII words are kept without a look, and the others are
    # few and repeat, so a short one is folded once per process. A regular expression
    # looking for the runs took as long as all the rest (on a 3 KB Czech mail: 80 µs
    # of 200, and a Python call per run).
    return " ".join([w if w.isascii() else _fold_word(w) for w in text.split(" ")]).casefold()


def _fold_word(word: str) -> str:
    if len(word) <= _CACHED_WORD:
        return _fold_short_word(word)
    return _NON_ASCII.sub(_fold_run, word)


@functools.lru_cache(maxsize=8192)
def _fold_short_word(word: str) -> str:
    return _NON_ASCII.sub(_fold_run, word)


def _fold_run(found: re.Match[str]) -> str:
    run = found.group()
    if len(run) > _SHORT_RUN:  # a word of another script: decomposed as a whole, in C
        return _decomposed(run)
    return "".join([_fold_character(ch) for ch in run])


@functools.lru_cache(maxsize=4096)
def _fold_character(ch: str) -> str:
    return _decomposed(ch)


def _decomposed(text: str) -> str:
    """`text` in NFKD without combining marks (not yet case-folded)."""
    # The marks go before NFKD too: Python's normalization sorts a run of combining marks in
    # quadratic time (80,000 marks took 10 s), and they would be dropped after it anyway.
    return _without_marks(unicodedata.normalize("NFKD", _without_marks(text)))


def warm() -> None:
    """Build the tables now (about 0.3 s of CPU, once per process): a worker calls this
    as it starts, so its first non-ASCII message does not pay for them."""
    _combining_marks()


def _without_marks(text: str) -> str:
    # Two patterns, because a character class reaching past U+FFFF is matched by a
    # linear walk over its ranges (ten times slower), and such characters are rare.
    bmp, astral = _combining_marks()
    text = bmp.sub("", text)
    return astral.sub("", text) if _ASTRAL.search(text) else text


_ASTRAL = re.compile("[\U00010000-\U0010ffff]")
_NON_ASCII = re.compile("[^\x00-\x7f]+")
# Runs up to this long are folded a character at a time, from a cache; longer ones whole.
_SHORT_RUN = 8
# Words up to this long are kept folded (at most 8192 of them: a few MB at worst).
_CACHED_WORD = 40


@functools.cache
def _combining_marks() -> tuple[re.Pattern[str], re.Pattern[str]]:
    """Runs of characters with a combining class, and the five whose decomposition is only
    such marks (U+0F73, U+0F75, U+0F81, U+FF9E, U+FF9F): with them gone, every run of marks
    that NFKD makes comes from one character and is short. Those up to U+FFFF, and beyond."""
    marks = [cp for cp in range(sys.maxunicode + 1) if unicodedata.combining(chr(cp))]
    marks += [0x0F73, 0x0F75, 0x0F81, 0xFF9E, 0xFF9F]
    ranges: list[list[int]] = []
    for cp in sorted(marks):
        if ranges and cp == ranges[-1][1] + 1:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp])
    bmp = [(a, b) for a, b in ranges if a <= 0xFFFF]
    astral = [(a, b) for a, b in ranges if a > 0xFFFF]
    assert all(b <= 0xFFFF for _, b in bmp)  # no range straddles U+FFFF
    return _runs_of(bmp), _runs_of(astral)


def _runs_of(ranges: list[tuple[int, int]]) -> re.Pattern[str]:
    klass = "".join(f"\\U{a:08x}-\\U{b:08x}" for a, b in ranges)
    return re.compile(f"[{klass}]+")
