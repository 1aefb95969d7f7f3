"""A real SMTP server for tests: aiosmtpd on a free loopback port, in its own thread.

`SmtpSink` records every accepted envelope and lets a test choose the replies
(`reply` for DATA, `rcpt_replies` per recipient), require AUTH, offer STARTTLS or
implicit TLS with a throwaway self-signed certificate (needs the `openssl` binary),
and drop live connections from the server side. Waiting is on a condition with a
deadline, never a sleep. `closed_port()` gives a port where connecting is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Received:
    mail_from: str  # "" for the null reverse-path (aiosmtpd itself reports "<>")
    rcpt_tos: tuple[str, ...]
    content: bytes  # as received, dot-unstuffed, CRLF line ends
    peer: tuple[str, int]  # the client's address: equal peers mean one connection
    login: str | None  # the AUTH user of the session, if any


def free_port() -> int:
    """A loopback port that was free a moment ago (for servers that need a number)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def closed_port() -> Iterator[int]:
    """A loopback port nobody can listen on while the block runs: connecting is refused.

    The port is held bound but not listening, so no other process can take it.
    """
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        yield int(sock.getsockname()[1])


def self_signed_cert(folder: Path) -> tuple[Path, Path]:
    """A certificate and key for CN=localhost, IP 127.0.0.1, made with `openssl`."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


class SmtpSink:
    """Context manager: `with SmtpSink() as sink: ... sink.wait_for(1)`."""

    def __init__(
        self,
        *,
        username: str | None = None,
        password: str | None = None,
        starttls: bool = False,
        implicit_tls: bool = False,
    ) -> None:
        self.username, self.password = username, password
        self.starttls, self.implicit_tls = starttls, implicit_tls
        # Set these before sending; the server thread only reads them.
        self.reply: str | None = None  # DATA's answer; None accepts with "250 OK"
        self.rcpt_replies: dict[str, str] = {}  # address -> refusal, e.g. "550 5.1.1 no"
        # Called in the server's thread at each DATA, before it is answered: what a
        # test looks at while the client waits for the relay.
        self.on_data: Callable[[], None] | None = None
        self.cert_path: Path | None = None  # trust this (cafile=) to verify the sink
        self._cond = threading.Condition()
        self._messages: list[Received] = []
        self._greetings = 0
        self._open: set[SMTP] = set()
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._controller: _Controller | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"{'smtps' if self.implicit_tls else 'smtp'}://{HOST}:{self.port}"

    @property
    def messages(self) -> list[Received]:
        with self._cond:
            return list(self._messages)

    @property
    def sessions(self) -> int:
        """EHLO greetings seen: one per client connection (STARTTLS adds one)."""
        with self._cond:
            return self._greetings

    def wait_for(self, n: int, timeout: float = 5.0) -> list[Received]:
        """The messages once there are at least `n`; TimeoutError at the deadline."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._messages) >= n, timeout):
                raise TimeoutError(f"expected {n} messages, got {len(self._messages)}")
            return list(self._messages)

    def drop_connections(self, timeout: float = 5.0) -> None:
        """Close every client connection from the server side, as an idle timeout does."""
        controller = self._controller
        assert controller is not None
        done = threading.Event()

        def close_all() -> None:
            # abort(): no TLS close_notify exchange to wait for. The sockets close in
            # callbacks queued now, so `done`, queued after them, runs once they are shut.
            with self._cond:
                connections, self._open = list(self._open), set()
            for smtp in connections:
                if isinstance(smtp.transport, asyncio.Transport):
                    smtp.transport.abort()
            controller.loop.call_soon(done.set)

        controller.loop.call_soon_threadsafe(close_all)
        if not done.wait(timeout):
            raise TimeoutError("the server loop did not close the connections")

    def __enter__(self) -> SmtpSink:
        server_tls: ssl.SSLContext | None = None
        if self.starttls or self.implicit_tls:
            self._tmp = tempfile.TemporaryDirectory(prefix="smtp-sink-")
            self.cert_path, key = self_signed_cert(Path(self._tmp.name))
            server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            server_tls.load_cert_chain(self.cert_path, key)
        kwargs: dict[str, Any] = {"server_hostname": "sink.test"}  # no getfqdn() lookup
        if self.username is not None:
            # AUTH offered without TLS too; handle_MAIL demands it (aiosmtpd's own
            # auth_required would warn about plain-text AUTH on every connection).
            kwargs.update(authenticator=self._authenticate, auth_require_tls=False)
        if self.starttls:
            kwargs["tls_context"] = server_tls
        # Bind here, before the thread starts, so the port is known and never raced.
        sock = socket.socket()
        sock.bind((HOST, 0))
        self.port = int(sock.getsockname()[1])
        self._controller = _Controller(
            self, sock, ssl_context=server_tls if self.implicit_tls else None, **kwargs
        )
        self._controller.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._controller is not None:
            with contextlib.suppress(TimeoutError):
                self.drop_connections()
            self._controller.stop()
            self._controller = None
        if self._tmp is not None:
            self._tmp.cleanup()

    # aiosmtpd hooks, called on the server thread.

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = (
            isinstance(data, LoginPassword)
            and data.login == (self.username or "").encode()
            and data.password == (self.password or "").encode()
        )
        return AuthResult(success=ok, handled=False, auth_data=self.username if ok else None)

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        with self._cond:
            self._greetings += 1
        session.host_name = hostname
        return responses

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.username is not None and not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        refusal = self.rcpt_replies.get(address)
        if refusal is not None:
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.on_data is not None:
            self.on_data()
        if self.reply is not None:
            return self.reply
        sender = envelope.mail_from or ""
        with self._cond:
            self._messages.append(
                Received(
                    mail_from="" if sender == "<>" else sender,
                    rcpt_tos=tuple(envelope.rcpt_tos),
                    content=envelope.original_content or b"",
                    peer=tuple(session.peer[:2]),  # type: ignore[index]
                    login=session.auth_data if session.authenticated else None,
                )
            )
            self._cond.notify_all()
        return "250 OK"

    async def handle_exception(self, error: Exception) -> str:
        # aiosmtpd's default is "500 <exception text>": permanent, and a leak.
        return "451 4.3.0 sink error"

    def _connected(self, smtp: SMTP, is_open: bool) -> None:
        with self._cond:
            (self._open.add if is_open else self._open.discard)(smtp)


class _SinkSMTP(SMTP):
    """Reports connections opening and closing, so they can be dropped."""

    def __init__(self, sink: SmtpSink, **kwargs: Any) -> None:
        super().__init__(sink, **kwargs)
        self._sink = sink

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._sink._connected(self, True)

    def connection_lost(self, error: Exception | None) -> None:
        super().connection_lost(error)
        self._sink._connected(self, False)


class _Controller(Controller):
    """aiosmtpd's Controller on a socket bound beforehand (port 0 picks a free port)."""

    def __init__(self, sink: SmtpSink, sock: socket.socket, **kwargs: Any) -> None:
        super().__init__(sink, hostname=HOST, port=sock.getsockname()[1], **kwargs)
        self._sink, self._sock = sink, sock

    def factory(self) -> SMTP:
        return _SinkSMTP(self._sink, **self.SMTP_kwargs)

    def _create_server(self) -> Any:
        return self.loop.create_server(self._factory_invoker, sock=self._sock, ssl=self.ssl_context)
