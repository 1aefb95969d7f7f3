"""What one health answer costs as the history grows: /healthz, `maildesk status`, the
systemd status line.

Makes a database (`maildesk init` on a temp config, SQLite by default) holding
`--history` processed inbound messages and three sent outbox rows for each (an
acknowledgement and two agents' copies), plus `--pending` messages waiting in each
queue, as a desk has after months of mail and during a flood. Then it times, in
this process, `health.check` (what /healthz and `maildesk status` compute), the
status line `serve` sends systemd every 5 seconds and the database read of a
/metrics scrape, and prints the median and p95 CPU milliseconds of each over
`--repeat` calls (a quarter as many scrapes), for each history size; on
PostgreSQL, where the server does the work, the wall milliseconds instead. A
process's first scrape counts every row (`maildesk/growing.py`), and so does one
an hour: it is timed apart from the later ones (`scrapes`); no mail arrives
between them. No ticket rows are made: the tickets' count follows the same path
as the outbox's.

    .venv/bin/python bench/health.py [--history 10000,100000,1000000] [--pending 1000]
        [--repeat 20] [--database-url postgresql+psycopg://…]

Rows are written with bulk inserts (no pipeline runs): what is measured is the
read, not how the rows got there. Nothing is asserted: the script prints figures.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import common
from processing import database  # an empty database: SQLite, or a PostgreSQL schema
from sqlalchemy import insert, text

from maildesk import config, health
from maildesk.clock import ManualClock, SystemClock
from maildesk.db import Database
from maildesk.growing import SETTLE
from maildesk.metrics import DatabaseCollector
from maildesk.models import Inbound, Outbox
from maildesk.schema import upgrade
from maildesk.states import InboundState, OutboxState
from maildesk.supervisor import Supervisor

CHUNK = 20_000
SCRAPE_EVERY = timedelta(seconds=15)
BACKLOG_FIRST = 1_000_000_000


def fill(db: Database, first: int, count: int, state: str, now: datetime) -> None:
    """`count` inbound rows in `state`, each with three outbox rows (sent when done)."""
    sent = state != InboundState.PENDING
    for start in range(first, first + count, CHUNK):
        ids = range(start, min(start + CHUNK, first + count))
        inbound: list[dict[str, Any]] = [
            {
                "id": i,
                "received_at": now - timedelta(seconds=i),
                "source": "smtp",
                "mail_from": f"c{i}@customer.test",
                "peer": "127.0.0.1",
                "rcpt_to": ["support@example.test"],
                "size": 4096,
                "digest": f"{i:064x}",
                "state": state,
                "processed_at": now if sent else None,
            }
            for i in ids
        ]
        outbox: list[dict[str, Any]] = [
            {
                "message_id": f"md.{i}.{copy}@example.test",
                "kind": "acknowledgement" if copy == 0 else "agent_notification",
                "sender": "support@example.test",
                "recipients": [f"c{i}@customer.test"],
                "state": OutboxState.SENT if sent else OutboxState.PENDING,
                "next_attempt_at": now,
                "created_at": now - timedelta(seconds=i),
                "sent_at": now if sent else None,
            }
            for i in ids
            for copy in range(3)
        ]
        with db.transaction() as session:
            session.execute(insert(Inbound), inbound)
            session.execute(insert(Outbox), outbox)


# On SQLite the reads run in this process: its CPU time. On PostgreSQL they run in
# the server: the wall time (nothing else runs meanwhile).
timer = time.process_time


def timed(call: Any, repeat: int) -> tuple[float, float]:
    """Median and p95 milliseconds (`timer`) of `call()` over `repeat` calls."""
    spent = []
    for _ in range(repeat):
        start = timer()
        call()
        spent.append((timer() - start) * 1000)
    return common.median(spent), common.percentile(spent, 95)


def scrapes(
    db: Database, now: datetime, repeat: int
) -> tuple[tuple[float, float], tuple[float, float]]:
    """A fresh collector's first scrape, which counts every row (as each process's
    first does, and one an hour), then `repeat` later ones, which count what arrived
    since. They are `SCRAPE_EVERY` apart on the collector's own clock, timed once
    the first ones' ids have settled (a minute on PostgreSQL, `growing.SETTLE`)."""
    scrape_clock = ManualClock(now)
    collector = DatabaseCollector(db, scrape_clock)

    def next_scrape() -> None:
        scrape_clock.advance(SCRAPE_EVERY)
        list(collector.collect())

    first = timed(lambda: list(collector.collect()), 1)
    for _ in range(SETTLE // SCRAPE_EVERY + 1):
        next_scrape()
    return first, timed(next_scrape, repeat)


def run(args: argparse.Namespace, workdir: Path) -> None:
    global timer
    timer = time.perf_counter if args.database_url else time.process_time
    unit = "wall ms" if args.database_url else "CPU ms"
    sizes = [int(n) for n in args.history.split(",")]
    rows = []
    with database(args, workdir) as url:
        values = {
            "support": {"address": "support@example.test", "base_url": "http://127.0.0.1:1"},
            "database": {"url": url},
            "web": {"secret_key": "bench-" + "k" * 40},
            "outbound": {"url": f"maildir:{workdir / 'outbox'}"},
        }
        settings = config.from_mapping(values, base_dir=workdir)
        db = Database(url)
        upgrade(db)
        clock = SystemClock()
        now = clock.now()
        # A backlog is the newest mail: its ids come after the whole history.
        fill(db, BACKLOG_FIRST, args.pending, InboundState.PENDING, now)
        stored = 0
        status = Supervisor.__new__(Supervisor)  # only its status line: no daemon around it
        status.services = type("S", (), {"db": db})()  # type: ignore[assignment]
        for size in sizes:
            fill(db, 1 + stored, size - stored, InboundState.DONE, now)
            stored = size
            with db.transaction() as session:
                session.execute(text("ANALYZE") if db.is_sqlite else text("ANALYZE inbound"))
            check = timed(lambda: health.check(settings, db, clock), args.repeat)
            line = timed(status.status_line, args.repeat)
            first, scrape = scrapes(db, now, max(args.repeat // 4, 1))
            rows.append(
                [
                    f"{size:,}",
                    f"{args.pending:,}",
                    f"{check[0]:.1f} / {check[1]:.1f}",
                    f"{line[0]:.1f} / {line[1]:.1f}",
                    f"{first[0]:.1f}",
                    f"{scrape[0]:.1f} / {scrape[1]:.1f}",
                ]
            )
        print(f"health reads on {'PostgreSQL' if args.database_url else 'SQLite'}")
        print(common.machine(workdir))
        print(f"maildesk sources {common.code_fingerprint()}\n")
        print(
            common.table(
                [
                    "processed messages kept",
                    "waiting in each queue",
                    f"health.check {unit} (median / p95)",
                    f"status line {unit} (median / p95)",
                    f"/metrics database read {unit}: first scrape",
                    "later scrapes (median / p95)",
                ],
                rows,
            )  # fmt: skip
        )
        print(f"\n{status.status_line()}")
        db.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--history", default="10000,100000,1000000")
    parser.add_argument("--pending", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--database-url", help="PostgreSQL URL (default: SQLite in a temp dir)")
    parser.add_argument("--workdir", type=Path, help="parent of the temp dir (default: $TMPDIR)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = parser.parse_args()
    args.profile = None
    common.run_in_workdir("health", "health", args, run)


if __name__ == "__main__":
    sys.exit(main())
