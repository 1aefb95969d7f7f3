"""What a retention purge does to a SQLite file: space freed, reused, and how long it writes.

Run by hand: `.venv/bin/python bench/retention.py --messages 300 --size-kb 100`.
Stores and processes the messages on a ManualClock (each opens a ticket, its
acknowledgement is sent to a Maildir), moves the clock 31 days on, runs the
purge and reports: the file's size and its free pages before and after, each
write transaction's time (the write lock held, the commit's fsync included),
the size of a `VACUUM INTO` copy, and the file after as many messages again.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path

from sqlalchemy.orm import Session

from maildesk import config, retention
from maildesk.clock import ManualClock
from maildesk.inbound.store import Envelope
from maildesk.services import Services, build


def mail(n: int, size: int) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"customer{n}@customer.test"
    msg["To"] = "support@example.test"
    msg["Subject"] = f"Question {n}"
    msg["Message-ID"] = f"<{n}.retention@customer.test>"
    msg.set_content(("x" * 75 + "\n") * (size // 76))
    return msg.as_bytes()


def fill(services: Services, start: int, count: int, size: int) -> None:
    for n in range(start, start + count):
        services.store.put(
            mail(n, size), Envelope("smtp", f"customer{n}@customer.test", ("support@example.test",))
        )
    services.drain_inbound()
    sender = services.sender()
    try:
        while sender.send_due():
            pass
    finally:
        sender.transport.close()


def report(path: Path, label: str) -> None:
    con = sqlite3.connect(path)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = con.execute("PRAGMA page_size").fetchone()[0]
    free = con.execute("PRAGMA freelist_count").fetchone()[0] * size
    con.close()
    print(f"{label}: file {path.stat().st_size / 1e6:.1f} MB, free pages {free / 1e6:.1f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--size-kb", type=int, default=100)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    folder = Path(tempfile.mkdtemp(prefix="maildesk-retention-"))
    path = folder / "maildesk.db"
    values = {
        "support": {"address": "support@example.test", "base_url": "http://x", "language": "en"},
        "database": {"url": f"sqlite:///{path}"},
        "web": {"secret_key": "bench"},
        "outbound": {"url": f"maildir:{folder / 'sent'}"},
        "workers": {"count": 0},
        "trust": {"verify_dkim": False},
        # Every message gets its acknowledgement: the outbox bodies are purged too.
        "limits": {"auto_replies_per_hour_total": 1_000_000},
    }
    settings = config.from_mapping(values, base_dir=folder)
    clock = ManualClock()
    services = build(settings, clock)
    services.prepare()  # the schema
    size = args.size_kb * 1024
    fill(services, 0, args.messages, size)
    report(path, f"{args.messages} x {args.size_kb} KB processed")

    held: list[float] = []
    plain = services.db.transaction

    @contextlib.contextmanager
    def timed(urgent: bool = False) -> Iterator[Session]:
        with plain(urgent) as session:
            started = time.perf_counter()
            yield session
        held.append(time.perf_counter() - started)

    clock.advance(timedelta(days=31))
    services.db.transaction = timed  # type: ignore[method-assign]
    purged = retention.purge(services.db, settings, clock.now())
    services.db.transaction = plain  # type: ignore[method-assign]
    held.sort()
    print(", ".join(f"{kind} {n}" for kind, n in purged.counts.items() if n))
    print(
        f"write transactions: {len(held)}, longest {held[-1] * 1000:.0f} ms, "
        f"median {held[len(held) // 2] * 1000:.0f} ms"
    )
    report(path, "after the purge")
    con = sqlite3.connect(path)
    con.execute(f"VACUUM INTO '{folder / 'compact.db'}'")
    con.close()
    print(f"VACUUM INTO copy: {(folder / 'compact.db').stat().st_size / 1e6:.1f} MB")
    fill(services, args.messages, args.messages, size)
    report(path, f"{args.messages} more")
    services.db.dispose()


if __name__ == "__main__":
    main()
