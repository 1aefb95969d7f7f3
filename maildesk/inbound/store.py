"""The inbound store: raw bytes committed durably before anyone says "accepted".

Every route in (SMTP/LMTP, IMAP, `deliver`, `import`) calls `InboundStore.put`
and only answers 250 / exits 0 / moves the IMAP message once it returned.
Nothing here parses mail: the pipeline claims rows later and decides.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select

from maildesk.clock import Clock
from maildesk.db import Database
from maildesk.models import Inbound


@dataclass(frozen=True)
class Envelope:
    source: str  # smtp | lmtp | imap | deliver | import | web
    mail_from: str = ""
    rcpt_to: tuple[str, ...] = ()
    # Importing old mail must not write to customers.
    notify: bool = True


def digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


class InboundStore:
    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    def put(self, raw: bytes, envelope: Envelope) -> int:
        """Commit the bytes; returns the spool id. Raises if they are not stored."""
        return self.put_many([raw], envelope)[0]

    def put_many(self, raws: Sequence[bytes], envelope: Envelope) -> list[int]:
        """Commit several messages in one transaction (one fsync) and return their ids."""
        now = self._clock.now()
        rows = [
            Inbound(
                received_at=now,
                source=envelope.source,
                mail_from=envelope.mail_from,
                rcpt_to=list(envelope.rcpt_to),
                raw=raw,
                size=len(raw),
                digest=digest(raw),
                notify=envelope.notify,
                state="pending",
                attempts=0,
                reason="",
                error="",
            )
            for raw in raws
        ]
        with self._db.transaction() as session:
            session.add_all(rows)
            session.flush()
            return [row.id for row in rows]

    def known_digests(self, digests: Sequence[str]) -> set[str]:
        """Which of these exact byte strings are already stored (for idempotent import)."""
        found: set[str] = set()
        with self._db.transaction() as session:
            for start in range(0, len(digests), 500):
                chunk = list(digests[start : start + 500])
                found.update(
                    session.scalars(select(Inbound.digest).where(Inbound.digest.in_(chunk)))
                )
        return found

    def requeue(self, inbound_id: int) -> bool:
        """Send a quarantined message through the pipeline again, with fresh attempts."""
        with self._db.transaction() as session:
            row = session.get(Inbound, inbound_id)
            if row is None or row.state != "quarantined":
                return False
            row.state = "pending"
            row.attempts = 0
            row.next_attempt_at = None
            row.reason = ""
            row.error = ""
            return True
