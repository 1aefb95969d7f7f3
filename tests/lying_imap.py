"""A scripted IMAP server that can lie about sizes, on a free loopback port.

The one stand-in among the IMAP tests, and why: no real server (Dovecot included)
announces a message's RFC822.SIZE and then sends a larger literal, or a body as a
line of megabytes, yet a hostile or broken server can, and the poller must survive
it. So this speaks just the IMAP the poller uses (CAPABILITY, LOGIN, LIST, CREATE,
SELECT, UID SEARCH, UID FETCH of RFC822.SIZE and BODY.PEEK[] whole or partial,
UID MOVE, NOOP, LOGOUT), honestly for ordinary messages. What it sends for a
`Liar` is streamed a chunk at a time, never built whole, so a 200 MB literal costs
this side nothing.
"""

from __future__ import annotations

import io
import re
import socketserver
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import TracebackType

from maildesk.config import ImapSettings

HOST = "127.0.0.1"
CHUNK = 64 * 1024
_FILLER = b"x" * CHUNK


@dataclass
class Liar:
    """A message whose RFC822.SIZE is `announced` while its body is `length` bytes
    (the real bytes past `head` are filler), or, `as_line`, whose body comes as one
    quoted string on the FETCH line. `sizes_literal`: its RFC822.SIZE answer is, once,
    a literal of that many bytes instead of a number."""

    head: bytes
    announced: int
    length: int
    as_line: bool = False
    sizes_literal: int = 0


@dataclass
class _Entry:
    uid: int
    raw: bytes | Liar

    @property
    def size(self) -> int:
        return self.raw.announced if isinstance(self.raw, Liar) else len(self.raw)

    @property
    def length(self) -> int:
        return self.raw.length if isinstance(self.raw, Liar) else len(self.raw)

    def chunks(self, start: int, end: int) -> Iterator[bytes]:
        """The body's bytes from `start` to `end`, a chunk at a time."""
        head = self.raw.head if isinstance(self.raw, Liar) else self.raw
        if start < len(head):
            yield head[start:end]
            start = len(head)
        while start < end:
            n = min(CHUNK, end - start)
            yield _FILLER[:n]
            start += n


@dataclass
class _State:
    folders: dict[str, list[_Entry]] = field(default_factory=lambda: {"INBOX": []})
    next_uid: int = 1
    uidvalidity: int = 7
    chatter: int = 0  # small untagged lines to send, once, before the next SEARCH's answer
    lock: threading.Lock = field(default_factory=threading.Lock)


class LyingImap:
    """`with LyingImap() as server:`; `deliver` a message or a `Liar`; `uids` of a folder."""

    username = "support"
    password = "secret"  # noqa: S105 (a test server's)

    def __init__(self) -> None:
        self._state = _State()
        state = self._state

        class Handler(socketserver.StreamRequestHandler):
            # Replies go out in pieces: Nagle's wait for an ACK cost 40 ms a command.
            disable_nagle_algorithm = True

            def handle(self) -> None:
                try:
                    _Session(state, self.rfile, self.wfile).run()
                except OSError:
                    pass  # the client hung up, as the poller does on a lie

        self._server = socketserver.ThreadingTCPServer((HOST, 0), Handler)
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self.port = int(self._server.server_address[1])
        # shutdown() waits for serve_forever to look at its flag, every poll_interval.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> LyingImap:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def settings(self, **overrides: object) -> ImapSettings:
        fields: dict[str, object] = {
            "host": HOST,
            "port": self.port,
            "ssl": False,
            "username": self.username,
            "password": self.password,
            "idle": False,
        }
        return ImapSettings(**{**fields, **overrides})  # type: ignore[arg-type]

    def deliver(self, raw: bytes | Liar, folder: str = "INBOX") -> int:
        with self._state.lock:
            uid = self._state.next_uid
            self._state.next_uid += 1
            self._state.folders.setdefault(folder, []).append(_Entry(uid, raw))
            return uid

    def recreate(self, uidvalidity: int) -> None:
        """The mailbox made anew (UIDVALIDITY changes): it is empty, and UIDs start at 1."""
        with self._state.lock:
            self._state.folders = {"INBOX": []}
            self._state.next_uid, self._state.uidvalidity = 1, uidvalidity

    def chatter(self, lines: int) -> None:
        """The next SEARCH answer comes after `lines` small untagged responses (each a
        16 bytes, as a server stuck in a loop might send)."""
        with self._state.lock:
            self._state.chatter = lines

    def uids(self, folder: str) -> list[int]:
        with self._state.lock:
            return [entry.uid for entry in self._state.folders.get(folder, [])]


_TOKEN = re.compile(rb'"((?:[^"\\]|\\.)*)"|(\S+)')
_PARTIAL = re.compile(rb"BODY\.PEEK\[\]<(\d+)\.(\d+)>")


def _repeated(line: bytes, count: int) -> Iterator[bytes]:
    """`line` `count` times, a chunk at a time."""
    per_chunk = CHUNK // len(line)
    while count > 0:
        n = min(per_chunk, count)
        yield line * n
        count -= n


