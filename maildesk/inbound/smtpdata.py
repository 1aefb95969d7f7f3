"""Reading SMTP DATA into one buffer: what a large message costs while it arrives.

aiosmtpd 1.4 keeps every DATA line as a bytearray object of its own until the
final dot, then joins them: a 24 MB message of 78-byte lines took about 100 MB
before the handler ran. `one_buffer` overrides only `smtp_DATA`, with the same
protocol (replies, the 552 after the dot for oversize mail with nothing kept
past the limit, 500 for an over-long line, dot-unstuffing), but appends each
line to one bytearray, so the message costs its own size. The handler gets
that bytearray as `envelope.original_content` and `envelope.content`
(`decode_data` stays off); it is not changed after the handler returns.

While DATA is read, the stream reader's buffer limit is raised from one line
(aiosmtpd's 1001 bytes) to `DATA_BUFFER`: with the line-sized limit the reader
stopped reading the socket whenever it held two lines' worth, so every 4 KB
message paused and resumed the socket (two epoll changes and another read)
several times. Over-long lines are still found by their length, so the replies
are the same; commands are read with aiosmtpd's limit, as before.

Unlike aiosmtpd, a session whose connection is gone before the final dot never
calls the handler: only a message ended by its dot is stored. Written against
aiosmtpd 1.4.6 (it uses its `_reader`, `_writer`, `_call_handler_hook` and
`_set_post_data_state`): tests/inbound/test_smtp*.py cover it on an upgrade.
"""

from __future__ import annotations

import asyncio
import logging

from aiosmtpd.smtp import MISSING, SMTP

log = logging.getLogger("maildesk.inbound.smtp")

# aiosmtpd's own replies, word for word.
START = "354 End data with <CR><LF>.<CR><LF>"
TOO_LONG = "500 Line too long (see RFC5321 4.5.3.1.6)"
TOO_MUCH = "552 Error: Too much mail data"
# What the reader may hold during DATA before it stops reading the socket (twice
# this): asyncio's default limit; a message of lines costs a slice of this at most.
DATA_BUFFER = 64 * 1024


def one_buffer(protocol: type[SMTP]) -> type[SMTP]:
    """`protocol` (SMTP or LMTP) reading DATA into one bytearray."""

    class OneBuffer(protocol):  # type: ignore[valid-type,misc]
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
                content = await self._read_data()
            finally:
                reader._limit = self.line_length_limit
            if content is None:  # the connection went away before the final dot
                return
            if isinstance(content, str):  # refused: every byte was read, nothing kept
                await self.push(content)
                self._set_post_data_state()
                return
            self.envelope.content = self.envelope.original_content = content
            status = await self._call_handler_hook("DATA")
            self._set_post_data_state()
            await self.push("250 OK" if status is MISSING else status)

        async def _read_data(self) -> bytearray | str | None:
            """The unstuffed message, or the refusal to send once the dot arrived."""
            content = bytearray()
            size, limit = 0, self.data_size_limit
            refusal: str | None = None
            line_start = True  # the next bytes read begin a line
            while self.transport is not None:
                try:
                    line: bytes = await self._reader.readuntil(b"\r\n")
                except asyncio.CancelledError:
                    log.info("connection lost during DATA")
                    self._writer.close()
                    raise
                except asyncio.LimitOverrunError as error:  # longer than the line limit
                    refusal = refusal or TOO_LONG
                    line = await self._reader.read(error.consumed)  # drained, not kept
                if line_start and line == b".\r\n":
                    return refusal or content
                size += len(line)
                if refusal is None and limit and size > limit:
                    refusal = TOO_MUCH
                line_start = line.endswith(b"\r\n")
                if refusal is None and len(line) > self.line_length_limit:
                    refusal = TOO_LONG
                if refusal is not None:
                    content.clear()  # give the memory back at once
                elif line.startswith(b"."):
                    content += memoryview(line)[1:]
                else:
                    content += line
            return None

    return OneBuffer
