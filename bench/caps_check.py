"""The hourly caps check: its cost with n automatic replies queued in the last hour.

Each new ticket asks, inside its write transaction, whether the caps on automatic
replies are reached (`maildesk/outbound/caps.py`). This script queues 1,000, 10,000
and 50,000 automatic replies spread over the last hour (outbox rows, counted as the
notifier counts them) in a temp SQLite database with the caps at 10 million, as a
busy desk sets them, and times the check: milliseconds per check, mean of 50.

Run from the project root with the project's virtualenv:

    .venv/bin/python bench/caps_check.py

Nothing is asserted: the aim is a cost that does not grow with the hour's replies.
"""

from __future__ import annotations

import tempfile
import time
from datetime import timedelta
from pathlib import Path

import common
from sqlalchemy import insert

from maildesk import config
from maildesk.models import Outbox
from maildesk.outbound import caps
from maildesk.services import build

SIZES = (1_000, 10_000, 50_000)
CAP = 10_000_000


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="maildesk-caps-"))
    path = common.write_config(folder, common.free_port(), common.free_port())
    services = build(config.load(path))
    services.prepare()
    now = services.clock.now()
    queued = 0
    print(f"machine: {common.machine(folder)}")
    for size in SIZES:
        rows = [
            {
                "ticket_id": None,
                "message_id": f"md.{i}@example.test",
                "kind": "acknowledgement",
                "sender": common.SUPPORT,
                "recipients": [f"c{i % 500}@customer.test"],
                "auto_to": f"c{i % 500}@customer.test",
                "state": "sent",
                "attempts": 1,
                "next_attempt_at": now,
                "last_error": "",
                "created_at": now - timedelta(seconds=i * 3600 / SIZES[-1]),
            }
            for i in range(queued, size)
        ]
        with services.db.transaction() as session:
            session.execute(insert(Outbox), rows)
            for row in rows:
                caps.count_automatic(session.connection(), row["created_at"], "")
        queued = size
        since = now - timedelta(hours=1)
        with services.db.reading() as session:
            # compiled once
            caps.caps_reached(session, "c1@customer.test", CAP, CAP, since, proven=False, share=CAP)
            started = time.perf_counter()
            for _ in range(50):
                caps.caps_reached(
                    session, "c1@customer.test", CAP, CAP, since, proven=False, share=CAP
                )
            took = (time.perf_counter() - started) / 50 * 1000
        print(f"{size} automatic replies in the hour: {took:.3f} ms per check")
    services.db.dispose()


if __name__ == "__main__":
    main()
