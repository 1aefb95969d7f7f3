"""The agents' daily digest after a flood: how long it holds the write transaction.

Run by hand: `.venv/bin/python bench/digest.py --tickets 3000 --agents 5`.
Stores `--tickets` new unassigned tickets, one in 50 from a customer of its own
and the rest from one monitor (a flood), on SQLite in a temp dir, then runs the digest
job once and prints its time and the time of its write transaction (SQLite's
write lock, held while processing waits) and the size of one agent's digest.
To measure another tree, run it with `PYTHONPATH` naming that tree (README,
"Benchmarks").
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session, selectinload

from maildesk import config, jobs
from maildesk.clock import ManualClock
from maildesk.models import Outbox, Person, Ticket
from maildesk.services import Services, build


def flooded_desk(tickets: int, agents: int) -> tuple[Services, ManualClock]:
    """A desk on SQLite in a temp dir with `tickets` new unassigned tickets, one in 50
    from a customer of its own and the rest from one monitor (alerts@monitor.test)."""
    folder = Path(tempfile.mkdtemp(prefix="maildesk-flooded-"))
    settings = config.from_mapping(
        {
            "support": {"address": "support@example.test", "language": "en"},
            "database": {"url": f"sqlite:///{folder / 'maildesk.db'}"},
            "web": {"secret_key": "bench"},
            "outbound": {"url": f"maildir:{folder / 'outbox'}"},
            "agents": {"addresses": [f"agent{n}@example.test" for n in range(agents)]},
        },
        base_dir=folder,
    )
    clock = ManualClock()
    services = build(settings, clock)
    services.prepare()
    now = clock.now()
    with services.db.transaction() as session:
        addresses = ["alerts@monitor.test"] + [f"c{n}@x.test" for n in range(tickets // 50)]
        session.execute(insert(Person), [{"email": e, "created_at": now} for e in addresses])
        monitor, *customers = session.scalars(select(Person.id).order_by(Person.id)).all()
        rows = [
            {
                "subject": f"Disk full on host{n}",
                "requester_id": customers[n // 50 - 1] if n % 50 == 0 and n else monitor,
                "created_at": now,
                "updated_at": now,
            }
            for n in range(tickets)
        ]
        session.execute(insert(Ticket), rows)
    return services, clock


def timed_transactions(services: Services) -> list[float]:
    """The time of each `services.db.transaction` from now on, in ms, as they end."""
    held: list[float] = []
    transaction = services.db.transaction

    @contextmanager
    def timed(*given: Any, **named: Any) -> Iterator[Session]:
        start = time.perf_counter()
        with transaction(*given, **named) as session:
            yield session
        held.append((time.perf_counter() - start) * 1000)

    services.db.transaction = timed  # type: ignore[method-assign]
    return held


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tickets", type=int, default=3000)
    parser.add_argument("--agents", type=int, default=5)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    services, _clock = flooded_desk(args.tickets, args.agents)

    transaction = services.db.transaction
    held = timed_transactions(services)
    start = time.perf_counter()
    sent = jobs.digest(services)
    took = time.perf_counter() - start
    services.db.transaction = transaction  # type: ignore[method-assign]
    with services.db.reading() as session:
        digests = select(Outbox).where(Outbox.kind == "agent_digest")
        one = session.scalars(digests.options(selectinload(Outbox.body))).first()
        size = len(one.raw) if one is not None else 0
    print(
        f"{args.tickets} tickets waiting, {args.agents} agents: {sent} digests in "
        f"{took * 1000:.0f} ms, the write transaction held "
        f"{', '.join(f'{h:.0f}' for h in held)} ms; one digest {size} bytes"
    )
    services.db.dispose()


if __name__ == "__main__":
    main()
