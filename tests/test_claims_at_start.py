"""A serve starting on SQLite frees the claims of processes that ended, and only those.

Ops may run `maildesk worker` as units of their own beside `serve`. A serve that
started (or restarted) while such a worker was sending an acknowledgement freed
that worker's claim: serve's own worker sent the same acknowledgement again, and
the customer got it twice. A crash, though, must still be cheap: whatever the
killed processes held is due as soon as the next serve starts, not a lease later.

Real processes throughout: `maildesk worker` and `maildesk serve` subprocesses on
one SQLite file, each with its own relay (a real SMTP sink), one of which holds
its first DATA open, so that its sender holds the claim mid-send.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from maildesk import config, leases
from maildesk.clock import ManualClock
from maildesk.inbound.store import Envelope
from maildesk.models import Inbound
from maildesk.outbound import outbox
from maildesk.services import Services
from tests.conftest import PG_URL, make_mail, toml, wait_for
from tests.smtp_sink import SmtpSink
from tests.test_crash import MAILDESK, DaemonProcess, alive
from tests.test_workers import initialized

SUPPORT = "support@example.test"
sqlite_only = pytest.mark.skipif(bool(PG_URL), reason="serve frees claims at start on SQLite only")


class Stall:
    """The relay's first DATA waits until `go` is set: its sender holds the row's claim,
    mid-send, for as long (under the transport's 30 s timeout)."""

    def __init__(self, sink: SmtpSink) -> None:
        self.reached = threading.Event()
        self.go = threading.Event()
        sink.on_data = self._on_data

    def _on_data(self) -> None:
        if not self.reached.is_set():
            self.reached.set()
            self.go.wait(60)


@pytest.fixture
def stalling_relay() -> Iterator[tuple[SmtpSink, Stall]]:
    with SmtpSink() as sink:
        stall = Stall(sink)
        try:
            yield sink, stall
        finally:
            stall.go.set()  # the sink's loop must come back to stop


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes] | DaemonProcess]]:
    """What the test started; whatever still runs at teardown is killed."""
    started: list[subprocess.Popen[bytes] | DaemonProcess] = []
    yield started
    for each in started:
        if isinstance(each, DaemonProcess):
            each.kill()
        elif each.poll() is None:
            each.kill()
            each.wait(30)


def relayed(values: dict[str, Any], relay: SmtpSink) -> dict[str, Any]:
    """A copy of `values` that sends through `relay`."""
    values = json.loads(json.dumps(values))
    values["outbound"]["url"] = relay.url
    return values


