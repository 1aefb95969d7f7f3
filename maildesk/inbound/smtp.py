"""SMTP and LMTP in: aiosmtpd on the daemon's own event loop.

The 250 is sent only after `InboundStore.put` committed the bytes. Our own
failure is a 451 (the client retries), never a 5xx and never the exception
text. LMTP wants one reply per recipient; the message is stored once for all
of them, so they share the answer.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import weakref
from collections.abc import Callable
from typing import Any

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Session
from aiosmtpd.smtp import Envelope as SmtpEnvelope

from maildesk.config import SmtpSettings
from maildesk.inbound.store import Envelope, InboundStore

log = logging.getLogger("maildesk.inbound.smtp")

# Protocol replies, named (RFC 5321 / RFC 3463 enhanced codes).
OK_QUEUED = "250 2.0.0 Ok: queued as {id}"
NO_SUCH_USER = "550 5.1.1 <{address}>: no such mailbox here"
TEMPORARY_FAILURE = "451 4.3.0 Temporary local failure, please try again later"
TOO_BIG = "552 5.3.4 Message size exceeds the limit of {limit} bytes"


class InboundHandler:
    def __init__(
        self,
        store: InboundStore,
        support_domain: str,
        on_stored: Callable[[], None],
        *,
        lmtp: bool,
        max_size: int,
    ) -> None:
        self.store = store
        self.support_domain = support_domain.lower()
        self.on_stored = on_stored
        self.lmtp = lmtp
        self.max_size = max_size

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: SmtpEnvelope,
        address: str,
        options: list[str],
    ) -> str:
        # Only our own domain: maildesk is an endpoint, never a relay.
        if address.rpartition("@")[2].lower() != self.support_domain:
            return NO_SUCH_USER.format(address=address)
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: SmtpEnvelope) -> str:
        raw = envelope.original_content or b""
        if len(raw) > self.max_size:
            return TOO_BIG.format(limit=self.max_size)
        inbound = Envelope(
            source="lmtp" if self.lmtp else "smtp",
            mail_from=envelope.mail_from or "<>",
            rcpt_to=tuple(envelope.rcpt_tos),
        )
        loop = asyncio.get_running_loop()
        try:
            spool_id = await loop.run_in_executor(None, self.store.put, raw, inbound)
        except Exception:
            log.exception("could not store a message from %s", session.peer)
            return self._reply(TEMPORARY_FAILURE, envelope)
        self.on_stored()
        return self._reply(OK_QUEUED.format(id=spool_id), envelope)

    async def handle_exception(self, error: Exception) -> str:
        log.error("SMTP session error: %s", type(error).__name__, exc_info=error)
        return TEMPORARY_FAILURE

    def _reply(self, line: str, envelope: SmtpEnvelope) -> str:
        if not self.lmtp:
            return line
        # aiosmtpd pushes our string as-is plus CRLF: one line per recipient.
        return "\r\n".join([line] * max(1, len(envelope.rcpt_tos)))


def tls_context(settings: SmtpSettings) -> ssl.SSLContext | None:
    if not settings.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.tls_cert, settings.tls_key or None)
    return context


class Listener:
    """The listening socket plus its open sessions, so shutdown can end both."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        # Weak: a finished session drops out by itself.
        self.sessions: weakref.WeakSet[SMTP] = weakref.WeakSet()

    @property
    def address(self) -> str:
        sockets = self.server.sockets if self.server else ()
        return ", ".join("{}:{}".format(*s.getsockname()[:2]) for s in sockets)

    async def close(self) -> None:
        """Stop listening and hang up. Nothing is lost: a 250 is sent only after commit."""
        if self.server is not None:
            self.server.close()
        for session in list(self.sessions):
            if session.transport is not None:
                session.transport.close()
        # Let the sessions' handler tasks see the cancellation before the loop ends.
        for _ in range(3):
            await asyncio.sleep(0)


async def start_server(settings: SmtpSettings, handler: InboundHandler, hostname: str) -> Listener:
    """Listen on the configured address; returns the running listener."""
    protocol: type[SMTP] = LMTP if settings.lmtp else SMTP
    context = tls_context(settings)
    kwargs: dict[str, Any] = {
        "data_size_limit": settings.max_message_size,
        "enable_SMTPUTF8": True,
        "hostname": hostname,
        "ident": "maildesk",
    }
    if context is not None:
        kwargs["tls_context"] = context
    listener = Listener()

    def factory() -> SMTP:
        session = protocol(handler, **kwargs)
        listener.sessions.add(session)
        return session

    loop = asyncio.get_running_loop()
    listener.server = await loop.create_server(factory, host=settings.host, port=settings.port)
    return listener
