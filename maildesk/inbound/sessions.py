"""Who may hold an SMTP/LMTP session open, and for how long.

Decided before any handler hook runs:
- caps on concurrent sessions, in all (`[smtp] max_sessions`) and per client
  address (`max_sessions_per_ip`; an IPv6 client by its /64, `peers.py`: counted
  by address, one host with a /64 held every session, and everyone else's mail
  got 421 for as long as it liked). Over either, the client gets
  `421 4.7.0` and the connection is closed (RFC 5321 3.8: a server may
  refuse a session it cannot serve; a real MTA retries later).
- the slowloris bound (`[smtp] timeout`): a command line, and each line of
  DATA, must be complete within that many seconds. aiosmtpd's own timer is
  reset only by a valid command, so during DATA we reset it on every line end
  that arrives: a sender streaming a large message is never cut off, one
  trickling a line byte by byte is.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiosmtpd.smtp import SMTP

from maildesk.peers import key, parse

log = logging.getLogger("maildesk.inbound.smtp")

TOO_MANY = "421 4.7.0 Too many connections, try again later"
TOO_MANY_FROM_YOU = "421 4.7.0 Too many connections from your address, try again later"


class SessionLimiter:
    """Counts open sessions, in all and per client address (one event loop: no lock)."""

    def __init__(self, max_sessions: int, max_per_ip: int) -> None:
        self.max_sessions = max_sessions
        self.max_per_ip = max_per_ip
        self._per_ip: dict[str, int] = {}
        self.active = 0

    def admit(self, ip: str) -> str | None:
        """Count a new session in; returns the refusal line when it is over a cap."""
        if self.active >= self.max_sessions:
            return TOO_MANY
        if self._per_ip.get(ip, 0) >= self.max_per_ip:
            return TOO_MANY_FROM_YOU
        self.active += 1
        self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        return None

    def release(self, ip: str) -> None:
        self.active -= 1
        left = self._per_ip.get(ip, 1) - 1
        if left > 0:
            self._per_ip[ip] = left
        else:
            self._per_ip.pop(ip, None)


def _ip(transport: asyncio.BaseTransport) -> str:
    """The client a session counts for: its address, or its /64 for IPv6."""
    peer = transport.get_extra_info("peername")
    text = str(peer[0]) if isinstance(peer, tuple) and peer else ""
    address = parse(text)
    return text if address is None else key(address)


def limited(
    protocol: type[SMTP], limiter: SessionLimiter, on_refused: Callable[[str], None]
) -> type[SMTP]:
    """`protocol` (SMTP or LMTP) with the session caps and the per-line deadline."""

    class Limited(protocol):  # type: ignore[valid-type,misc]
        _md_ip: str | None = None
        _md_counted = False
        _md_refused = False
        _md_in_data = False

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            # Called again with the TLS transport after STARTTLS: count a session once.
            if self._md_ip is None:
                ip = _ip(transport)
                refusal = limiter.admit(ip)
                if refusal is not None:
                    self._md_refused = True
                    log.warning("refused a session from %s: %s", ip, refusal[10:])
                    on_refused("session_cap")
                    assert isinstance(transport, asyncio.WriteTransport)
                    transport.write(refusal.encode("ascii") + b"\r\n")
                    transport.close()
                    return
                self._md_ip, self._md_counted = ip, True
            super().connection_made(transport)

        def connection_lost(self, error: Exception | None) -> None:
            if self._md_refused:
                return
            if self._md_counted and self._md_ip is not None:
                limiter.release(self._md_ip)
                self._md_counted = False
            super().connection_lost(error)

        def data_received(self, data: bytes) -> None:
            if self._md_refused:
                return
            super().data_received(data)
            if self._md_in_data and b"\n" in data:
                self._reset_timeout()

        def eof_received(self) -> bool | None:
            if self._md_refused:
                return False
            result: bool | None = super().eof_received()
            return result

        async def smtp_DATA(self, arg: str) -> None:
            self._md_in_data = True
            try:
                await super().smtp_DATA(arg)
            finally:
                self._md_in_data = False

    return Limited
