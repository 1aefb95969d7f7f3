"""Debian's SpamAssassin, offline, scores every customer notification below 1.0.

Each customer-facing template is rendered in both languages with the sample data
and sent through the Notifier, so the bytes scored are the bytes the outbox sends.
All messages go to one `spamassassin --mbox` run: its rule compilation is the
slow part. Network tests are off (-L) and Bayes is off, so the score depends on
the message alone.
"""

from __future__ import annotations

import email
import email.policy
import mailbox
import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from maildesk import templates_admin
from maildesk.services import Services
from tests.test_templates import queue_every_notification

SPAMASSASSIN = shutil.which("spamassassin")
THRESHOLD = 1.0

pytestmark = pytest.mark.skipif(
    SPAMASSASSIN is None,
    reason="spamassassin is not installed (apt-get install spamassassin; .ci/run does it)",
)


def scores(messages: list[bytes], tmp_path: Path) -> dict[str, tuple[float, str]]:
    """Message-ID -> (score, rules that fired), from one offline SpamAssassin run."""
    box = mailbox.mbox(tmp_path / "in.mbox")
    for raw in messages:
        box.add(mailbox.mboxMessage(raw))
    box.close()
    assert SPAMASSASSIN is not None
    result = subprocess.run(
        [SPAMASSASSIN, "-L", "-x", "--mbox", "--cf=use_bayes 0", "--cf=bayes_auto_learn 0"],
        stdin=(tmp_path / "in.mbox").open("rb"),
        capture_output=True,
        timeout=300,
        check=True,
    )
    (tmp_path / "out.mbox").write_bytes(result.stdout)
    found = {}
    for message in mailbox.mbox(tmp_path / "out.mbox"):
        status = " ".join(str(message["X-Spam-Status"]).split())
        match = re.search(r"score=(-?[\d.]+) .*tests=(.*?) autolearn=", status)
        assert match, status
        rules = match.group(2).replace(" ", "")
        found[str(message["Message-ID"])] = (float(match.group(1)), rules)
    assert len(found) == len(messages), result.stderr.decode(errors="replace")
    return found


def test_every_customer_notification_scores_below_one(services: Services, tmp_path: Path) -> None:
    queued = queue_every_notification(services, templates_admin.customer_templates())
    assert {name for name, _, _ in queued} >= {
        "acknowledgement",
        "agent_reply",
        "resolved",
        "closed",
        "paid_notice",
        "status_changed",
        "waiting_customer",
    }
    found = scores([raw for _, _, raw in queued], tmp_path)
    report = []
    for name, lang, raw in queued:
        message = email.message_from_bytes(raw, policy=email.policy.default)
        score, rules = found[str(message["Message-ID"])]
        report.append(f"{name:<18} {lang} {score:>5.1f} {rules}")
    print("\n".join(report))  # shown with -s or on failure: which rules to fix
    too_high = [line for line in report if float(line.split()[2]) >= THRESHOLD]
    assert not too_high, "\n".join(too_high)


def test_spamassassin_really_scores(tmp_path: Path) -> None:
    """A control, so a silently broken rule set cannot pass the test above."""
    date = email.utils.format_datetime(datetime(2026, 1, 5, tzinfo=UTC))
    shouting = (
        "From: WINNER <promo@example.test>\r\nTo: you@example.test\r\n"
        f"Date: {date}\r\nSubject: FREE MONEY!!! ACT NOW\r\n\r\n"
        "CLICK HERE to claim your FREE prize!!! 100% GUARANTEED. Act now!\r\n"
    ).encode()
    [(score, rules)] = scores([shouting], tmp_path).values()
    assert score >= THRESHOLD, rules
