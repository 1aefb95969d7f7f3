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
from maildesk.inbound import groupcommit
from maildesk.inbound.recipients import Recipients
from maildesk.inbound.room import NoRoom
from maildesk.inbound.sessions import SessionLimiter, limited
from maildesk.inbound.smtpaddress import parsed_once
from maildesk.inbound.smtpdata import DataBudget, one_buffer
from maildesk.inbound.store import Envelope, InboundStore
from maildesk.outages import describe

log = logging.getLogger("maildesk.inbound.smtp")

# Protocol replies, named (RFC 5321 / RFC 3463 enhanced codes).
OK_QUEUED = "250 2.0.0 Ok: queued as {id}"
NO_SUCH_USER = "550 5.1.1 <{address}>: no such mailbox here"
TEMPORARY_FAILURE = "451 4.3.0 Temporary local failure, please try again later"
SHUTTING_DOWN = "421 4.3.2 Service shutting down, try again later"
TOO_BIG = "552 5.3.4 Message size exceeds the limit of {limit} bytes"
# As Postfix's smtpd_forbid_bare_newline: the SMTP-smuggling shape, refused so the
# sender learns of it (instead of a 250 and a silent quarantine).
BARE_NEWLINE = "554 5.6.0 Message refused: bare LF or CR line ending; end every line with CRLF"
MUST_STARTTLS = "530 5.7.0 Must issue a STARTTLS command first"
# RFC 5321 4.2.3 and RFC 1870: a temporary "no room now"; the client retries (room.py).
NO_ROOM = "452 4.3.1 Insufficient system storage, please try again later"
# RFC 5321 4.5.3.1.10: the client sends the rest in another transaction.
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
OK = "250 2.0.0 Ok"


def _bare_newline(raw: bytes) -> bool:
    """Any LF not preceded by CR, or CR not followed by LF (linear: three counts)."""
    crlf = raw.count(b"\r\n")
    return raw.count(b"\n") != crlf or raw.count(b"\r") != crlf


class InboundHandler:
    def __init__(
        self,
        store: InboundStore,
        support_domain: str,
        *,
        lmtp: bool,
        max_size: int,
        max_recipients: int = 100,
        recipients: Recipients | None = None,
        require_tls: bool = False,
        on_refused: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self.store = store
        self.support_domain = support_domain.lower()
        self.lmtp = lmtp
        self.max_size = max_size
        # Each RCPT is kept until DATA: a million of them, pipelined in one session,
        # grew serve by 90 MB and stored a 21 MB recipient list no size limit counted.
        self.max_recipients = max_recipients
        self.recipients = recipients
        self.require_tls = require_tls
        # Told the reason of every refusal (for /metrics).
        self.on_refused = on_refused

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: SmtpEnvelope,
        address: str,
        options: list[str],
    ) -> str:
        if self.require_tls and session.ssl is None:
            self.on_refused("tls_required")
            return MUST_STARTTLS
        # The size the client announces (RFC 1870), refused before a byte of it is sent;
        # without one, DATA is checked with the bytes it brought.
        if not self.store.fits(_declared_size(options)):
            self.on_refused("disk_full")
            return NO_ROOM
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return OK

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
            self.on_refused("relay")
            return NO_SUCH_USER.format(address=address)
        if self.recipients is not None and not self.recipients.accepts(address):
            self.on_refused("unknown_recipient")
            return NO_SUCH_USER.format(address=address)
        if len(envelope.rcpt_tos) >= self.max_recipients:
            self.on_refused("too_many_recipients")
            return TOO_MANY_RECIPIENTS
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: SmtpEnvelope) -> str:
        raw = envelope.original_content or b""
        if len(raw) > self.max_size:
            self.on_refused("size")
            return self._reply(TOO_BIG.format(limit=self.max_size), envelope)
        if _bare_newline(raw):
            self.on_refused("bare_newline")
            log.info("refused a message with bare LF/CR from %s", session.peer)
            return self._reply(BARE_NEWLINE, envelope)
        inbound = Envelope(
            source="lmtp" if self.lmtp else "smtp",
            mail_from=envelope.mail_from or "<>",
            rcpt_to=tuple(envelope.rcpt_tos),
            peer=_peer_address(session.peer),
        )
        try:
            # Group-committed with every other message waiting (inbound/groupcommit.py):
            # the 250 goes out after the commit that holds these bytes.
            spool_id = await self.store.put_async(raw, inbound)
        except NoRoom:  # logged by the room when refusing starts, not per message
            self.on_refused("disk_full")
            return self._reply(NO_ROOM, envelope)
        except TimeoutError:
            log.error(
                "could not store a message from %s: the database did not answer in time",
                session.peer,
            )
            return self._reply(TEMPORARY_FAILURE, envelope)
        except Exception as exc:
            if groupcommit.logged(exc):  # its traceback is in the log once, not per session
                log.warning("could not store a message from %s (%s): answered 451",
                            session.peer, describe(exc))  # fmt: skip
            else:
                log.exception("could not store a message from %s", session.peer)
            return self._reply(TEMPORARY_FAILURE, envelope)
        # The store's own listeners (InboundStore.on_stored) wake the workers.
        return self._reply(OK_QUEUED.format(id=spool_id), envelope)

    async def handle_exception(self, error: Exception) -> str:
        log.error("SMTP session error: %s", type(error).__name__, exc_info=error)
        return TEMPORARY_FAILURE

    def _reply(self, line: str, envelope: SmtpEnvelope) -> str:
        if not self.lmtp:
            return line
        # aiosmtpd pushes our string as-is plus CRLF: one line per recipient.
        return "\r\n".join([line] * max(1, len(envelope.rcpt_tos)))


