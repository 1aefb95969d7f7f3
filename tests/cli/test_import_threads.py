"""`maildesk import` keeps threads whole, whatever order the archive is in.

An mbox is in no particular order: replies come before their parents, some clients
write only In-Reply-To (no References), and Date headers lie. Every reply link
between two messages of the archive must end inside one ticket, and each
conversation must be one ticket.
"""

from __future__ import annotations

import contextlib
import json
import mailbox
import random
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from maildesk import config
from maildesk.cli import main
from maildesk.inbound import import_pool, importer
from maildesk.services import build
from tests.conftest import make_mail, toml


def run(config_file: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--config", str(config_file), *args])


@dataclass(frozen=True)
class Mail:
    message_id: str
    parent: str | None  # the message it answers, inside the archive
    raw: bytes


def conversation(number: int, length: int, start: datetime, rng: random.Random) -> list[Mail]:
    """A customer's request and its replies, each answering the one before."""
    mails: list[Mail] = []
    chain: list[str] = []
    for step in range(length):
        mid = f"c{number}.m{step}@archive.test"
        headers: dict[str, str] = {}
        if chain:
            headers["In_Reply_To"] = f"<{chain[-1]}>"
            if rng.random() < 0.5:  # half the clients also write References
                headers["References"] = " ".join(f"<{m}>" for m in chain)
        # Every fifth reply is dated before the message it answers (a wrong clock).
        shift = -90 if chain and rng.random() < 0.2 else 0
        raw = make_mail(
            subject=("Re: " if chain else "") + f"Question {number}",
            sender=f"Person {step % 2} <p{number}.{step % 2}@customer.test>",
            message_id=f"<{mid}>",
            body=f"Step {step} of conversation {number}.",
            **headers,
        )
        date = format_datetime(start + timedelta(minutes=10 * step + shift))
        raw = raw.replace(b"Date: ", b"X-Old-Date: ", 1).replace(
            b"\r\n\r\n", f"\r\nDate: {date}\r\n\r\n".encode(), 1
        )
        mails.append(Mail(mid, chain[-1] if chain else None, raw))
        chain.append(mid)
    return mails


def split_prone_thread() -> list[Mail]:
    """The issue's case: R answers P (In-Reply-To only) and comes first in the file;
    P answers O by References; O is first of all."""
    o = make_mail(subject="Invoice", message_id="<o@archive.test>")
    p = make_mail(
        subject="Re: Invoice",
        message_id="<p@archive.test>",
        In_Reply_To="<o@archive.test>",
        References="<o@archive.test>",
    )
    r = make_mail(
        subject="Re: Invoice", message_id="<r@archive.test>", In_Reply_To="<p@archive.test>"
    )
    return [
        Mail("o@archive.test", None, o),
        Mail("r@archive.test", "p@archive.test", r),
        Mail("p@archive.test", "o@archive.test", p),
    ]


def write_mbox(path: Path, mails: list[Mail]) -> Path:
    box = mailbox.mbox(str(path))
    for mail in mails:
        box.add(mail.raw)
    box.flush()
    box.close()
    return path


def ticket_of(config_file: Path) -> dict[str, int]:
    exported = run(config_file, "tickets", "export")
    assert exported.exit_code == 0, exported.output
    found: dict[str, int] = {}
    for line in exported.stdout.splitlines():
        ticket = json.loads(line)
        for message in ticket["messages"]:
            if message["direction"] == "in":
                found[message["message_id"]] = ticket["number"]
    return found


def test_a_reply_earlier_in_the_file_than_its_parent_does_not_split_the_thread(
    config_file: Path, tmp_path: Path
) -> None:
    assert run(config_file, "init").exit_code == 0
    mails = split_prone_thread()
    result = run(config_file, "import", str(write_mbox(tmp_path / "a.mbox", mails)))
    assert result.exit_code == 0, result.output

    tickets = ticket_of(config_file)
    assert set(tickets) == {m.message_id for m in mails}
    assert len(set(tickets.values())) == 1, tickets


def shuffled_archive(seed: int) -> tuple[list[list[Mail]], list[Mail]]:
    """40 conversations of 1 to 6 messages, their messages in random order."""
    rng = random.Random(seed)
    start = datetime(2025, 3, 3, 8, 0, tzinfo=UTC)
    conversations = [
        conversation(n, rng.randint(1, 6), start + timedelta(hours=n), rng) for n in range(40)
    ]
    mails = [mail for conv in conversations for mail in conv]
    rng.shuffle(mails)
    return conversations, mails


@pytest.mark.parametrize(
    ("processes", "batch_bytes", "small_wave"),
    [(1, None, None), (3, None, None), (3, None, 1), (1, 4096, None), (2, 4096, None)],
)
def test_a_shuffled_archive_imports_each_conversation_as_one_ticket(
    config_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    processes: int,
    batch_bytes: int | None,
    small_wave: int | None,
) -> None:
    """With `batch_bytes`, batches of about ten messages end inside threads, by their
    bytes (`importer.BATCH_BYTES`), as batches of `BATCH` messages do in a large archive:
    batches are cut from the thread-ordered stream, and each is processed before the
    next round is stored. The archive's first wave is shared by the processes and its
    small last waves go to one of them; with `small_wave` 1, every wave is shared."""
    if batch_bytes is not None:
        monkeypatch.setattr(importer, "BATCH_BYTES", batch_bytes)
    if small_wave is not None:
        monkeypatch.setattr(importer, "SMALL_WAVE", small_wave)
    assert run(config_file, "init").exit_code == 0
    conversations, mails = shuffled_archive(9)
    archive = write_mbox(tmp_path / "archive.mbox", mails)
    result = run(config_file, "import", "--processes", str(processes), str(archive))
    assert result.exit_code == 0, result.output
    assert f"{len(mails)} new, 0 already imported, {len(mails)} processed" in result.output

    tickets = ticket_of(config_file)
    assert set(tickets) == {m.message_id for m in mails}
    links = [(m.message_id, m.parent) for m in mails if m.parent is not None]
    split = [(child, parent) for child, parent in links if tickets[child] != tickets[parent]]
    assert not split, f"{len(split)} of {len(links)} reply links split: {split[:5]}"
    # One ticket per conversation, and each ticket holds exactly one conversation.
    per_ticket = Counter(tickets.values())
    assert len(per_ticket) == len(conversations)
    assert sorted(per_ticket.values()) == sorted(len(c) for c in conversations)

    again = run(config_file, "import", "--processes", str(processes), str(archive))
    assert again.exit_code == 0, again.output
    assert f"0 new, {len(mails)} already imported, 0 processed" in again.output
    assert ticket_of(config_file) == tickets


@pytest.mark.parametrize(
    ("count", "used"), [(2, "in 2 processes"), (0, "in 1 process"), (64, "in 4 processes")]
)
def test_import_uses_the_cores_the_workers_are_given(
    config_values: dict[str, Any], tmp_path: Path, count: int, used: str
) -> None:
    """Without --processes, an import runs as many processes as `[workers] count`
    (0, the daemon's in-process workers, still means one; a big machine's count, four),
    threads whole."""
    config_file = tmp_path / "workers.toml"
    config_file.write_text(toml({**config_values, "workers": {"count": count}}))
    assert run(config_file, "init").exit_code == 0
    conversations, mails = shuffled_archive(5)
    result = run(config_file, "import", str(write_mbox(tmp_path / "archive.mbox", mails)))
    assert result.exit_code == 0, result.output
    assert f"{len(mails)} new, 0 already imported, {len(mails)} processed, {used}" in (
        result.output
    )
    tickets = ticket_of(config_file)
    assert len(set(tickets.values())) == len(conversations)
    assert not [m for m in mails if m.parent and tickets[m.message_id] != tickets[m.parent]]


def test_copies_of_one_message_id_in_an_archive_make_one_message_with_processes(
    config_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A list archive holds the same message twice (two deliveries, other Received
    headers): processed side by side, both copies would race for one Message-ID.
    (Every wave shared by the processes, as a large archive's are.)"""
    monkeypatch.setattr(importer, "SMALL_WAVE", 1)
    assert run(config_file, "init").exit_code == 0
    mails = split_prone_thread()
    copies = [
        Mail(m.message_id, m.parent, b"Received: by relay%d.test\r\n" % n + m.raw)
        for n, m in enumerate(mails)
    ]
    archive = write_mbox(tmp_path / "list.mbox", [*mails, *copies])
    result = run(config_file, "import", "--processes", "2", str(archive))
    assert result.exit_code == 0, result.output
    assert "6 new, 0 already imported, 6 processed" in result.output

    tickets = ticket_of(config_file)
    assert set(tickets) == {m.message_id for m in mails}
    assert len(set(tickets.values())) == 1, tickets


def test_a_long_conversation_is_one_ticket_in_its_order_with_processes(
    config_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """60 mails, each answering the one before, in random order in the file: 60 waves
    of one mail, which one process takes in their order (one round, stored in batches
    of 10 here), beside a first wave of 40 other requests that two processes share."""
    monkeypatch.setattr(importer, "BATCH", 10)
    assert run(config_file, "init").exit_code == 0
    rng = random.Random(3)
    start = datetime(2025, 3, 3, 8, 0, tzinfo=UTC)
    long = conversation(99, 60, start, rng)
    others = [conversation(n, 1, start + timedelta(hours=n), rng)[0] for n in range(40)]
    mails = [*long, *others]
    rng.shuffle(mails)
    result = run(
        config_file, "import", "--processes", "2", str(write_mbox(tmp_path / "a.mbox", mails))
    )
    assert result.exit_code == 0, result.output
    assert "100 new, 0 already imported, 100 processed" in result.output

    tickets = ticket_of(config_file)
    assert {tickets[m.message_id] for m in long} == {tickets[long[0].message_id]}
    assert len(set(tickets.values())) == 41


def test_rounds_share_large_waves_and_give_small_ones_in_a_row_to_one_process() -> None:
    small = importer.SMALL_WAVE - 1
    sizes = [importer.SMALL_WAVE, small, 1, importer.SMALL_WAVE + 5, 1]
    wave = [number for number, size in enumerate(sizes) for _ in range(size)]
    assert importer.rounds(wave) == [
        importer.Round(0, alone=False, size=importer.SMALL_WAVE),
        importer.Round(1, alone=True, size=importer.SMALL_WAVE),
        importer.Round(1, alone=True, size=importer.SMALL_WAVE),
        importer.Round(2, alone=False, size=importer.SMALL_WAVE + 5),
        importer.Round(3, alone=True, size=1),
    ]
    assert importer.rounds([]) == []


def test_a_re_run_with_processes_finishes_what_an_interrupted_import_stored(
    config_file: Path, tmp_path: Path
) -> None:
    """An import killed after storing a batch, before processing it: the re-run
    stores nothing new and processes those rows, threads whole."""
    assert run(config_file, "init").exit_code == 0
    conversations, mails = shuffled_archive(4)
    archive = write_mbox(tmp_path / "archive.mbox", mails)
    services = build(config.load(config_file))
    try:
        with contextlib.closing(importer.open_archive(archive)) as box:
            raws = [raw for _wave, raw in importer.read_rounds(box, by_wave=False)]
        stored = importer.store_batch(services.store, raws, notify=False)
    finally:
        services.db.dispose()
    assert stored == len(mails)

    result = run(config_file, "import", "--processes", "2", str(archive))
    assert result.exit_code == 0, result.output
    assert f"0 new, {len(mails)} already imported, {len(mails)} processed" in result.output
    tickets = ticket_of(config_file)
    assert set(tickets) == {m.message_id for m in mails}
    assert len(set(tickets.values())) == len(conversations)
    assert not [m for m in mails if m.parent and tickets[m.message_id] != tickets[m.parent]]


def test_each_process_claims_whole_batches_or_its_share_of_a_small_round() -> None:
    assert import_pool.claim_for(10_000, 2) == importer.BATCH
    assert import_pool.claim_for(300, 2) == 150
    assert import_pool.claim_for(33, 4) == 9
    assert import_pool.claim_for(1, 2) == 1
