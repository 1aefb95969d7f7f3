"""HTML to readable text for HTML-only mail, in time linear in the input whatever its shape.

No library does this here. The stdlib's `html.parser.HTMLParser` of this Python re-scans the
rest of the input for every unfinished tag (100 KB of `<a` took 26 s). Lexbor (selectolax)
searches the stack of open elements on every `<div>` (256 KB of nested `<div>`: 8 s, 1 MB:
139 s), and libxml2 (lxml) checks duplicate attributes pairwise and searches the stack for
every stray end tag; it also drops the whole text past 256 (or 2048) levels of nesting.

So this is a tokenizer without a tree, which is all a text view needs: tags matter only for
line breaks, `<blockquote>` depth (quoted history stays recognizable as "> " lines), `<pre>`
and the content of `<script>`, `<style>` and `<head>`, which is dropped. Every scan either
consumes what it reads or reaches the end of the input and stops, so no byte is read more than
a fixed number of times. Past `MAX_TAGS` tags (a long newsletter has a few thousand) the rest
is turned into text in one pass of tag stripping, so the Python loop per tag stays bounded too.

Memory is linear with a small factor as well: every regular expression and split over a long
text makes a Python object per piece it finds, and a piece can be two characters long (16 MB of
`<pre>ab` lines held 890 MB). So long text is worked on in slices of `SLICE` characters, cut
where no step's match can span the cut, and each call of `emit` adds one string to the output.
"""

from __future__ import annotations

import html as html_lib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

# Tags handled one by one; the rest of a larger document is stripped in bulk.
MAX_TAGS = 100_000
# "> " per level of <blockquote>, up to this depth: more would make the text grow as the
# product of depth and lines, not as the input.
MAX_QUOTE_DEPTH = 20

