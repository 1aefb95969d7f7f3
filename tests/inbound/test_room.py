"""Room on disk for new mail (inbound/room.py): below the reserve every door refuses new
mail for now, loses none of it, and takes it once there is room again.

The disk is the test machine's own, read with statvfs as the daemon reads it. Filling
it is not something a test may do, so the reserve is set against what is free now:
far above it (no room at all), or gigabytes under it against a declared size, so that
whatever else writes to the disk meanwhile cannot change the answer. Where a test counts
megabytes (the door's queue, the log lines), `FixedRoom` stands in for statvfs alone:
a disk whose free space holds still.
"""

from __future__ import annotations

import logging
import os
import smtplib
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from maildesk.cli import main
from maildesk.config import from_mapping
from maildesk.inbound.imap import ImapPoller
from maildesk.inbound.room import MB, NoRoom, Room
from maildesk.inbound.store import Envelope
from maildesk.services import Services
from tests.conftest import PG_URL, make_mail, running_daemon, toml, wait_for
from tests.dovecot import Dovecot
from tests.helpers import tickets
from tests.inbound.test_group_commit import hold_then_release
from tests.inbound.test_imap import Recorder, message
from tests.test_metrics import scrape, value, web_url

NO_ROOM = 452
FAR_ABOVE = 10**9  # MB: a reserve no disk here can leave free
# The reserve watches the disk of an SQLite database; a PostgreSQL server's is its own.
sqlite_only = pytest.mark.skipif(bool(PG_URL), reason="the reserve watches SQLite's disk")


def free_mb(folder: Path) -> int:
    stat = os.statvfs(folder)
    return stat.f_bavail * stat.f_frsize // MB


@sqlite_only
def test_below_the_reserve_smtp_refuses_for_now_and_takes_the_mail_once_there_is_room(
    config_values: dict[str, Any], tmp_path: Path, clock: Any
) -> None:
    config_values["limits"] = {"accept_min_free_mb": FAR_ABOVE}
    mail = make_mail(message_id="<flood-1@customer.test>")
    settings = from_mapping({**config_values, "workers": {"count": 0}}, base_dir=tmp_path)
    with running_daemon(settings, clock) as running:
        smtp = running.services.settings.smtp
        with smtplib.SMTP(smtp.host, smtp.port, timeout=10) as client:
            # smtplib declares SIZE: refused at MAIL, before a byte of the message is sent.
            with pytest.raises(smtplib.SMTPSenderRefused) as refused:
                client.sendmail("alice@customer.test", ["support@example.test"], mail)
            assert refused.value.smtp_code == NO_ROOM
            assert b"4.3.1" in refused.value.smtp_error
            # A client that declares nothing is refused at MAIL too: nothing fits.
            client.ehlo()
            code, _ = client.mail("alice@customer.test")
            assert code == NO_ROOM
            client.rset()
        assert tickets(running.services) == []

        # The admin frees space (here: the reserve drops); the client's retry goes through.
        assert running.services.store.room is not None
        running.services.store.room.reserve_mb = 0
        with smtplib.SMTP(smtp.host, smtp.port, timeout=10) as client:
            assert client.sendmail("alice@customer.test", ["support@example.test"], mail) == {}
        wait_for(lambda: len(tickets(running.services)) == 1, what="the retried mail's ticket")
        samples = scrape(web_url(running, "/metrics"))
        assert value(samples, "maildesk_smtp_refused_total", reason="disk_full") == 2


