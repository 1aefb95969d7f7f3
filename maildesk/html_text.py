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
"""

from __future__ import annotations

import html as html_lib
import re
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
        for piece in _NEWLINE.split(text):
            if not piece:
                continue
            if piece == "\n":
                self.parts.append("\n")
                self.line_start = True
                continue
            if self.line_start and prefix:
                piece = prefix + piece.lstrip()
            self.parts.append(piece)
            self.line_start = False

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
        data = html_lib.unescape(_HUGE_CHARREF.sub("&#xFFFD", raw))
        if not self.pre:  # outside <pre>, a line break in the source is just a space
            data = _WHITESPACE.sub(" ", data)
            if self.line_start:
                data = data.lstrip()
        if data:
            self.emit(data)


def html_to_text(html: str) -> str:
    """Readable text from an HTML-only message (for the ticket's text view)."""
    writer = _Writer()
    rest = _tokenize(html, writer)
    if rest < len(html):
        writer.data(_ANY_TAG.sub(" ", html[rest:]))
    text = "\n".join(line.rstrip() for line in "".join(writer.parts).split("\n"))
    return _BLANK_LINES.sub("\n\n", text).strip()


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
