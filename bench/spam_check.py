"""What the spam check costs per message: one spamd round trip, and the header read.

Starts Debian's spamd the way the tests do (tests/spamd.py: loopback, network
tests and Bayes off), then scores `--messages` distinct ~`--size`-byte customer
messages one after the other through maildesk's own client (`maildesk/spamc.py`),
as the processor's prepare step does, and reads the MTA's spam headers of the
same messages (`mta_verdict`). Prints the median and 95th percentile of each,
and the resulting ceiling in messages per second for one processor.

Run from the project root with the project's virtualenv:

    .venv/bin/python bench/spam_check.py [--messages 200] [--size 4096]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from email.message import EmailMessage

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from maildesk.pipeline.spam import mta_verdict  # noqa: E402
from maildesk.spamc import Spamd  # noqa: E402
from tests.spamd import SpamdServer  # noqa: E402


def message(n: int, size: int) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Customer {n} <customer{n}@customer.test>"
    msg["To"] = "support@example.test"
    msg["Subject"] = f"Printer {n} prints blank pages"
    msg["Message-ID"] = f"<bench-{n}@customer.test>"
    msg["X-Spam-Status"] = "No, score=1.2 required=5.0 tests=MISSING_DATE autolearn=no"
    line = "The printer on floor 2 prints only blank pages since this morning.\n"
    msg.set_content(line * max(1, size // len(line)))
    return msg.as_bytes()


def quantiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p95 = ordered[int(len(ordered) * 0.95) - 1]
    return f"median {statistics.median(ordered) * 1000:.2f} ms, p95 {p95 * 1000:.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--size", type=int, default=4096)
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    messages = [message(n, args.size) for n in range(args.messages)]
    started = time.monotonic()
    with SpamdServer() as server:
        print(f"spamd ready in {time.monotonic() - started:.1f} s")
        client = Spamd(server.host, server.port, timeout=30)
        client.symbols(messages[0])  # warm the child up
        spamd_times = []
        for raw in messages:
            t = time.perf_counter()
            client.symbols(raw)
            spamd_times.append(time.perf_counter() - t)
    header_times = []
    for raw in messages:
        t = time.perf_counter()
        mta_verdict(raw)
        header_times.append(time.perf_counter() - t)
    print(f"spamd SYMBOLS, {args.messages} x {args.size} B: {quantiles(spamd_times)}")
    print(f"  ceiling for one processor: {1 / statistics.median(spamd_times):.0f} msg/s")
    print(f"MTA header read: {quantiles(header_times)}")


if __name__ == "__main__":
    main()
