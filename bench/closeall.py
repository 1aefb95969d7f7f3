"""Closing a flood's tickets: how long the write lock is held.

Run by hand: `.venv/bin/python bench/closeall.py --tickets 3000`.
Stores the flooded desk of `digest.py` (`--tickets` new unassigned tickets, all but
one in 50 from one monitor) on SQLite in a temp dir, then closes the monitor's
tickets twice, on two such desks: as an agent's `#closeall` does (one transaction, at
most `cleanup.MAX_BY_MAIL`) and as `maildesk tickets close --from` does (batches of
`cleanup.BATCH`, a transaction each). Prints each transaction's time: SQLite's write
lock is held that long while the desk's other writers (a 250 at the door) wait.
To measure another tree, run it with `PYTHONPATH` naming that tree (README,
"Benchmarks"); a tree without `close_flood` measures the CLI's way only.
"""

from __future__ import annotations

import argparse
import logging

from digest import flooded_desk, timed_transactions
from sqlalchemy import func, select

from maildesk.models import Ticket
from maildesk.services import Services
from maildesk.tickets import cleanup

MONITOR = "alerts@monitor.test"


def still_open(services: Services) -> int:
    with services.db.reading() as session:
        query = select(func.count()).where(Ticket.status != "closed")
        return int(session.scalar(query) or 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tickets", type=int, default=3000)
    args = parser.parse_args()
    logging.disable(logging.WARNING)

    if hasattr(cleanup, "close_flood"):
        services, clock = flooded_desk(args.tickets, 2)
        held = timed_transactions(services)
        with services.db.transaction() as session:
            first = session.scalars(select(Ticket).order_by(Ticket.id).limit(1)).one()
            flood = cleanup.close_flood(session, first, clock.now(), "agent0@example.test")
        print(
            f"#closeall: {len(flood.closed)} of {args.tickets} tickets closed in one "
            f"transaction of {held[0]:.0f} ms ({flood.remaining} of the monitor's left for "
            f"the next one; {still_open(services)} open in all)"
        )
        services.db.dispose()

    services, clock = flooded_desk(args.tickets, 2)
    held = timed_transactions(services)
    closed = cleanup.close_all_from(services.db, MONITOR, clock.now(), "ops")
    print(
        f"tickets close --from: {len(closed)} tickets closed in {len(held)} transactions, "
        f"{sum(held):.0f} ms in all, the longest {max(held):.0f} ms "
        f"({still_open(services)} open in all)"
    )
    services.db.dispose()


if __name__ == "__main__":
    main()
