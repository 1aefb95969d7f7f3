"""How the web listener treats connections: deadlines for headers and bodies, a cap on
their number.

Slowloris holds a server's connections by sending a request's headers a byte
at a time. aiohttp closes a connection that has no complete request waiting
when its keep-alive timer fires, and that timer starts when the connection
opens and again after each response; so `[web] header_timeout` as that timer
is a header-read deadline (and the idle limit between requests). Trickled
bytes do not renew it.

A body is bounded in size by `client_max_size`, and in time by
`[web] body_timeout`: nothing in aiohttp limits how long a handler waits for
the body it reads, so a POST promising 100 kB and sending none held its
connection for good. Its form is read before the handler runs, against that
deadline (trickled bytes do not renew it either); one too slow is answered
408 and its connection closed at once.

A form is read only in the encoding our pages send: urlencoded, in UTF-8 (or
naming no charset). Anything else is answered 415 on its headers, unread, and its
connection closed. aiohttp decodes a form in whatever charset its Content-Type
names, on the event loop: `charset=punycode` is decoded by Python code in
quadratic time (one 600 kB POST held the loop, and so SMTP and every page, 5.6 s),
and a multipart form is read part by part (999 empty fields: 0.2-0.3 s of the
loop), each part maybe in a charset of its own.

A client that asks and never reads the answer (requests pipelined by the
thousand, or an attachment download it stops reading) held its connection for
good: aiohttp writes a response with no deadline, and a few such clients kept
every slot under the caps below, so everyone else got 503. When the client
reads nothing of what waits for it (our write buffer stays full) for
`[web] body_timeout`, its connection is dropped; a client that reads slowly
keeps it.

`[web] max_connections` caps open connections: one more is answered 503 and
closed at once, before any parsing, so a flood cannot exhaust memory or file
descriptors and the listener stays responsive when they go. So does
`[web] max_connections_per_ip` for one client address (an IPv6 /64): without
it one client's sockets, each held until its deadline and opened again, took
every connection and /healthz answered 503 to everyone. A reverse proxy in
`[web] trusted_proxies` is every client at once: its connections are not
counted per address (the client it speaks for is only known from its headers).
"""

from __future__ import annotations

import asyncio
import codecs
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from maildesk.config import WebSettings
from maildesk.web.clientip import ClientAddress, key, parse

_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
    b"Connection: close\r\nRetry-After: 5\r\n\r\n"
)


def handler_options(settings: WebSettings) -> dict[str, Any]:
    """Keyword arguments for web.AppRunner (passed on to every connection's handler)."""
    return {"keepalive_timeout": settings.header_timeout}


def body_deadline(seconds: float) -> Middleware:
    """A POST's form, read whole within `seconds` of its headers, or 408; a body that is
    no form of ours (`_our_form`), 415 unread; one that is no UTF-8, 400."""

    @web.middleware
    async def deadline(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "POST" and request.body_exists:
            if not _our_form(request):
                return await _refused(request, 415)
            try:
                async with asyncio.timeout(seconds):
                    await request.post()  # kept: the handler's own post() returns it
            except TimeoutError:
                return await _refused(request, 408)
            except UnicodeDecodeError:
                # Bytes that are no UTF-8 (not percent-encoded): anyone's form was a 500,
                # and a traceback in the log each time.
                return await _refused(request, 400)
        return await handler(request)

    return deadline


FORM_TYPE = "application/x-www-form-urlencoded"


def _our_form(request: web.Request) -> bool:
    """Whether the body is a form as our pages send it: urlencoded UTF-8. The deadline
    cannot stop a decoder that runs on the loop: it is never given another charset."""
    if request.content_type != FORM_TYPE:
        return False
    if request.charset is None:
        return True
    try:
        return codecs.lookup(request.charset).name == "utf-8"
    except LookupError:
        return False


async def _refused(request: web.Request, status: int) -> web.StreamResponse:
    """Answer `status` and close, without reading (more of) the body."""
    response = web.Response(status=status, headers={"Connection": "close"})
    await response.prepare(request)
    await response.write_eof()
    # Now: aiohttp would otherwise linger, reading the rest of the body for 10 s more.
    request.protocol.force_close()
    return response


class _Busy(asyncio.Protocol):
    """A connection over the cap: told so, and closed."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(_BUSY)
        transport.close()


class _Counted(asyncio.Protocol):
    """aiohttp's handler for one connection, counted until the connection is gone."""

    def __init__(self, inner: asyncio.Protocol, gate: _Gate) -> None:
        self._inner, self._gate = inner, gate
        self._client: str | None = None  # counted per address; None: refused, or a proxy
        self._refused = False
        self._transport: asyncio.Transport | None = None
        self._unread: asyncio.TimerHandle | None = None  # drops a client that reads nothing

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The peer is known only now, after the gate let the connection in.
        peer = transport.get_extra_info("peername")
        admitted, self._client = self._gate.admit(peer[0] if peer else "")
        if not admitted:
            self._refused = True
            _Busy().connection_made(transport)
            return
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._reading()
        self._gate.leave(self._client)
        if not self._refused:
            self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._refused:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return None if self._refused else self._inner.eof_received()

    def pause_writing(self) -> None:
        # Our write buffer is full: the client has read nothing of it for now.
        if self._unread is None and self._transport is not None:
            loop = asyncio.get_running_loop()
            self._unread = loop.call_later(self._gate.send_timeout, self._transport.abort)
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._reading()
        self._inner.resume_writing()

    def _reading(self) -> None:
        if self._unread is not None:
            self._unread.cancel()
            self._unread = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _Gate:
    def __init__(self, server: web.Server, settings: WebSettings) -> None:
        self.server, self.limit, self.open = server, settings.max_connections, 0
        self.per_client = settings.max_connections_per_ip
        self.send_timeout = settings.body_timeout
        self.proxies = ClientAddress(settings.trusted_proxies)
        self.clients: dict[str, int] = {}

    def __call__(self) -> asyncio.Protocol:
        # Counted here, when the connection is accepted, not when aiohttp registers it:
        # a burst of accepts happens before any of them is registered.
        if self.open >= self.limit:
            return _Busy()
        self.open += 1
        return _Counted(self.server(), self)

    def admit(self, peer: str) -> tuple[bool, str | None]:
        """Whether a connection from `peer` may stay, and the address it counts for."""
        address = parse(peer)
        if address is None or self.proxies.is_proxy(address):
            return True, None
        client = key(address)
        if self.clients.get(client, 0) >= self.per_client:
            return False, None
        self.clients[client] = self.clients.get(client, 0) + 1
        return True, client

    def leave(self, client: str | None) -> None:
        self.open -= 1
        if client is not None:
            left = self.clients[client] - 1
            if left:
                self.clients[client] = left
            else:
                del self.clients[client]


class CappedSite(web.BaseSite):
    """A TCP site whose connections pass the gate of `max_connections` (and per address)."""

    def __init__(self, runner: web.BaseRunner, settings: WebSettings) -> None:
        super().__init__(runner)
        self._host, self._port, self._settings = settings.host, settings.port, settings
        self.gate: _Gate | None = None

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        self.gate = _Gate(server, self._settings)
        self._server = await asyncio.get_running_loop().create_server(
            self.gate, self._host, self._port, backlog=self._backlog, reuse_address=True
        )
