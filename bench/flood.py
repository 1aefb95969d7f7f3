"""One sender's flood, and everyone else's mail meanwhile: how long the others wait.

Starts `maildesk serve` as `ingest.py` does (SQLite, its workers, the outbox to a
Maildir), then sends at once:

- `--flood` messages (default 3000) from one sender (envelope and From), over
  `--connections` (4) persistent sessions, as fast as serve takes them: a customer's
  mail loop, a monitor mailing each alert;
- `--others` messages (default 100), each from a sender of its own, over one session
  paced at `--rate` (20) a second: the other customers writing meanwhile.

It waits until everything is processed and sent, then prints for each group when its
acknowledgements were queued after the 250 (median, p95, max), how fast the flood
was processed, and how many mails the agents got. Every message opens a ticket of
its own, so each gets one acknowledgement. `--agents N` configures N agents, each
told of new tickets within `[limits] new_ticket_notices_per_hour` (the tree's
default; `--notices-per-hour 0` tells them of every one, as before that cap).
Nothing is asserted: the script prints figures.

    .venv/bin/python bench/flood.py [--flood 3000] [--others 100] [--rate 20]
        [--agents 2] [--notices-per-hour 0]

To measure another tree (such as the commit before fair turns), run it from a
neutral directory with `PYTHONPATH` naming that tree (README, "Benchmarks").
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import common
from ingest import maildesk_daemon, wait_processed

FLOOD_SENDER = "loop@customer0.test"


def _send(port: int, mails: list[tuple[str, bytes]], interval: float, barrier: Any) -> None:
    barrier.wait()
    common.send_session(port, mails, interval, timeout=300)


def load(args: argparse.Namespace, port: int, run: str) -> None:
    date = datetime.now(UTC)
    flooder = ("Loop", FLOOD_SENDER)
    flood = [
        (
            FLOOD_SENDER,
            common.customer_message(i, run=run, size=args.size, date=date, writer=flooder),
        )
        for i in range(args.flood)
    ]
    others = []
    for k in range(args.others):
        other = (f"Other {k}", f"other{k}@elsewhere.test")
        raw = common.customer_message(
            args.flood + k, run=run, size=args.size, date=date, writer=other
        )
        others.append((other[1], raw))
    ctx = mp.get_context("fork")
    shares = [flood[k :: args.connections] for k in range(args.connections)]
    barrier = ctx.Barrier(len(shares) + 1)
    procs = [ctx.Process(target=_send, args=(port, share, 0.0, barrier)) for share in shares]
    procs.append(ctx.Process(target=_send, args=(port, others, 1 / args.rate, barrier)))
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(600)
    if any(proc.exitcode != 0 for proc in procs):
        raise RuntimeError("an SMTP client failed")


def figures(db: Path) -> dict[str, list[float]]:
    """Milliseconds from each message's 250 to its acknowledgement queued, by group."""
    rows = common.db_rows(
        db,
        """
        SELECT i.mail_from, i.received_at, o.created_at
        FROM inbound i
        JOIN messages m ON m.inbound_id = i.id
        JOIN outbox o ON o.ticket_id = m.ticket_id AND o.kind = 'acknowledgement'
        """,
    )
    waits: dict[str, list[float]] = {"flood": [], "others": []}
    for mail_from, received, created in rows:
        got, queued = common.timestamp(received), common.timestamp(created)
        assert got is not None and queued is not None
        group = "flood" if mail_from == FLOOD_SENDER else "others"
        waits[group].append(common.seconds(queued - got) * 1000)
    return waits


def processed_rate(db: Path) -> float:
    ((first, last, count),) = common.db_rows(
        db, "SELECT min(received_at), max(processed_at), count(*) FROM inbound"
    )
    start, end = common.timestamp(first), common.timestamp(last)
    assert start is not None and end is not None
    return float(count) / max(common.seconds(end - start), 1e-9)


def run(args: argparse.Namespace, workdir: Path) -> None:
    run_id = f"flood{os.getpid()}x{int(time.time())}"
    smtp_port, web_port = common.free_port(), common.free_port()
    log = workdir / "maildesk.log"
    extra: dict[str, dict[str, Any]] = {
        "agents": {"addresses": [f"agent{n}@example.test" for n in range(args.agents)]}
    }
    if args.notices_per_hour is not None:
        extra["limits"] = {"new_ticket_notices_per_hour": args.notices_per_hour}
    with maildesk_daemon(workdir, smtp_port, web_port, log, extra=extra) as proc:
        print(f"-- maildesk serve, pid {proc.pid}, log {log}", file=sys.stderr, flush=True)
        load(args, smtp_port, run_id)
        wait_processed(web_port, args.flood + args.others, proc)
    waits = figures(workdir / "maildesk.db")
    print(
        f"\n{args.flood} messages from one sender as fast as serve takes them, and "
        f"{args.others} from as many other senders at {args.rate:g}/s meanwhile"
    )
    print(common.machine(workdir))
    print(f"{args.cpu_watch.note()}; maildesk sources {common.code_fingerprint()}")
    rows = []
    for group, label in (("others", "the other senders"), ("flood", "the flooding sender")):
        ms = waits[group]
        rows.append(
            [
                label,
                str(len(ms)),
                f"{common.median(ms):.0f}",
                f"{common.percentile(ms, 95):.0f}",
                f"{max(ms):.0f}",
            ]
        )
    print()
    print(
        common.table(
            ["mail of", "acknowledged", "queued after the 250, ms: median", "p95", "max"], rows
        )
    )
    print(f"\nprocessed {processed_rate(workdir / 'maildesk.db'):.0f} msg/s in all")
    ((to_agents,),) = common.db_rows(
        workdir / "maildesk.db",
        "SELECT count(*) FROM outbox WHERE kind IN ('agent_notification', 'agent_quiet')",
    )
    print(f"mails to the {args.agents} agents: {to_agents}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flood", type=int, default=3000)
    parser.add_argument("--others", type=int, default=100)
    parser.add_argument("--rate", type=float, default=20.0, help="the others' messages a second")
    parser.add_argument("--connections", type=int, default=4, help="the flood's sessions")
    parser.add_argument("--size", type=int, default=4096, help="approximate bytes per message")
    parser.add_argument("--agents", type=int, default=0, help="agents told of new tickets")
    parser.add_argument(
        "--notices-per-hour", type=int, help="[limits] new_ticket_notices_per_hour (0: no cap)"
    )
    parser.add_argument("--workdir", type=Path, help="parent of the temp dir (default: $TMPDIR)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    parser.set_defaults(profile=None)
    args = parser.parse_args()
    common.run_in_workdir("flood", "flood", args, run)


if __name__ == "__main__":
    main()
