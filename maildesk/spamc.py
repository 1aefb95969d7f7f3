"""A small synchronous client of SpamAssassin's spamd protocol (SPAMC/1.5).

It decides nothing about mail: it sends one message with `SYMBOLS`, and returns
spamd's score, spamd's own threshold and the names of the rules that fired.
Everything it does is bounded: one deadline covers connecting, sending and
reading, and the answer is read up to `MAX_RESPONSE` bytes. Any failure (refused,
timed out, a garbled or non-zero answer) is `SpamdUnavailable`, so the caller has
one thing to decide: what to do with mail that could not be scored.

Why not aiospamc: the processor is synchronous and runs in a worker thread, so
an asyncio client would need an event loop per message, and it brings typer,
rich and loguru into the daemon for a protocol of a dozen lines.
"""

from __future__ import annotations

import math
import socket
import time
from dataclasses import dataclass

MAX_RESPONSE = 64 * 1024
PROTOCOL = b"SPAMC/1.5"


class SpamdUnavailable(Exception):
    """spamd could not score the message; the text says why (never the message)."""


class SpamdAnswerUnusable(SpamdUnavailable):
    """spamd answered, but nothing we can use: it is up, and this message goes unscored
    (one message's odd answer must not rest spamd for everyone's mail)."""


@dataclass(frozen=True)
class SpamdResult:
    score: float
    threshold: float  # spamd's own required_score, for the record
    rules: tuple[str, ...]


@dataclass(frozen=True)
class Spamd:
    host: str
    port: int
    timeout: float

    def symbols(self, raw: bytes) -> SpamdResult:
        """Score `raw`; raises SpamdUnavailable when spamd does not answer in time."""
        deadline = time.monotonic() + self.timeout
        request = (b"SYMBOLS " + PROTOCOL + b"\r\nContent-length: %d\r\n\r\n" % len(raw)) + raw
        try:
            with socket.create_connection((self.host, self.port), timeout=self.timeout) as sock:
                _remaining(sock, deadline)
                sock.sendall(request)
                sock.shutdown(socket.SHUT_WR)
                answer = _read(sock, deadline)
        except TimeoutError:
            raise SpamdUnavailable(f"no answer within {self.timeout:g}s") from None
        except OSError as exc:
            raise SpamdUnavailable(f"{type(exc).__name__}: {exc.strerror or exc}") from None
        return parse_response(answer)


def _remaining(sock: socket.socket, deadline: float) -> None:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    sock.settimeout(left)


def _read(sock: socket.socket, deadline: float) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        _remaining(sock, deadline)
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > MAX_RESPONSE:
            raise SpamdAnswerUnusable(f"answer larger than {MAX_RESPONSE} bytes")
        chunks.append(chunk)


def parse_response(answer: bytes) -> SpamdResult:
    """`SPAMD/1.1 0 EX_OK`, headers (`Spam: True ; 7.1 / 5.0`), a blank line, rule names."""
    head, sep, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("ascii", "replace").split("\r\n")
    status = lines[0].split(None, 2)
    if len(status) < 2 or not status[0].startswith("SPAMD/"):
        raise SpamdAnswerUnusable("not a spamd answer")
    if status[1] != "0":
        raise SpamdAnswerUnusable(f"spamd answered {' '.join(status[1:])[:200]}")
    if not sep:
        raise SpamdAnswerUnusable("spamd's answer ended early")
    score = threshold = None
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "spam":
            # "True ; 1002.7 / 5.0"
            numbers = value.partition(";")[2].split("/")
            try:
                score, threshold = float(numbers[0]), float(numbers[1])
            except (IndexError, ValueError):
                raise SpamdAnswerUnusable("unreadable Spam header") from None
            # "nan" compares as no spam at any threshold: no score at all.
            if not (math.isfinite(score) and math.isfinite(threshold)):
                raise SpamdAnswerUnusable("a Spam header without a finite score")
    if score is None or threshold is None:
        raise SpamdAnswerUnusable("spamd's answer has no Spam header")
    text = body.decode("ascii", "replace")
    rules = tuple(r.strip() for r in text.split(",") if r.strip())
    return SpamdResult(score, threshold, rules)
