"""The spam stage: which inbound mail is held as spam instead of becoming a ticket.

A verdict comes from either of two sources, both off unless `[spam]` turns them on:
- our own MTA's headers (`trust_mta_headers`): `X-Spam-Flag: YES`, `X-Spam-Status:
  Yes, score=…`, rspamd's `X-Rspamd-Action`/`X-Spamd-Result`. They are only ever
  believed to say "spam": a stranger who writes `X-Spam-Flag: NO` gains nothing,
  and one who writes `YES` only holds their own mail. Still, a foreign filter's
  markings on legitimate mail would hold it, so only turn this on when the MTA in
  front strips these headers from incoming mail before adding its own;
- SpamAssassin's spamd, asked over its protocol (`maildesk/spamc.py`); a score at
  or above `threshold` is spam.

Held mail keeps its raw bytes: the inbound row's state becomes `held` and a
`SpamHold` row records who judged it, the score and the rules. Nothing is
acknowledged, no agent is told and no ticket is opened. `maildesk spam release`
makes the row pending again, and this stage then lets it through unchecked.
Held mail nobody releases is purged after `[retention] spam_days` (retention.py).

A spamd that is down, slow or garbled never holds mail: the message goes on
unscored, with a WARNING, and `unscored` counts it. A spamd that cannot be
reached or does not answer in time is then left alone for `SPAMD_REST`, so a
silent one delays the queue by one timeout, not one per message; one that
answers something unusable for one message (too long, an error status, no
finite score) is not, or one crafted message would let everyone's spam through.
A helpdesk that stopped answering its customers whenever a filter broke would fail
worse than one that briefly lets spam through, and the caps on automatic replies (per sender and in
total) bound what such a gap can cost.

Mail typed in the portal (a logged-in customer) and `maildesk import` (the
operator's own archive) are not checked: only the routes strangers can write to.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.parser import BytesHeaderParser
from email.policy import compat32

from sqlalchemy.orm import Session

from maildesk import logs
from maildesk.clock import Clock
from maildesk.config import SpamSettings
from maildesk.message import ParsedMessage
from maildesk.models import Inbound, SpamHold
from maildesk.spamc import Spamd, SpamdAnswerUnusable, SpamdUnavailable
from maildesk.states import InboundState

# What it did is logged once its transaction committed (logs.transactional).
log = logs.transactional("maildesk.spam")

CHECKED_SOURCES = frozenset({"smtp", "lmtp", "imap", "deliver"})
# rspamd's actions that mean "this is spam" (greylist and soft reject are not verdicts).
RSPAMD_SPAM_ACTIONS = frozenset({"reject", "add header", "rewrite subject"})
# How long spamd is left alone after it failed.
SPAMD_REST = timedelta(seconds=30)
# Bounds on what a verdict stores: rule names come from headers anyone can write.
MAX_RULES = 100
MAX_RULE_NAME = 64


@dataclass(frozen=True)
class SpamVerdict:
    spam: bool
    by: str = ""  # "mta" | "spamd" | "" (nobody scored it)
    score: float | None = None
    rules: tuple[str, ...] = ()


NOT_SCORED = SpamVerdict(False)


class SpamCheck:
    """Scores raw messages (no database) and holds the spam (in the caller's transaction)."""

    def __init__(self, settings: SpamSettings, clock: Clock) -> None:
        self.settings = settings
        self.clock = clock
        self.spamd = (
            Spamd(settings.spamd_host, settings.spamd_port, settings.spamd_timeout)
            if settings.spamd_host
            else None
        )
        # Messages that went on unscored because spamd failed, since start-up.
        self.unscored = 0
        self._counting = threading.Lock()  # a worker prepares several messages at once
        # After a failure spamd rests until then: a silent spamd costs one timeout,
        # not one per message.
        self._spamd_resting_until: datetime | None = None

    @property
    def enabled(self) -> bool:
        return self.spamd is not None or self.settings.trust_mta_headers

    def score(self, row_id: int, source: str, raw: bytes) -> SpamVerdict:
        """The verdict on one stored message. May ask spamd: call it outside a transaction."""
        if not self.enabled or source not in CHECKED_SOURCES:
            return NOT_SCORED
        if self.settings.trust_mta_headers:
            verdict = mta_verdict(raw)
            if verdict.spam:
                return verdict
        if self.spamd is None:
            return NOT_SCORED
        if len(raw) > self.settings.spamd_max_size:
            log.info("inbound %d not sent to spamd: %d bytes is over the limit", row_id, len(raw))
            return NOT_SCORED
        now = self.clock.now()
        if self._spamd_resting_until is not None and now < self._spamd_resting_until:
            self._count_unscored()
            log.warning("inbound %d goes on unscored: spamd failed moments ago", row_id)
            return NOT_SCORED
        try:
            result = self.spamd.symbols(raw)
        except SpamdAnswerUnusable as exc:
            # spamd is up: only this message goes unscored. Resting here let one crafted
            # message send everyone's spam through unscored for SPAMD_REST.
            self._count_unscored()
            log.warning("inbound %d goes on unscored: %s", row_id, exc)
            return NOT_SCORED
        except SpamdUnavailable as exc:
            self._count_unscored()
            self._spamd_resting_until = now + SPAMD_REST
            log.warning("inbound %d goes on unscored: spamd failed: %s", row_id, exc)
            return NOT_SCORED
        self._spamd_resting_until = None
        spam = result.score >= self.settings.threshold
        return SpamVerdict(spam, "spamd", result.score, _rules(result.rules))

    def _count_unscored(self) -> None:
        with self._counting:
            self.unscored += 1

    def hold_if_spam(
        self,
        session: Session,
        row: Inbound,
        message: ParsedMessage,
        verdict: SpamVerdict,
        now: datetime,
    ) -> bool:
        """Record the hold and say so; False for ham and for a row a human released."""
        if not verdict.spam:
            return False
        hold = session.get(SpamHold, row.id)
        if hold is not None and hold.released_at is not None:
            log.info("inbound %d was released from the spam hold: processed as ham", row.id)
            return False
        if hold is None:
            hold = SpamHold(inbound_id=row.id)
            session.add(hold)
        hold.verdict_by = verdict.by
        hold.score = verdict.score
        hold.rules = ",".join(verdict.rules)
        hold.from_addr = message.from_addr[:320]
        hold.subject = message.subject[:998]
        hold.held_at = now
        log.info(
            "inbound %d held as spam by %s (score %s, %s)",
            row.id,
            verdict.by,
            "-" if verdict.score is None else f"{verdict.score:.1f}",
            hold.rules[:200],
        )
        return True


def release(session: Session, inbound_id: int, now: datetime) -> bool:
    """Put a held message back into the pipeline as ham; False if it is not held."""
    row = session.get(Inbound, inbound_id)
    hold = session.get(SpamHold, inbound_id)
    if row is None or hold is None or row.state != InboundState.HELD:
        return False
    hold.released_at = now
    row.state = InboundState.PENDING
    row.attempts = 0
    row.next_attempt_at = None
    row.processed_at = None
    row.claim = None
    return True


# -- the MTA's verdict -----------------------------------------------------------


def mta_verdict(raw: bytes) -> SpamVerdict:
    """The topmost spam headers of the message, read as SpamAssassin or rspamd wrote them."""
    headers = BytesHeaderParser(policy=compat32).parsebytes(_header_block(raw))

    def first(name: str) -> str:
        value = headers.get(name)
        return " ".join(str(value).split()) if value is not None else ""

    status = first("X-Spam-Status")
    flag = first("X-Spam-Flag").lower()
    if status.lower().startswith("yes") or flag == "yes":
        score, rules = _spamassassin_status(status)
        return SpamVerdict(True, "mta", score, rules)
    result = first("X-Spamd-Result")
    action = first("X-Rspamd-Action").lower()
    if action in RSPAMD_SPAM_ACTIONS or result.lower().startswith("default: true"):
        score, rules = _rspamd_result(result)
        return SpamVerdict(True, "mta", score, rules)
    return NOT_SCORED


def _header_block(raw: bytes) -> bytes:
    """Only the top-level header block: the body may quote other messages' headers."""
    for separator in (b"\r\n\r\n", b"\n\n"):
        end = raw.find(separator)
        if end >= 0:
            return raw[: end + len(separator)]
    return raw


def _spamassassin_status(status: str) -> tuple[float | None, tuple[str, ...]]:
    """`Yes, score=7.2 required=5.0 tests=A,B, C autolearn=no …` (folding undone)."""
    score: float | None = None
    rules: list[str] = []
    in_tests = False
    for token in status.split(" "):
        key, eq, value = token.partition("=")
        if in_tests and not eq:  # a folded continuation of the tests list
            rules.extend(token.split(","))
            continue
        in_tests = False
        if key == "score":
            score = _number(value)
        elif key == "tests":
            in_tests = True
            rules.extend(value.split(","))
    return score, _rules(tuple(rules))


def _rspamd_result(result: str) -> tuple[float | None, tuple[str, ...]]:
    """`default: True [15.20 / 15.00]; R_SPF_FAIL(1.00)[…]; …`"""
    head, _, rest = result.partition(";")
    score = _number(head.partition("[")[2].partition("/")[0])
    names = (part.strip().partition("(")[0] for part in rest.split(";"))
    return score, _rules(tuple(names))


def _number(text: str) -> float | None:
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _rules(names: tuple[str, ...]) -> tuple[str, ...]:
    """Rule names as stored: bounded in number and length, only name characters kept."""
    kept = []
    for name in names:
        clean = "".join(c for c in name.strip() if c.isalnum() or c in "_-.")[:MAX_RULE_NAME]
        if clean:
            kept.append(clean)
        if len(kept) >= MAX_RULES:
            break
    return tuple(kept)
