"""Transports: where composed outgoing messages go, and what counts as "retry later".

`open_transport` picks a transport from the `[outbound] url`. A transport only moves
bytes: it never edits the message, and SMTP always gets the envelope recipients
explicitly (never read from headers, so a stray `Bcc:` cannot add one). Every failure
is one of two exceptions, which is all the outbox worker needs to decide:
`TemporaryFailure` (retry with back-off) or `PermanentFailure` (mark failed).
Their text is a short reason such as "451 4.3.0 try later" and never holds a password.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import re
import smtplib
import ssl
import time
from collections.abc import Iterator, Sequence
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qsl, unquote, urlsplit


class TemporaryFailure(Exception):
    """Try again later: 4xx, refused/reset/timed-out connection, DNS, local disk."""


class PermanentFailure(Exception):
    """Give up on this message: 5xx, or an envelope no server could accept."""


class Transport(Protocol):
    # True when sending a key again after a crash delivers nothing twice: the outbox
    # may then send several rows before one commit marks them all sent.
    idempotent: bool

    def send(
        self, key: str, sender: str, recipients: Sequence[str], data: bytes, head: bytes = b""
    ) -> None:
        """Deliver `head` then `data` as one message (`head`: header fields added at
        sending, a DKIM signature: the stored bytes are not copied to put it in front)."""

    def flush(self) -> None:
        """Make every send so far durable (the outbox calls it before marking rows sent)."""

    def close(self) -> None: ...


def open_transport(url: str, hostname: str) -> Transport:
    """The transport for `url`; `hostname` is our name in EHLO. ValueError if unusable."""
    if url.startswith("maildir:"):
        return MaildirTransport(Path(url.removeprefix("maildir:")))
    # The message names the scheme only: the URL itself may hold a password.
    parts = urlsplit(url)
    if parts.scheme not in ("smtp", "smtps"):
        raise ValueError(
            f"outbound URL scheme {parts.scheme!r} is not maildir:, smtp:// or smtps://"
        )
    if not parts.hostname or parts.path not in ("", "/"):
        raise ValueError("outbound SMTP URL must be smtp[s]://[user:pass@]host[:port]")
    starttls = False
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name != "starttls" or value.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"outbound SMTP URL: unsupported parameter {name}={value}")
        starttls = value.lower() in ("true", "1", "yes")
    implicit_tls = parts.scheme == "smtps"
    if implicit_tls and starttls:
        raise ValueError("outbound SMTP URL: smtps:// is already TLS; drop starttls")
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    if (username is None) != (password is None):
        raise ValueError("outbound SMTP URL: give both user and password, or neither")
    loopback = parts.hostname in ("localhost", "127.0.0.1", "::1")
    if username and not (implicit_tls or starttls or loopback):
        raise ValueError("outbound SMTP URL: credentials need smtps:// or ?starttls=true")
    return SmtpTransport(
        parts.hostname,
        parts.port or (465 if implicit_tls else 25),
        local_hostname=hostname,
        implicit_tls=implicit_tls,
        starttls=starttls,
        username=username,
        password=password,
    )


# Bytes outside these ("=" among them) are written "=XX".
_UNSAFE = re.compile(rb"[^A-Za-z0-9_.-]")


def _escaped(found: re.Match[bytes]) -> bytes:
    return b"=%02X" % found[0][0]


def maildir_name(key: str) -> str:
    """A file name that is a function of `key` alone and distinct for distinct keys.

    Unsafe bytes (and "=" itself) become "=XX", so the mapping is injective; a leading
    "." is escaped (readers skip dot-files), ":" never survives (it starts the info
    suffix). Long names keep a prefix plus a SHA-256 and have a length (215) no
    unshortened name has (those are at most 200), so the two kinds never meet.
    """
    if not key:
        raise ValueError("empty outbox key")
    name = _UNSAFE.sub(_escaped, key.encode("utf-8")).decode("ascii")
    if name.startswith("."):
        name = "=2E" + name[1:]
    if len(name) > 200:
        name = name[:150] + "=" + hashlib.sha256(key.encode("utf-8")).hexdigest()
    return name


class MaildirTransport:
    """Delivers into a Maildir's new/, once per key, durably (fsync file and folder).

    Each file is fsynced as it is written; the folder once per `flush`, for all the
    renames since the last one.
    """

    idempotent = True  # a key already in new/ or cur/ is not written again

    def __init__(self, root: Path) -> None:
        if not root.is_absolute():
            raise ValueError("maildir: path must be absolute")
        self.root = root
        # Paths as strings: joining Path objects cost a tenth of sending a row.
        self._tmp, self._new, self._cur_dir = (os.fspath(root / sub) for sub in _FOLDERS)
        self._renamed = False  # renames into new/ that no folder fsync covers yet
        self._cur: tuple[int, int, frozenset[str]] | None = None  # (mtime, listed at, names)
        for sub in _FOLDERS:
            (root / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        _fsync_dir(root)

    def send(
        self, key: str, sender: str, recipients: Sequence[str], data: bytes, head: bytes = b""
    ) -> None:
        name = maildir_name(key)  # no "/" in it: the joins below are safe
        # A retry after a crash between rename and the caller's commit must not make a
        # second copy, wherever a reader has moved the first (cur/NAME:2,FLAGS).
        # This check-then-rename is not atomic; the outbox never sends one key twice
        # at the same time, and only a repeat of a finished send needs catching.
        if self._delivered(name):
            return
        tmp = f"{self._tmp}/{name}"
        try:
            # Truncate: a tmp/ leftover of an interrupted attempt is simply rewritten.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with open(fd, "wb") as out:
                out.write(head)
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.rename(tmp, f"{self._new}/{name}")
            self._renamed = True
        except OSError as exc:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise TemporaryFailure(f"maildir write failed: {exc.strerror or exc}") from exc

    def flush(self) -> None:
        if self._renamed:
            try:
                _fsync_dir(self._new)
            except OSError as exc:
                raise TemporaryFailure(f"maildir fsync failed: {exc.strerror or exc}") from exc
            self._renamed = False

    def _delivered(self, name: str) -> bool:
        # access() answers a missing file without raising, as exists() does inside.
        if os.access(f"{self._new}/{name}", os.F_OK):
            return True
        return name in self._read_names()

    def _read_names(self) -> frozenset[str]:
        """The keys in cur/ (a file there is `NAME:2,FLAGS`), listed again only when
        the folder changed: a scan per send cost as much as the Maildir holds.

        A listing is trusted while the folder's mtime is the one seen before and
        older than the listing by more than the filesystem's timestamp tick (ext4
        stamps with a coarse clock): a rename in the same tick as the listing
        would leave the mtime as it was."""
        cur = self._cur_dir
        mtime = os.stat(cur).st_mtime_ns
        cached = self._cur
        if cached is not None and cached[0] == mtime and cached[1] - mtime > _TICK_NS:
            return cached[2]
        listed_at = time.time_ns()
        with os.scandir(cur) as entries:
            names = frozenset(entry.name.split(":", 1)[0] for entry in entries)
        self._cur = (mtime, listed_at, names)
        return names

    def close(self) -> None:
        self.flush()


# Longer than any filesystem's timestamp granularity (ext4's coarse clock: a jiffy).
_TICK_NS = 1_000_000_000


_FOLDERS = ("tmp", "new", "cur")


def _fsync_dir(path: Path | str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# A plain addr-spec: anything smtplib's parseaddr-based quoting could reinterpret
# (CVE-2023-27043), or that could break the command line, is refused up front.
_ADDRESS = re.compile(r'[^\s<>()\[\]",;:\\@\x00-\x1f\x7f]+@[^\s<>()\[\]",;:\\@\x00-\x1f\x7f]+')
_EOL = re.compile(rb"\r\n|\r|\n")
_LINE_START_DOT = re.compile(rb"(?m)^\.")
# Bytes of the message transformed and sent at a time (`data_lines`).
DATA_SLICE = 1 << 20


def data_lines(data: bytes, size: int = DATA_SLICE) -> Iterator[bytes]:
    """`data` as SMTP's DATA carries it, about `size` bytes at a time, each piece
    ending at a line end: every bare CR or LF a CRLF (bare ones are what SMTP
    smuggling is made of; well-formed mail is unchanged), a dot opening a line
    doubled, and a CRLF at the end. smtplib's `data()` makes three whole copies of the
    message for this (a worker sending a 24 MB attachment to two agents over SMTP
    peaked at 236 MB against 139 to a Maildir); here each is a slice."""
    if not data:
        yield b"\r\n"
        return
    view = memoryview(data)
    start = 0
    while start < len(data):
        end = min(start + size, len(data))
        if end < len(data):
            # Cut after a LF, so that no CRLF is split and every piece starts a line (its
            # leading dot is one to double). A longer line (never in mail we compose,
            # whose lines are at most 998 bytes) goes whole.
            cut = data.rfind(b"\n", start, end)
            if cut < 0:
                cut = data.find(b"\n", end)
            end = cut + 1 if cut >= 0 else len(data)
        piece = _LINE_START_DOT.sub(b"..", _EOL.sub(b"\r\n", view[start:end]))
        start = end
        yield piece if start < len(data) or piece.endswith(b"\r\n") else piece + b"\r\n"


class _Disconnected(Exception):
    """The server went away (or said 421) before DATA: nothing was delivered."""


@dataclass(eq=False)  # identity semantics: a transport owns a live connection
class SmtpTransport:
    """One SMTP connection kept open across sends, reopened when the server drops it.

    Not thread-safe: one outbox worker owns one transport. `timeout` (seconds) bounds
    the connect and every reply; `ssl_context` defaults to the system's verifying one.
    """

    # Another conversation after a crash delivers the message again: the outbox marks
    # each row sent as soon as the relay took it.
    idempotent = False

    host: str
    port: int
    _: KW_ONLY
    local_hostname: str = ""  # our EHLO name; "" lets smtplib use the FQDN
    implicit_tls: bool = False
    starttls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout: float = 30.0
    ssl_context: ssl.SSLContext | None = None
    _smtp: smtplib.SMTP | None = field(default=None, init=False, repr=False)

    def send(
        self, key: str, sender: str, recipients: Sequence[str], data: bytes, head: bytes = b""
    ) -> None:
        bad = [a for a in [sender, *recipients] if a and not _ADDRESS.fullmatch(a)]
        if bad or not recipients:
            raise PermanentFailure(
                f"unusable envelope address: {bad[0]!r}" if bad else "no recipients"
            )
        for attempt in (1, 2):
            smtp = self._connection()
            try:
                self._transaction(smtp, sender, recipients, data, head)
                return
            except _Disconnected as exc:
                # Typically an idle connection the server timed out: reconnect once.
                self._drop()
                if attempt == 2:
                    raise TemporaryFailure(self._redact(f"connection lost: {exc}")) from None
            except OSError as exc:
                # Includes a disconnect after DATA began: the message may have arrived, so
                # only the caller's later, backed-off retry resends (SMTP's known duplicate).
                self._drop()
                raise TemporaryFailure(self._redact(f"connection error: {exc}")) from None

    def _transaction(
        self, smtp: smtplib.SMTP, sender: str, recipients: Sequence[str], data: bytes, head: bytes
    ) -> None:
        options = [f"SIZE={len(head) + len(data)}"] if smtp.has_extn("size") else []
        if not (head.isascii() and data.isascii()) and smtp.has_extn("8bitmime"):
            options.append("BODY=8BITMIME")
        if not all(a.isascii() for a in [sender, *recipients]):
            if not smtp.has_extn("smtputf8"):
                raise PermanentFailure("non-ASCII address and the server lacks SMTPUTF8")
            options.append("SMTPUTF8")
            smtp.command_encoding = "utf-8"
        refused: dict[str, tuple[int, bytes]] = {}
        try:
            # Addresses were validated, so they go out verbatim (no parseaddr rewriting).
            code, reply = smtp.docmd("MAIL", f"FROM:<{sender}>" + "".join(" " + o for o in options))
            if code == 421:  # e.g. "421 4.4.2 timeout" queued on an idle connection
                raise _Disconnected(_text(code, reply))
            if code != 250:
                raise self._fail(smtp, code, reply)
            for rcpt in recipients:
                code, reply = smtp.docmd("RCPT", f"TO:<{rcpt}>")
                if code == 421:
                    raise _Disconnected(_text(code, reply))
                if code not in (250, 251):
                    refused[rcpt] = (code, reply)
        except smtplib.SMTPServerDisconnected as exc:
            raise _Disconnected(str(exc)) from None
        listed = "; ".join(f"{a}: {_text(c, r)}" for a, (c, r) in refused.items())
        if any(code < 500 for code, _ in refused.values()):
            # No DATA yet, so RSET leaves nobody with a copy: the caller's retry of the
            # whole message cannot duplicate it for the recipients who were accepted.
            self._reset(smtp)
            raise TemporaryFailure(self._redact(f"recipient deferred: {listed}"))
        if len(refused) == len(recipients):
            self._reset(smtp)
            raise PermanentFailure(self._redact(f"all recipients refused: {listed}"))
        code, reply = smtp.docmd("DATA")
        if code != 354:
            raise self._fail(smtp, code, reply)
        # A head is whole header fields (ending in CRLF): its lines are data's lines.
        for piece in itertools.chain(data_lines(head) if head else (), data_lines(data)):
            smtp.send(piece)
        smtp.send(b".\r\n")
        code, reply = smtp.getreply()
        if code != 250:
            raise self._fail(smtp, code, reply)
        if refused:
            # The accepted recipients have it now; resending would duplicate it for them,
            # so this is final, naming those who did not get it.
            raise PermanentFailure(self._redact(f"delivered except to: {listed}"))

    def _fail(self, smtp: smtplib.SMTP, code: int, reply: bytes | str) -> Exception:
        """Classify a reply; leave the connection clean for the next message."""
        if code == 421:
            self._drop()
        else:
            self._reset(smtp)
        reason = self._redact(_text(code, reply))
        # 530 "authentication required" is about our relay setup, not this message.
        permanent = 500 <= code <= 599 and code != 530
        return PermanentFailure(reason) if permanent else TemporaryFailure(reason)

    def _reset(self, smtp: smtplib.SMTP) -> None:
        try:
            code, _ = smtp.rset()
        except (smtplib.SMTPException, OSError):
            code = 0
        if code != 250:
            self._drop()

    def _connection(self) -> smtplib.SMTP:
        if self._smtp is not None:
            return self._smtp
        # Failures here concern the relay (banner, TLS, AUTH), not this message: even a
        # 5xx (say a wrong password) is temporary, so the outbox waits for a fix
        # instead of failing every queued message.
        smtp: smtplib.SMTP | None = None
        host, port, name = self.host, self.port, self.local_hostname
        context = self.ssl_context or ssl.create_default_context()
        try:
            if self.implicit_tls:
                smtp = smtplib.SMTP_SSL(host, port, name, timeout=self.timeout, context=context)
            else:
                smtp = smtplib.SMTP(host, port, name, self.timeout)
            smtp.ehlo_or_helo_if_needed()
            if self.starttls:
                smtp.starttls(context=context)
                smtp.ehlo_or_helo_if_needed()
            if self.username is not None and self.password is not None:
                smtp.login(self.username, self.password)
        except smtplib.SMTPResponseException as exc:
            reason = _text(exc.smtp_code, exc.smtp_error)
        except (smtplib.SMTPException, OSError) as exc:
            reason = str(exc) or type(exc).__name__
        else:
            self._smtp = smtp
            return smtp
        if smtp is not None:
            smtp.close()
        raise TemporaryFailure(self._redact(f"{self.host}:{self.port}: {reason}"))

    def _drop(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            smtp.close()

    def _redact(self, text: str) -> str:
        if self.password:
            text = text.replace(self.password, "***")
        return text[:300]

    def flush(self) -> None:
        pass  # the relay's 250 made each message its responsibility

    def close(self) -> None:
        if self._smtp is not None:
            with contextlib.suppress(smtplib.SMTPException, OSError):
                self._smtp.quit()
        self._drop()


def _text(code: int, reply: bytes | str) -> str:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    return f"{code} {' '.join(text.split())}"