@sqlite_only
def test_a_size_that_would_cross_the_reserve_is_refused_at_mail_and_data_is_checked_too(
    config_values: dict[str, Any], tmp_path: Path, clock: Any
) -> None:
    # Room for 2.5 GB: a declared 5 GB does not fit, a small message does, with
    # gigabytes to spare for whatever else writes to the disk meanwhile.
    config_values["smtp"]["max_message_size"] = 10 * 1024 * MB
    config_values["smtp"]["data_memory_mb"] = 10 * 1024  # one such message may be held
    config_values["limits"] = {"accept_min_free_mb": max(free_mb(tmp_path) - 2560, 1)}
    small = make_mail(message_id="<small@customer.test>")
    settings = from_mapping({**config_values, "workers": {"count": 0}}, base_dir=tmp_path)
    with running_daemon(settings, clock) as running:
        room = running.services.store.room
        assert room is not None
        smtp = running.services.settings.smtp
        with smtplib.SMTP(smtp.host, smtp.port, timeout=30) as client:
            client.ehlo()
            code, reply = client.mail("alice@customer.test", [f"SIZE={5 * 1024 * MB}"])
            assert (code, reply[:5]) == (NO_ROOM, b"4.3.1")
            client.rset()
            # A small one is taken at MAIL; the disk fills while it is on its way.
            assert client.mail("alice@customer.test", [f"SIZE={len(small)}"])[0] == 250
            assert client.rcpt("support@example.test")[0] == 250
            room.reserve_mb = FAR_ABOVE
            code, _ = client.data(small)
            assert code == NO_ROOM  # checked again with the bytes, nothing stored
            room.reserve_mb = 1
            assert client.sendmail("alice@customer.test", ["support@example.test"], small) == {}
        wait_for(lambda: len(tickets(running.services)) == 1, what="the retried mail's ticket")


@sqlite_only
def test_deliver_exits_75_so_the_mta_keeps_the_message(config_file: Path) -> None:
    assert CliRunner().invoke(main, ["--config", str(config_file), "init"]).exit_code == 0

    def deliver(reserve: int) -> subprocess.CompletedProcess[bytes]:
        text = config_file.read_text()
        start = text.index("accept_min_free_mb = ")
        end = text.index("\n", start)
        config_file.write_text(f"{text[:start]}accept_min_free_mb = {reserve}{text[end:]}")
        return subprocess.run(
            [sys.executable, "-m", "maildesk", "--config", str(config_file), "deliver"],
            input=make_mail(),
            capture_output=True,
            timeout=60,
        )

    refused = deliver(FAR_ABOVE)
    assert refused.returncode == 75, refused.stderr  # EX_TEMPFAIL: the MTA tries again
    assert b"accept_min_free_mb" in refused.stderr
    # The MTA's retry, once there is room: the first row stored, so none was before.
    retried = deliver(0)
    assert retried.returncode == 0, retried.stderr
    assert b"stored as 1" in retried.stderr


@sqlite_only
@pytest.mark.parametrize("processes", ["1", "2"])
def test_an_import_stops_and_a_rerun_with_room_imports_everything_once(
    config_values: dict[str, Any], tmp_path: Path, processes: str
) -> None:
    archive = tmp_path / "old.mbox"
    with archive.open("wb") as box:
        for n in range(3):
            box.write(b"From customer@example.org Mon Jan  5 09:00:00 2026\n")
            box.write(make_mail(message_id=f"<old{n}@customer.test>").replace(b"\r\n", b"\n"))
            box.write(b"\n")
    config = tmp_path / "maildesk.toml"
    runner = CliRunner()

    def run(reserve: int, *args: str) -> Any:
        config.write_text(toml({**config_values, "limits": {"accept_min_free_mb": reserve}}))
        return runner.invoke(main, ["--config", str(config), *args])

    assert run(0, "init").exit_code == 0
    stopped = run(FAR_ABOVE, "import", "--processes", processes, str(archive))
    assert stopped.exit_code == 1
    assert "run the same command again" in stopped.output
    imported = run(0, "import", "--processes", processes, str(archive))
    assert imported.exit_code == 0, imported.output
    assert "3 messages read, 3 new" in imported.output
    again = run(0, "import", "--processes", processes, str(archive))
    assert "3 messages read, 0 new, 3 already imported" in again.output


@pytest.fixture
def dovecot() -> Any:
    with Dovecot() as server:
        yield server


def test_the_imap_poller_leaves_mail_on_the_server_until_there_is_room(
    dovecot: Dovecot, tmp_path: Path
) -> None:
    sent = [message(n) for n in (1, 2)]
    for raw in sent:
        dovecot.append("INBOX", raw)
    room = Room(tmp_path, FAR_ABOVE)
    store = Recorder()
    poller = ImapPoller(dovecot.settings(), store, fits=room.fits)
    try:
        assert poller.poll_once() == 0
        assert store.stored == []
        assert dovecot.messages("INBOX") == sent  # not taken, not lost
        room.reserve_mb = 0
        assert poller.poll_once() == 2
    finally:
        poller.close()
    assert store.stored == sent
    assert dovecot.messages("INBOX") == []


