"""Reading SMTP DATA into one buffer: what a large message costs while it arrives.

aiosmtpd 1.4 keeps every DATA line as a bytearray object of its own until the
final dot, then joins them: a 24 MB message of 78-byte lines took about 100 MB
before the handler ran. `one_buffer` overrides only `smtp_DATA`, with the same
protocol (replies, the 552 after the dot for oversize mail with nothing kept
past the limit, 500 for an over-long line, dot-unstuffing), but appends what
it reads to one bytearray, so the message costs its own size. The handler gets
that bytearray as `envelope.original_content` and `envelope.content`
(`decode_data` stays off); it is not changed after the handler returns.

While DATA is read, the stream reader's buffer limit is raised from one line
(aiosmtpd's 1001 bytes) to `DATA_BUFFER`: with the line-sized limit the reader
stopped reading the socket whenever it held two lines' worth, so every 4 KB
message paused and resumed the socket (two epoll changes and another read)
several times. And it reads up to each ".<CRLF>" instead of each line: one
read per line was a fifth of serve's CPU under a flood. Over-long lines are
still found by their length, and the first refusal on the wire is the one
sent, so the replies are the same; commands are read with aiosmtpd's limit,
as before.

Unlike aiosmtpd, a session whose connection is gone before the final dot never
calls the handler: only a message ended by its dot is stored.

What every session's unfinished DATA holds together is bounded by a `DataBudget`
(`[smtp] data_memory_mb`): a message that would take it past the budget is read to
its dot and answered 452 (try later), its bytes not kept. Sessions that each sent
most of `max_message_size` and then one line a minute (each line resets the
timeout) held 2.6 GB of serve's memory for as long as they liked. Written against
aiosmtpd 1.4.6 (it uses its `_reader`, `_writer`, `_call_handler_hook` and
`_set_post_data_state`): tests/inbound/test_smtp*.py cover it on an upgrade.
"""

from __future__ import annotations

import asyncio
import logging

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import MISSING, SMTP

log = logging.getLogger("maildesk.inbound.smtp")

# aiosmtpd's own replies, word for word.
START = "354 End data with <CR><LF>.<CR><LF>"
TOO_LONG = "500 Line too long (see RFC5321 4.5.3.1.6)"
TOO_MUCH = "552 Error: Too much mail data"
FULL = "452 4.3.1 Too much mail arriving at once, try again later"
DOT_LINE = b".\r\n"
END = b"\r\n" + DOT_LINE  # a line of a dot alone, after another line
# What the reader may hold during DATA before it stops reading the socket (twice
# this): asyncio's default limit; a message of lines costs a slice of this at most.
DATA_BUFFER = 64 * 1024