# A start or end tag from its "<": the name, then attributes up to the ">" that is not inside
# a quoted value. Every repeat is possessive and the alternatives start with distinct
# characters, so a match never backtracks; an unclosed quote runs to the end of the input.
_TAG = re.compile(
    r"""<(/?)([A-Za-z][^\s/>]*+)"""
    r"""(?:[^>"'=]++|=\s*+(?:"[^"]*+(?:"|\Z)|'[^']*+(?:'|\Z))|[="'])*+(>?)"""
)
_TAG_START = re.compile(r"</?[A-Za-z]")
# A numeric character reference too large for any code point: html.unescape would turn its
# digits into an int, and past 4300 digits Python refuses (ValueError). U+FFFD either way.
_HUGE_CHARREF = re.compile(r"&#(?:[xX]0*+[0-9a-fA-F]{7,}+|0*+[0-9]{8,}+)")
_SCRIPT_END = re.compile(r"</script(?=[\s/>])", re.IGNORECASE)
_STYLE_END = re.compile(r"</style(?=[\s/>])", re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")
_NEWLINE = re.compile(r"(\n)")
_BLANK_LINES = re.compile(r"\n\s*\n+")
# Bulk stripping past MAX_TAGS: a tag cannot contain "<", so each match ends at the next one.
_ANY_TAG = re.compile(r"<[^<>]*+>")

# Characters of text worked on at once (see the module's docstring).
SLICE = 1 << 12
# Where a slice of text may start: at white space or a reference's "&", so no reference is cut.
# The white space is `\s` (str.isspace) spelled out: read twice as fast as the category.
_TEXT_CUT = re.compile("[&\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]")
# Where a slice of the output may start: at a line break, for the lines' trailing white space;
# at the end of a line with text on it, for runs of blank lines.
_LINE_BREAK = re.compile(r"\n")
_LINE_END = re.compile(r"\n(?<=\S\n)")  # the line break first: it is searched for fast
_TAG_CUT = re.compile(r"<")

_BREAKS = frozenset({"p", "br", "div", "li", "tr", "h1", "h2", "h3", "h4", "blockquote"})
_PARAGRAPHS = frozenset({"p", "h1", "h2", "h3", "h4"})
_SKIPPED = frozenset({"script", "style", "head"})


@dataclass
class _Writer:
    """Text and line state; what a start tag, end tag or piece of text adds to the output."""

    parts: list[str] = field(default_factory=list)
    skip: int = 0
    quote: int = 0
    pre: int = 0
    line_start: bool = True

    def emit(self, text: str) -> None:
        prefix = "> " * min(self.quote, MAX_QUOTE_DEPTH)
        pieces = []
        for piece in _NEWLINE.split(text):
            if not piece:
                continue
            if piece == "\n":
                pieces.append("\n")
                self.line_start = True
                continue
            if self.line_start and prefix:
                piece = prefix + piece.lstrip()
            pieces.append(piece)
            self.line_start = False
        self.parts.append("".join(pieces))

    def start(self, tag: str) -> None:
        if tag in _SKIPPED:
            self.skip += 1
        elif tag in _BREAKS:
            self.emit("\n")
        if tag == "blockquote":
            self.quote += 1
        if tag == "pre":
            self.pre += 1

    def end(self, tag: str) -> None:
        if tag in _SKIPPED and self.skip:
            self.skip -= 1
        if tag in _PARAGRAPHS:  # a paragraph ends with a blank line
            self.emit("\n\n")
        if tag == "pre" and self.pre:
            self.pre -= 1
        if tag == "blockquote" and self.quote:
            self.quote -= 1
            self.emit("\n")

    def data(self, raw: str) -> None:
        if self.skip or not raw:
            return
        if self.pre:
            self._preformatted(raw)
            return
        spaced = False  # the slice before ended in a run of white space, now one space
        for piece in _slices(raw, _TEXT_CUT):
            data = _WHITESPACE.sub(" ", _unescape(piece))  # a line break is just a space
            if spaced and data.startswith(" "):  # the rest of that run
                data = data[1:]
            if self.line_start:
                data = data.lstrip()
            spaced = data.endswith(" ") or (spaced and not data)
            if data:
                self.emit(data)

    def _preformatted(self, raw: str) -> None:
        """Text inside <pre>, as written. `emit` replaces a quoted line's leading white space
        with its "> ", so white space that may lead a line is held back until a slice shows
        what follows it: text (it goes), a line break or the end (the line had only that)."""
        held = False
        for piece in _slices(raw, _TEXT_CUT):
            data = _unescape(piece)
            if held and data.startswith("\n"):
                self.emit(" ")
            tail = data[data.rfind("\n") + 1 :]  # the last line's part
            at_start = len(tail) < len(data) or self.line_start
            held = self.quote > 0 and tail.isspace() and at_start
            if held:
                data = data[: len(data) - len(tail)]
            if data:
                self.emit(data)
        if held:
            self.emit(" ")


def _unescape(text: str) -> str:
    return html_lib.unescape(_HUGE_CHARREF.sub("&#xFFFD", text))


def html_to_text(html: str) -> str:
    """Readable text from an HTML-only message (for the ticket's text view)."""
    writer = _Writer()
    rest = _tokenize(html, writer)
    if rest < len(html):
        writer.data("".join(_ANY_TAG.sub(" ", piece) for piece in _slices(html, _TAG_CUT, rest)))
    text = "".join(writer.parts)
    del writer
    text = "".join(map(_rstrip_lines, _slices(text, _LINE_BREAK)))
    return "".join(_BLANK_LINES.sub("\n\n", piece) for piece in _slices(text, _LINE_END)).strip()


def _rstrip_lines(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.split("\n"))


def _slices(text: str, cut: re.Pattern[str], start: int = 0) -> Iterator[str]:
    """text[start:] in pieces of about `SLICE` characters, each but the first starting where
    `cut` matches."""
    while len(text) - start > SLICE:
        found = cut.search(text, start + SLICE)
        if found is None:
            break
        yield text[start : found.start()]
        start = found.start()
    yield text[start:]


def _tokenize(html: str, writer: _Writer) -> int:
    """Feed tags and text to `writer`; the offset where it stopped: MAX_TAGS reached, or a tag
    that never ends (its quote or its ">" is missing), which a browser would drop whole."""
    i, end, tags = 0, len(html), 0
    while i < end:
        lt = html.find("<", i)
        if lt < 0:
            writer.data(html[i:])
            return end
        if tags >= MAX_TAGS:
            writer.data(html[i:lt])
            return lt
        tags += 1
        nxt = html[lt + 1 : lt + 2]
        if _TAG_START.match(html, lt):
            tag = _TAG.match(html, lt)
            if tag is None or not tag.group(3):  # runs to the end: the rest is stripped in bulk
                writer.data(html[i:lt])
                return lt
            writer.data(html[i:lt])
            name = tag.group(2).lower()
            i = tag.end()
            if tag.group(1):
                writer.end(name)
                continue
            writer.start(name)
            closer = _SCRIPT_END if name == "script" else _STYLE_END if name == "style" else None
            if closer is not None:  # raw text up to the end tag; dropped like the tag says
                raw_end = closer.search(html, i)
                i = raw_end.start() if raw_end else end
            continue
        if nxt == "!" or nxt == "?" or nxt == "/":
            # A comment, doctype, CDATA or processing instruction: none of it is text.
            writer.data(html[i:lt])
            close = "-->" if html.startswith("<!--", lt) else ">"
            found = html.find(close, lt + 2)
            i = end if found < 0 else found + len(close)
            continue
        # A "<" that starts nothing ("a < b") is text.
        writer.data(html[i : lt + 1])
        i = lt + 1
    return end