def test_room_is_the_free_space_less_the_message_against_the_reserve(tmp_path: Path) -> None:
    free = free_mb(tmp_path)
    assert Room(tmp_path, 0).fits(10**15)  # no reserve: never refuses
    assert not Room(tmp_path, FAR_ABOVE).fits(0)
    roomy = Room(tmp_path, max(free - 100, 1))
    assert roomy.fits(MB) and not roomy.fits(200 * MB)
    # A folder not made yet (before `init`) is measured on the disk it will be on.
    assert Room(tmp_path / "not" / "yet", max(free - 100, 1)).fits(MB)


@pytest.mark.skipif(not PG_URL, reason="PostgreSQL's case")
def test_on_postgresql_no_disk_is_watched(
    config_values: dict[str, Any], tmp_path: Path, clock: Any
) -> None:
    config_values["limits"] = {"accept_min_free_mb": FAR_ABOVE}
    settings = from_mapping({**config_values, "workers": {"count": 0}}, base_dir=tmp_path)
    with running_daemon(settings, clock) as running:
        assert running.services.store.room is None
        smtp = running.services.settings.smtp
        with smtplib.SMTP(smtp.host, smtp.port, timeout=10) as client:
            refused = client.sendmail("alice@customer.test", ["support@example.test"], make_mail())
        assert refused == {}
        wait_for(lambda: len(tickets(running.services)) == 1, what="the ticket")


class FixedRoom(Room):
    """A disk whose free space holds still: other writers to the real disk (another
    suite, PostgreSQL's WAL) move it by megabytes, and this test counts megabytes.
    Stands in for statvfs only; the store, its door and SQLite are the real ones."""

    def __init__(self, free_mb: int, reserve_mb: int) -> None:
        super().__init__(Path("/"), reserve_mb)
        self.free_mb = free_mb

    def free_bytes(self) -> int:
        return self.free_mb * MB


@sqlite_only
def test_mail_waiting_for_its_commit_counts_against_the_room(services: Services) -> None:
    """Concurrent sessions each see the bytes queued ahead of them as already written:
    a hundred sessions of 25 MB must not all fit in the same last 200 MB."""
    store = services.store
    store.room = FixedRoom(free_mb=1000, reserve_mb=960)  # room for 40 MB
    part = b"x" * (6 * MB)
    # The landing's write lock held (as by a long commit): what arrives waits at the door.
    release, holder = hold_then_release(store.door, urgent=False)
    putters = [
        threading.Thread(target=store.put, args=(part, Envelope("deliver")), daemon=True)
        for _ in range(2)
    ]
    try:
        for thread in putters:
            thread.start()
        wait_for(lambda: not store.fits(29 * MB), what="12 MB at the door (41 would not fit)")
        assert store.fits(28 * MB)  # 40 do
        with pytest.raises(NoRoom):
            store.put(b"y" * (29 * MB), Envelope("deliver"))
    finally:
        release.set()
        holder.join(30)
        for thread in putters:
            thread.join(30)
    # Committed: no longer at the door (this disk's free space does not move).
    assert [t.is_alive() for t in putters] == [False, False]
    assert store.fits(40 * MB) and not store.fits(41 * MB)


def test_refusing_is_logged_when_it_starts_and_ends_not_per_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    room = FixedRoom(free_mb=1000, reserve_mb=2000)
    with caplog.at_level(logging.INFO, logger="maildesk.inbound.room"):
        assert not any(room.fits(0) for _ in range(100))  # a flood meets a full disk
        room.reserve_mb = 900
        assert not room.fits(200 * MB)  # too big for the room left, yet not full: no line
        assert all(room.fits(MB) for _ in range(100))
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert len(lines) == 2, lines
    assert lines[0][0] == "WARNING" and "new mail is refused for now" in lines[0][1]
    assert lines[1][0] == "INFO" and "above the reserve again" in lines[1][1]