class DataBudget:
    """Bytes that DATA not yet ended holds, over all sessions of one listener (one
    event loop: no lock)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, size: int) -> bool:
        if self.held + size > self.limit:
            return False
        self.held += size
        return True

    def give(self, size: int) -> None:
        self.held -= size


def one_buffer(protocol: type[SMTP], budget: DataBudget) -> type[SMTP]:
    """`protocol` (SMTP or LMTP) reading DATA into one bytearray, within `budget`."""

    lmtp = issubclass(protocol, LMTP)

    class OneBuffer(protocol):  # type: ignore[valid-type,misc]
        # The message being read: bytes on the wire so far, and the refusal it earned.
        _md_size = 0
        _md_refusal: str | None = None
        _md_held = 0  # bytes of it counted in `budget`

        async def smtp_DATA(self, arg: str) -> None:
            if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
                return
            assert self.envelope is not None
            if not self.envelope.rcpt_tos:
                await self.push("503 Error: need RCPT command")
                return
            if arg:
                await self.push("501 Syntax: DATA")
                return
            await self.push(START)
            # asyncio's StreamReader keeps its limit in `_limit` (3.8 to 3.13).
            reader = self._reader
            reader._limit = DATA_BUFFER
            try:
                try:
                    content = await self._read_data()
                finally:
                    reader._limit = self.line_length_limit
                await self._answer(content)
            finally:
                # Stored by now, or never to be: the client hung up, timed out (both
                # cancel this task), or the handler failed.
                budget.give(self._md_held)
                self._md_held = 0

        async def _answer(self, content: bytearray | str | None) -> None:
            assert self.envelope is not None
            if content is None:  # the connection went away before the final dot
                return
            if isinstance(content, str):  # refused: every byte was read, nothing kept
                # LMTP answers DATA once per recipient (RFC 2033), a refusal too: a
                # client such as Postfix waits for the rest until its timeout.
                for _ in self.envelope.rcpt_tos if lmtp else (None,):
                    await self.push(content)
                self._set_post_data_state()
                return
            self.envelope.content = self.envelope.original_content = content
            status = await self._call_handler_hook("DATA")
            self._set_post_data_state()
            await self.push("250 OK" if status is MISSING else status)

        async def _read_data(self) -> bytearray | str | None:
            """The unstuffed message, or the refusal to send once the dot arrived.

            Read up to each ".<CRLF>" rather than line by line: every piece then ends a
            line, and it ends the message if it is that line alone. Lines that end with
            a dot are few, so a message takes a few reads instead of one per line.
            """
            content = bytearray()
            self._md_size, self._md_refusal = 0, None
            tail = b""  # the start of a line that a read over the buffer limit cut
            while self.transport is not None:
                try:
                    piece: bytes = await self._reader.readuntil(DOT_LINE)
                    whole = True
                except asyncio.CancelledError:
                    log.info("connection lost during DATA")
                    self._writer.close()
                    raise
                except asyncio.LimitOverrunError as error:  # no dot line in DATA_BUFFER
                    piece = await self._reader.read(error.consumed)
                    whole = False
                data = tail + piece if tail else piece
                if whole:
                    tail = b""
                    if data == DOT_LINE or data.endswith(END):
                        self._take(content, data[: -len(DOT_LINE)])
                        return self._md_refusal or content
                    self._take(content, data)
                    continue
                cut = data.rfind(b"\r\n") + 2 if b"\r\n" in data else 0
                data, tail = data[:cut], data[cut:]
                self._take(content, data)
                if len(tail) > self.line_length_limit:
                    self._refuse(content, TOO_LONG)
                    # Only whether it ends in CR matters now (a CRLF cut in two).
                    tail = tail[-1:]
            return None

        def _take(self, content: bytearray, lines: bytes) -> None:
            """Complete lines (each ending in CRLF): counted, checked, unstuffed, kept."""
            if not lines:
                return
            before, self._md_size = self._md_size, self._md_size + len(lines)
            if self._md_refusal is not None:
                return
            limit, longest = self.data_size_limit, self.line_length_limit
            split = lines.split(b"\r\n")
            if len(max(split, key=len)) + 2 > longest:
                # Whichever came first on the wire: the size crossed by the lines before
                # the first long one, or that line (checked before its size is counted).
                first = next(i for i, line in enumerate(split) if len(line) + 2 > longest)
                earlier = before + sum(len(line) + 2 for line in split[:first])
                self._refuse(content, TOO_MUCH if limit and earlier > limit else TOO_LONG)
            elif limit and self._md_size > limit:
                self._refuse(content, TOO_MUCH)
            elif not budget.take(len(lines)):
                self._refuse(content, FULL)
            else:
                self._md_held += len(lines)
                if lines.startswith(b".") or b"\r\n." in lines:
                    content += b"\r\n".join(
                        line[1:] if line[:1] == b"." else line for line in split
                    )
                else:
                    content += lines

        def _refuse(self, content: bytearray, refusal: str) -> None:
            """The first refusal is the one sent; nothing more is kept."""
            self._md_refusal = self._md_refusal or refusal
            content.clear()  # give the memory back at once
            budget.give(self._md_held)
            self._md_held = 0

    return OneBuffer