def _declared_size(options: list[str]) -> int:
    """MAIL's SIZE=n, else 0 (aiosmtpd has already refused one above the size limit)."""
    for option in options:
        name, _, value = option.partition("=")
        if name.upper() == "SIZE" and value.isascii() and value.isdigit():
            return int(value)
    return 0


def _peer_address(peer: object) -> str:
    """The client's IP address (aiosmtpd gives a (host, port, …) tuple for TCP)."""
    return str(peer[0]) if isinstance(peer, tuple) and peer else ""


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
        self.limiter: SessionLimiter | None = None
        self.budget: DataBudget | None = None

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

    async def drain(self, seconds: float) -> int:
        """Stop accepting, let each session finish the message it is receiving, then close.

        A session between messages is told `421` at once (RFC 5321 3.8: the client
        retries later); one inside a transaction (after MAIL, or in DATA) is left to
        reach its 250 or its error, for up to `seconds`. Returns how many were still
        inside a transaction at the deadline and were cut (their senders retry: nothing
        unanswered was accepted).
        """
        if self.server is not None:
            self.server.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        busy: list[SMTP] = []
        while True:
            busy = []
            for session in list(self.sessions):
                transport = session.transport
                if transport is None or transport.is_closing():
                    continue
                if _in_transaction(session):
                    busy.append(session)
                else:
                    if isinstance(transport, asyncio.WriteTransport):
                        transport.write(SHUTTING_DOWN.encode("ascii") + b"\r\n")
                    transport.close()
            if not busy or loop.time() >= deadline:
                break
            await asyncio.sleep(0.02)
        for session in busy:
            if session.transport is not None:
                session.transport.close()
        for _ in range(3):
            await asyncio.sleep(0)
        return len(busy)


def _in_transaction(session: SMTP) -> bool:
    """Between MAIL FROM and the reply to DATA (aiosmtpd resets the envelope after it)."""
    envelope = getattr(session, "envelope", None)
    return bool(getattr(session, "_md_in_data", False)) or (
        envelope is not None and envelope.mail_from is not None
    )


async def start_server(settings: SmtpSettings, handler: InboundHandler, hostname: str) -> Listener:
    """Listen on the configured address; returns the running listener."""
    listener = Listener()
    listener.limiter = SessionLimiter(settings.max_sessions, settings.max_sessions_per_ip)
    listener.budget = DataBudget(settings.data_memory_mb * 1024 * 1024)
    # DATA read into one buffer (smtpdata.py): a large message costs its size, not 4x.
    # Addresses parsed without a class per command (smtpaddress.py).
    protocol = limited(
        one_buffer(
            parsed_once(LMTP if settings.lmtp else SMTP),
            listener.budget,
        ),
        listener.limiter,
        handler.on_refused,
    )
    context = tls_context(settings)
    kwargs: dict[str, Any] = {
        "data_size_limit": settings.max_message_size,
        "enable_SMTPUTF8": True,
        "hostname": hostname,
        "ident": "maildesk",
        "timeout": settings.timeout,
    }
    if context is not None:
        kwargs["tls_context"] = context

    def factory() -> SMTP:
        session = protocol(handler, **kwargs)
        listener.sessions.add(session)
        return session

    loop = asyncio.get_running_loop()
    listener.server = await loop.create_server(factory, host=settings.host, port=settings.port)
    return listener
