"""The composition root: builds every part that needs no event loop from settings.

`Services` is what the CLI, the web handlers, the scheduled jobs and the daemon
share; `build` wires it. It imports no listener, so `web/` and `jobs.py` depend
on this module and never on the daemon (`app.py`), which imports it in turn.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.orm import Session

from maildesk import leases
from maildesk.accounts import Accounts
from maildesk.clock import Clock, SystemClock
from maildesk.config import Settings
from maildesk.db import Database
from maildesk.exclusive import exclusive
from maildesk.inbound.room import for_settings
from maildesk.inbound.store import InboundStore
from maildesk.outbound.dkim import Signer, signer_from_settings
from maildesk.outbound.notify import Notifier
from maildesk.outbound.outbox import OutboxSender
from maildesk.outbound.render import Renderer
from maildesk.outbound.transport import open_transport
from maildesk.pipeline.notices import Notices
from maildesk.pipeline.process import Processor
from maildesk.pipeline.threader import Threader
from maildesk.schema import upgrade
from maildesk.tickets.agents import Agents
from maildesk.tickets.tokens import ReplyTokens
from maildesk.web.links import PaidLinks


@dataclass
class Services:
    settings: Settings
    clock: Clock
    db: Database
    store: InboundStore
    renderer: Renderer
    notifier: Notifier
    notices: Notices
    links: PaidLinks
    processor: Processor
    # Accounts work inside a caller's transaction: `services.accounts(session)`.
    accounts: Callable[[Session], Accounts]
    # DKIM for what the senders send; built (and its key checked) once, at start.
    signer: Signer | None = None

    def prepare(self) -> None:
        """Migrate the schema and seed the configured agents (both idempotent).

        Instances starting at once on one PostgreSQL take turns (`exclusive`): the
        second finds the schema migrated and the agents seeded.
        """
        with exclusive(self.db, "maildesk:schema", wait=True):
            upgrade(self.db)
            with self.db.transaction() as session:
                Agents(session).seed(self.settings.agents.addresses, self.clock.now())

    def drain_inbound(self) -> int:
        """Process every due inbound row now; returns how many were processed."""
        total = 0
        while (result := self.processor.process_pending()).processed:
            total += result.processed
        return total

    def sender(self) -> OutboxSender:
        transport = open_transport(self.settings.outbound.url, socket.getfqdn())
        return OutboxSender(
            self.db, transport, self.clock, self.settings.outbound, signer=self.signer
        )


def build(settings: Settings, clock: Clock | None = None) -> Services:
    clock = clock or SystemClock()
    leases.use_length(timedelta(seconds=settings.workers.lease_seconds))
    db = Database(settings.database.url)
    tokens = ReplyTokens(settings.support.address, settings.secret_key())
    renderer = Renderer(settings.templates.path, settings.support.language, clock=clock)
    signer = signer_from_settings(settings)
    notifier = Notifier(settings, renderer, tokens, clock)
    links = PaidLinks(settings.support.base_url, settings.secret_key(), clock)
    secret = settings.secret_key()

    def accounts(session: Session) -> Accounts:
        return Accounts(
            session, clock, secret, settings.support.base_url, settings.web.invitation_days
        )

    notices = Notices(notifier, links, accounts)
    threader = Threader(tokens, settings.support.tag_prefix)
    room = for_settings(settings)
    store = InboundStore(db, clock, room)
    processor = Processor(db, settings, clock, notices, threader, store)
    return Services(
        settings,
        clock,
        db,
        store,
        renderer,
        notifier,
        notices,
        links,
        processor,
        accounts,
        signer,
    )