def _uid_set(spec: bytes, uids: list[int]) -> set[int]:
    found: set[int] = set()
    top = max(uids, default=0)
    for part in spec.split(b","):
        low, _, high = part.partition(b":")
        first = top if low == b"*" else int(low)
        last = first if not high else top if high == b"*" else int(high)
        found.update(range(min(first, last), max(first, last) + 1))
    return found


class _Session:
    def __init__(self, state: _State, rfile: io.BufferedIOBase, wfile: io.BufferedIOBase) -> None:
        self._state = state
        self._in = rfile
        self._out = wfile
        self._selected: str | None = None

    def _send(self, *parts: bytes | Iterator[bytes]) -> None:
        for part in parts:
            for chunk in [part] if isinstance(part, bytes) else part:
                self._out.write(chunk)
        self._out.flush()

    def run(self) -> None:
        self._send(b"* OK scripted IMAP ready\r\n")
        while True:
            line = self._in.readline()
            if not line:
                return
            words = [m.group(1) if m.group(1) is not None else m.group(2)
                     for m in _TOKEN.finditer(line.rstrip(b"\r\n"))]  # fmt: skip
            tag, command, args = words[0], words[1].upper(), words[2:]
            if command == b"UID":
                command, args = b"UID " + args[0].upper(), args[1:]
            if command == b"LOGOUT":
                self._send(b"* BYE bye\r\n", tag + b" OK LOGOUT done\r\n")
                return
            handler = getattr(self, "_" + command.decode().lower().replace(" ", "_"), None)
            if handler is None:
                self._send(tag + b" BAD unknown command\r\n")
                continue
            with self._state.lock:
                handler(args, line)
            self._send(tag + b" OK done\r\n")

    def _capability(self, args: list[bytes], line: bytes) -> None:
        self._send(b"* CAPABILITY IMAP4rev1 MOVE\r\n")

    def _login(self, args: list[bytes], line: bytes) -> None:
        pass

    def _noop(self, args: list[bytes], line: bytes) -> None:
        pass

    def _list(self, args: list[bytes], line: bytes) -> None:
        name = args[1].decode()
        if name in self._state.folders:
            self._send(b'* LIST () "/" "%s"\r\n' % name.encode())

    def _create(self, args: list[bytes], line: bytes) -> None:
        self._state.folders.setdefault(args[0].decode(), [])

    def _select(self, args: list[bytes], line: bytes) -> None:
        self._selected = args[0].decode()
        count = len(self._state.folders.setdefault(self._selected, []))
        self._send(
            b"* %d EXISTS\r\n* 0 RECENT\r\n" % count,
            b"* FLAGS (\\Seen \\Deleted)\r\n",
            b"* OK [UIDVALIDITY %d] UIDs valid\r\n" % self._state.uidvalidity,
        )

    def _entries(self) -> list[_Entry]:
        assert self._selected is not None
        return self._state.folders[self._selected]

    def _uid_search(self, args: list[bytes], line: bytes) -> None:
        if self._state.chatter:
            lines, self._state.chatter = self._state.chatter, 0
            self._send(_repeated(b"* 70000 RECENT\r\n", lines))
        entries = self._entries()
        numbers = _uid_set(args[0], list(range(1, len(entries) + 1)))
        found = [entries[n - 1].uid for n in sorted(numbers) if n <= len(entries)]
        self._send(b"* SEARCH" + b"".join(b" %d" % uid for uid in found) + b"\r\n")

    def _uid_fetch(self, args: list[bytes], line: bytes) -> None:
        entries = self._entries()
        wanted = _uid_set(args[0], [entry.uid for entry in entries])
        partial = _PARTIAL.search(line)
        for seq, entry in enumerate(entries, 1):
            if entry.uid not in wanted:
                continue
            prefix = b"* %d FETCH (UID %d " % (seq, entry.uid)
            liar = entry.raw if isinstance(entry.raw, Liar) else None
            if b"RFC822.SIZE" in line.upper():
                if liar is not None and liar.sizes_literal:
                    size, liar.sizes_literal = liar.sizes_literal, 0  # lies once
                    literal = b"RFC822.SIZE {%d}\r\n" % size
                    self._send(prefix + literal, entry.chunks(0, size), b")\r\n")
                else:
                    self._send(prefix + b"RFC822.SIZE %d)\r\n" % entry.size)
            elif partial is not None:
                start, count = int(partial.group(1)), int(partial.group(2))
                end = min(entry.length, start + count)
                self._send(prefix + b"BODY[]<%d> {%d}\r\n" % (start, max(0, end - start)))
                self._send(entry.chunks(start, end), b")\r\n")
            elif liar is not None and liar.as_line:
                self._send(prefix + b'BODY[] "', entry.chunks(0, liar.length), b'")\r\n')
            else:
                literal = b"BODY[] {%d}\r\n" % entry.length
                self._send(prefix + literal, entry.chunks(0, entry.length), b")\r\n")

    def _uid_move(self, args: list[bytes], line: bytes) -> None:
        entries = self._entries()
        wanted = _uid_set(args[0], [entry.uid for entry in entries])
        target = self._state.folders.setdefault(args[1].decode(), [])
        # EXPUNGE numbers shift as each goes: report from the last back.
        for seq in range(len(entries), 0, -1):
            if entries[seq - 1].uid in wanted:
                target.append(entries.pop(seq - 1))
                self._send(b"* %d EXPUNGE\r\n" % seq)
