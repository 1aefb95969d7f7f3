"""The work on one message that needs no database, done outside any write transaction.

    guard → parse → reply text → language

These are the stages whose cost grows with what a stranger sent, so they run
before the processor takes the write lock: a slow message delays only itself.
Each message has a processing budget (`[workers] message_seconds`, 20 s), spent
here and in the database stages that follow; it is checked between stages, and a
message past it is quarantined. What bounds one stage is the guard's caps (size,
header block, MIME depth and parts) checked before any parser runs, and linear
text transforms. A stage that never returns is bounded by its hold (`hold_for`):
the lease keeper stops renewing a message past it, its lease runs out, and the
next claim counts an attempt against `MAX_ATTEMPTS`; a worker process also ends
itself then (`maildesk/watchdog.py`), as the stuck stage would otherwise keep
its core, and in C code the whole process, for good.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from maildesk.clock import Clock
from maildesk.config import Settings
from maildesk.inbound.guard import Limits, check
from maildesk.language import Detector
from maildesk.message import ParsedMessage, parse
from maildesk.replies import new_text
from maildesk.tickets.search import document

DEADLINE = timedelta(seconds=20)  # the default of [workers] message_seconds


def hold_for(deadline: timedelta, settings: Settings) -> timedelta:
    """How long a started message keeps its lease renewed: past this, it is stuck.

    Its budget twice over, plus the waits the budget does not count when they are on
    (spamd's round trip, the DKIM/DMARC lookups): 43 s by default, 53 s with spamd."""
    waits = settings.spam.spamd_timeout if settings.spam.spamd_host else 0.0
    if settings.trust.verify_dkim:
        waits += settings.trust.dns_timeout
    return deadline * 2 + timedelta(seconds=waits)


class DeadlineExceeded(Exception):
    """The message used up its processing budget: hold it for a human."""

    def __init__(self, stage: str, limit: timedelta) -> None:
        self.reason = (
            f"processing took longer than {limit.total_seconds():.0f} s (stopped after {stage})"
        )
        super().__init__(self.reason)


class Budget:
    """Processing time spent on one message, across the steps that run for it."""

    def __init__(self, clock: Clock, limit: timedelta = DEADLINE) -> None:
        self._clock = clock
        self.limit = limit
        self._spent = timedelta()
        self._since: datetime | None = None

    def start(self) -> None:
        self._since = self._clock.now()

    def stop(self) -> None:
        if self._since is not None:
            self._spent += self._clock.now() - self._since
            self._since = None

    def check(self, stage: str) -> None:
        """Raise `DeadlineExceeded` once the budget is spent (call between stages)."""
        running = self._clock.now() - self._since if self._since is not None else timedelta()
        if self._spent + running > self.limit:
            raise DeadlineExceeded(stage, self.limit)


@dataclass(frozen=True)
class Prepared:
    """One message ready for the database stages. Not its bytes: a large message
    waiting for the write transaction would hold them for nothing."""

    message: ParsedMessage
    text: str  # the new text of a reply: quotes and signature removed (replies.new_text)
    # Content-Language when it says cs or en, else guessed from `text`; None: too
    # short to tell (a new ticket then takes `[support] language`).
    language: str | None = None
    # What the search index holds for the message's subject and text, folded here,
    # outside the write transaction that stores it (tickets/search.py).
    search_document: str | None = None


def prepare(
    raw: bytes,
    mail_from: str,
    limits: Limits,
    budget: Budget,
    detector: Detector | None = None,
) -> Prepared:
    """Guard, parse and transform one message; raises what the stages raise."""
    check(raw, limits)
    budget.check("the guard")
    message = parse(raw, null_sender=mail_from == "<>")
    budget.check("parsing")
    text = new_text(message.text)
    budget.check("the reply text")
    language = message.language
    if language is None and detector is not None:
        # The customer's own words only: a quoted answer of ours is in the ticket's language.
        language = detector.detect(text)
        budget.check("language detection")
    searched = document(message.subject, message.text)
    budget.check("the search words")
    return Prepared(message, text, language, searched)
