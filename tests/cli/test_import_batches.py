"""`maildesk import` holds one batch of bytes at a time, bounded in bytes as well as
in messages (`importer.BATCH_BYTES`): an archive of large messages must not cost
the import their whole batch of 200 in memory (issue 9: < 150 MB per process).
"""

from __future__ import annotations

import base64
import contextlib
import json
import mailbox
import random
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from maildesk.cli import main
from maildesk.inbound import importer
from tests.conftest import make_mail

# A fresh interpreter runs the import and reports its children's peak RSS, so the figure
# is the import's and its processing processes' (the largest), not this test process's
# (ru_maxrss counts a parent's memory at fork).
PEAK_OF_CHILDREN = (
    "import resource, subprocess, sys\n"
    "done = subprocess.run(sys.argv[1:])\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)\n"
    "sys.exit(done.returncode)\n"
)


def large_mail(number: int, attachment: bytes) -> bytes:
    """A customer's message with `attachment` (rotated by `number`, so that no two
    are the same blob) in base64, built by hand: `email` encodes 5 MB in 130 ms."""
    data = base64.encodebytes(attachment[number:] + attachment[:number])
    head = (
        f"From: customer{number}@customer.test\n"
        "To: support@example.test\n"
        f"Subject: Logs {number}\n"
        f"Message-ID: <logs{number}@customer.test>\n"
        "MIME-Version: 1.0\n"
        'Content-Type: multipart/mixed; boundary="part"\n'
        "\n"
        "--part\n"
        "Content-Type: text/plain; charset=utf-8\n"
        "\n"
        "Logs attached.\n"
        "--part\n"
        "Content-Type: application/octet-stream\n"
        'Content-Disposition: attachment; filename="logs.bin"\n'
        "Content-Transfer-Encoding: base64\n"
        "\n"
    )
    return head.encode() + data + b"--part--\n"


def test_an_archive_of_large_messages_is_imported_within_150_mb_a_process(
    config_file: Path, tmp_path: Path
) -> None:
    """40 messages of 5 MB are one batch by count: the import held all 212 MB of them
    (272 MB peak RSS); a batch now ends at `BATCH_BYTES` (about 90 MB)."""
    assert CliRunner().invoke(main, ["--config", str(config_file), "init"]).exit_code == 0
    attachment = random.Random(9).randbytes(5 * 1024 * 1024 * 3 // 4)  # 5 MB in base64
    archive = mailbox.mbox(str(tmp_path / "logs.mbox"))
    for number in range(40):
        archive.add(large_mail(number, attachment))
    archive.flush()
    archive.close()

    maildesk = [sys.executable, "-m", "maildesk", "--config", str(config_file)]
    done = subprocess.run(
        [sys.executable, "-c", PEAK_OF_CHILDREN, *maildesk, "import", "--processes", "2"]
        + [str(tmp_path / "logs.mbox")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "40 messages read, 40 new, 0 already imported, 40 processed" in done.stderr
    peak_mb = int(done.stdout.split()[-1])
    assert peak_mb < 150, f"peak RSS {peak_mb} MB"

    exported = subprocess.run(
        [*maildesk, "tickets", "export"], capture_output=True, text=True, timeout=120
    )
    assert exported.returncode == 0, exported.stderr[-2000:]
    stored = {
        message["message_id"]
        for line in exported.stdout.splitlines()
        for message in json.loads(line)["messages"]
    }
    assert stored == {f"logs{number}@customer.test" for number in range(40)}


@pytest.mark.parametrize("by_wave", [False, True])
def test_a_batch_ends_at_its_bytes_and_a_larger_message_is_a_batch_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, by_wave: bool
) -> None:
    """Batches cut the one stream `read_rounds` gives, in its order; with `by_wave`, a
    batch never holds two rounds (here each wave is one: none is small)."""
    monkeypatch.setattr(importer, "BATCH_BYTES", 4096)
    monkeypatch.setattr(importer, "SMALL_WAVE", 1)
    raws = [make_mail(message_id=f"<m{n}@archive.test>", body="x" * 900) for n in range(12)]
    raws.insert(5, make_mail(message_id="<large@archive.test>", body="y" * 8000))
    raws.append(make_mail(message_id="<reply@archive.test>", In_Reply_To="<m0@archive.test>"))
    box = mailbox.mbox(str(tmp_path / "a.mbox"))
    for raw in raws:
        box.add(raw)
    box.flush()
    box.close()

    with contextlib.closing(importer.open_archive(tmp_path / "a.mbox")) as box:
        stream = list(importer.read_rounds(box, by_wave))
    with contextlib.closing(importer.open_archive(tmp_path / "a.mbox")) as box:
        batches = [(wave, list(batch)) for wave, batch in importer.read_batches(box, by_wave)]

    assert [raw for _wave, batch in batches for raw in batch] == [raw for _wave, raw in stream]
    assert len(batches) > 4
    for _wave, batch in batches:
        assert len(batch) == 1 or sum(map(len, batch)) <= 4096
    large = next(raw for _wave, raw in stream if b"<large@archive.test>" in raw)
    first = importer.Round(0, alone=False, size=13) if by_wave else importer.Round(0, True, 14)
    assert (first, [large]) in batches
    if by_wave:
        wave_of = {raw: wave for wave, raw in stream}
        for wave, batch in batches:
            assert {wave_of[raw] for raw in batch} == {wave}
        assert {wave for wave, _batch in batches} == {first, importer.Round(1, False, size=1)}


@pytest.mark.parametrize("kind", ["mbox", "maildir"])
def test_the_first_pass_reads_heads_and_the_second_the_exact_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """The first pass reads a message's head a chunk at a time (a 25 MB body is not
    read twice), here 7 bytes, so the blank line that ends a head falls across a
    seam in one message or another; a reply still comes after the parent its
    References name, and each message is stored as the archive holds it."""
    monkeypatch.setattr(importer, "HEAD_CHUNK", 7)
    parent = make_mail(message_id="<parent@archive.test>", body="first\r\n" * 50)
    reply = make_mail(
        message_id="<reply@archive.test>",
        subject="Re: Printer broken",
        References="<parent@archive.test>",
        body="second\n\nthird\r\n\r\n",
    )
    if kind == "mbox":
        archive: mailbox.Mailbox = mailbox.mbox(str(tmp_path / "a.mbox"))
    else:
        archive = mailbox.Maildir(str(tmp_path / "a"), create=True)
    archive.add(reply)
    archive.add(parent)
    archive.flush()
    archive.close()
    path = tmp_path / ("a.mbox" if kind == "mbox" else "a")

    with contextlib.closing(importer.open_archive(path)) as box:
        as_held = {box.get_bytes(key) for key in box.iterkeys()}
        stream = [raw for _wave, raw in importer.read_rounds(box, by_wave=False)]

    assert set(stream) == as_held and len(stream) == 2
    assert b"<parent@archive.test>" in stream[0].split(b"\n\n")[0]
    assert b"Message-ID: <reply@archive.test>" in stream[1]