def deliver(config_path: Path, customer: str) -> None:
    done = subprocess.run(
        [*MAILDESK, "--config", str(config_path), "deliver", "-f", customer, "-r", SUPPORT],
        input=make_mail(subject="Printer broken", sender=customer),
        capture_output=True,
        timeout=60,
        cwd=config_path.parent,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")


def idle(daemon: DaemonProcess) -> bool:
    health = daemon.health()
    return health is not None and health["inbound_pending"] == health["outbox_pending"] == 0


@sqlite_only
def test_a_serve_started_beside_a_sending_worker_unit_sends_nothing_twice(
    config_values: dict[str, Any],
    tmp_path: Path,
    relay: SmtpSink,
    stalling_relay: tuple[SmtpSink, Stall],
    processes: list[subprocess.Popen[bytes] | DaemonProcess],
) -> None:
    values = {**config_values, "workers": {"count": 1}}
    worker_relay, stall = stalling_relay
    serve_path, serve_settings = initialized(relayed(values, relay), tmp_path)
    # The worker unit: the same desk and database, its own relay.
    worker_path = tmp_path / "worker.toml"
    worker_path.write_text(toml(relayed(values, worker_relay)))
    with (tmp_path / "worker.log").open("wb") as out:
        worker = subprocess.Popen(
            [*MAILDESK, "--config", str(worker_path), "worker"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    processes.append(worker)
    deliver(worker_path, "alice@customer.test")
    # The worker unit processed the mail and is sending the acknowledgement: mid-DATA.
    assert stall.reached.wait(60), (tmp_path / "worker.log").read_text()

    serve = DaemonProcess(serve_path, tmp_path / "serve.log", serve_settings)
    processes.append(serve)
    serve.start()  # answers /healthz: past its start-up's release of claims
    stall.go.set()
    # A freed claim leaves the worker unable to mark the row sent (its token is gone),
    # so the queue empties only once serve's worker has sent it too: no race decides.
    wait_for(lambda: worker_relay.messages and idle(serve), 60, "the acknowledgement sent")

    copies = len(worker_relay.messages) + len(relay.messages)
    assert copies == 1, f"the customer got {copies} acknowledgements:\n{serve.log()}"
    # The operator reads why serve left it alone.
    said = serve.log_path.read_text()
    assert f"outbox: claims left to their holders, which may still run: pids {worker.pid}" in said
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    assert serve.terminate() == 0, serve.log()


@sqlite_only
def test_a_crashed_serves_claims_are_sent_by_the_next_serve_at_once_not_a_lease_later(
    config_values: dict[str, Any],
    tmp_path: Path,
    relay: SmtpSink,
    stalling_relay: tuple[SmtpSink, Stall],
    processes: list[subprocess.Popen[bytes] | DaemonProcess],
) -> None:
    # A lease far longer than the test may wait: what goes out was freed at start.
    values = {**config_values, "workers": {"count": 1, "lease_seconds": 600}}
    first_relay, stall = stalling_relay
    first_path, first_settings = initialized(relayed(values, first_relay), tmp_path)
    first = DaemonProcess(first_path, tmp_path / "first.log", first_settings)
    processes.append(first)
    first.start()
    workers = wait_for(first.workers, 60, "serve's worker process")
    deliver(first_path, "alice@customer.test")
    assert stall.reached.wait(60), first.log()  # its worker is sending the acknowledgement
    first.kill()  # and the kernel kills its worker with it
    wait_for(lambda: not any(alive(pid) for pid in workers), 30, "the worker to die with serve")

    # Started again (by systemd's Restart=) on the same database; its relay answers.
    second_values = relayed(values, relay)
    second_path = tmp_path / "second.toml"
    second_path.write_text(toml(second_values))
    second_settings = config.from_mapping(second_values, base_dir=tmp_path)
    second = DaemonProcess(second_path, tmp_path / "second.log", second_settings)
    processes.append(second)
    second.start()
    relay.wait_for(1, timeout=60)
    wait_for(lambda: idle(second), 60, "the queues to empty")
    health = second.health()
    assert health is not None and health["quarantined"] == 0, health
    assert len(relay.messages) == 1
    assert second.terminate() == 0, second.log()


def test_the_claims_freed_at_start_are_those_of_processes_that_ended(
    services: Services, clock: ManualClock
) -> None:
    """Each way a claim's holder is judged, with real processes: gone, a zombie, a pid
    now another process's, alive, in another PID namespace, or not named at all."""
    raws = [f"Subject: {n}\r\n\r\n{n}\r\n".encode() for n in range(7)]
    ids = services.store.put_many(raws, Envelope("smtp"))
    mine = services.store.claim(len(ids)).claim.token
    assert mine.startswith(f"{os.getpid()}.") and len(mine) <= leases.TOKEN_LENGTH

    def sleeper() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])

    live, gone, zombie = sleeper(), sleeper(), sleeper()
    named = {proc.pid: leases.claimant(proc.pid) for proc in (live, gone, zombie)}
    try:
        gone.kill()
        gone.wait(30)  # reaped: no such process any more
        zombie.kill()  # not reaped: a zombie, ended all the same
        wait_for(lambda: process_state(zombie.pid) == "Z", 10, "a zombie")
        pid, start, namespace = str(leases.claimant(os.getpid())).split(".")
        claims = {
            ids[0]: f"{named[live.pid]}.live",
            ids[1]: f"{named[gone.pid]}.gone",
            ids[2]: f"{named[zombie.pid]}.zombie",
            ids[3]: f"{pid}.{start}0.{namespace}.reused",  # this pid, another start
            ids[4]: f"{named[live.pid]}x.other",  # another PID namespace
            ids[5]: "ABCDEFGHIJKLMNOP",  # a token from before they named their process
            ids[6]: mine,  # this very process
        }
        with services.db.transaction() as session:
            for row_id, token in claims.items():
                session.execute(update(Inbound).where(Inbound.id == row_id).values(claim=token))
        services.processor.release_leases()
    finally:
        for proc in (live, zombie):
            proc.kill()
            proc.wait(30)
    with services.db.reading() as session:
        still = session.scalars(select(Inbound.id).where(Inbound.claim.is_not(None))).all()
    assert set(still) == {
        ids[0],
        ids[4],
        ids[5],
        ids[6],
    }
    # Nothing was claimed in the outbox: nothing to free there.
    assert outbox.release_leases(services.db, clock) == 0


def process_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
