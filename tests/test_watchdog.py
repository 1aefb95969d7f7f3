"""A message that sticks a worker in one stage ends that worker, never the desk.

The mail that does it is a stranger's, so a test needs a stage that sticks on it:
no known one is left (each was fixed, with a growth test in test_linear_work.py).
The fault is put in as a `sitecustomize` module on PYTHONPATH, seen only by the
processes of the test that sets it: a message with `X-Test-Freeze: c` makes
parsing backtrack in the `re` module's C code, which holds the GIL (no thread of
the process runs); `X-Test-Freeze: python` makes it loop in Python for good.
Everything else is real: serve, its worker process, SMTP, SQLite, the kernel's
timer and signals.
"""

from __future__ import annotations

import json
import mailbox
import os
import signal
import smtplib
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from maildesk.db import Database
from maildesk.inbound.store import MAX_ATTEMPTS
from maildesk.models import Inbound, Ticket
from maildesk.watchdog import STUCK_EXIT
from tests.conftest import PG_URL, make_mail, wait_for
from tests.test_crash import MAILDESK, DaemonProcess, acknowledgements
from tests.test_workers import initialized, scrape

SUPPORT = "support@example.test"

# The fault: parsing a marked message never ends (see the module's docstring).
FAULT = """
import re

from maildesk.pipeline import prepare

_parse = prepare.parse


def parse(raw, *args, **kwargs):
    if b"X-Test-Freeze: c" in raw:
        re.match(r"(a+)+$", "a" * 64 + "b")  # 2**64 steps of backtracking, in C
    elif b"X-Test-Freeze: python" in raw:
        while True:
            pass
    return _parse(raw, *args, **kwargs)


prepare.parse = parse
"""


def run_watched(body: str, limit: float = 0.5) -> subprocess.CompletedProcess[str]:
    """`body` run in a new interpreter under a started `Watchdog(limit)`."""
    script = textwrap.dedent(
        f"""
        import logging, re, time
        from maildesk.watchdog import Watchdog
        logging.basicConfig(level=logging.INFO)
        watchdog = Watchdog({limit}).start()
        """
    ) + textwrap.dedent(body)
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )


def test_a_process_spinning_in_c_code_is_ended_by_the_kernel() -> None:
    started = time.monotonic()
    done = run_watched('re.match(r"(a+)+$", "a" * 64 + "b")\nprint("returned")')
    assert done.returncode == -signal.SIGPROF, done.stderr
    assert "returned" not in done.stdout
    assert time.monotonic() - started >= 0.5


def test_a_stage_past_its_limit_ends_the_process_and_names_it() -> None:
    done = run_watched(
        """
        with watchdog.stage("preparing inbound 7"):
            while True:
                pass
        """
    )
    assert done.returncode == STUCK_EXIT, done.stderr
    assert "preparing inbound 7 has used" in done.stderr


def test_live_work_under_the_limit_is_never_ended() -> None:
    """Stages of a tenth of the limit, each with a regex in C, for five limits in all."""
    done = run_watched(
        """
        until = time.monotonic() + 2.5
        while time.monotonic() < until:
            with watchdog.stage("preparing"):
                re.match(r"(a+)+$", "a" * 20 + "b")  # some milliseconds in C
                time.sleep(0.05)
        print("finished")
        """
    )
    assert (done.returncode, done.stdout.strip()) == (0, "finished"), done.stderr


def test_a_stage_that_waits_past_the_limit_is_not_stuck() -> None:
    """Waiting (for spamd, DNS, the database, or for the CPU on a busy machine) spends no
    CPU of the stage's thread: only computing counts."""
    done = run_watched(
        """
        with watchdog.stage("waiting for spamd"):
            time.sleep(1.5)
        print("finished")
        """
    )
    assert (done.returncode, done.stdout.strip()) == (0, "finished"), done.stderr


@pytest.fixture
def serve_with_fault(config_values: dict[str, Any], tmp_path: Path) -> Iterator[DaemonProcess]:
    (tmp_path / "fault").mkdir()
    (tmp_path / "fault" / "sitecustomize.py").write_text(FAULT)
    values = json.loads(json.dumps(config_values))
    # A stuck stage is seen after 4 s of CPU (twice message_seconds), a dead claim is due
    # after 3 s. At nice 0, as the test's other processes: niced, on a busy machine, the
    # worker got so little CPU that the innocent mail's first parse (lazy imports) ran
    # past a budget of one second.
    values["workers"] = {"count": 1, "lease_seconds": 3, "message_seconds": 2, "nice": 0}
    path, settings = initialized(values, tmp_path)
    daemon = DaemonProcess(
        path, tmp_path / "serve.log", settings, env={"PYTHONPATH": str(tmp_path / "fault")}
    )
    yield daemon
    daemon.kill()


@pytest.mark.skipif(bool(PG_URL), reason="one instance's worker; the same code on PostgreSQL")
@pytest.mark.parametrize(
    ("freeze", "ended_by"),
    [("c", "signal SIGPROF (its watchdog"), ("python", f"status {STUCK_EXIT} (its watchdog")],
    ids=["in-c", "in-python"],
)
def test_a_message_that_sticks_its_worker_is_quarantined_and_the_mail_behind_it_answered(
    serve_with_fault: DaemonProcess, freeze: str, ended_by: str
) -> None:
    """Without the watchdog the only worker stays stuck on the first message for good,
    and the customer behind it is never answered."""
    serve = serve_with_fault.start()
    settings = serve.settings
    with smtplib.SMTP(settings.smtp.host, settings.smtp.port, timeout=30) as smtp:
        stuck = make_mail(
            subject="Stuck", sender="mallory@example.net", **{"X-Test-Freeze": freeze}
        )
        smtp.sendmail("mallory@example.net", [SUPPORT], stuck)
        smtp.sendmail("alice@customer.test", [SUPPORT], make_mail(subject="Printer broken"))

    db = Database(settings.database.url)
    try:

        def settled() -> dict[str, tuple[str, int, str | None]] | None:
            with db.reading() as session:
                rows = session.execute(
                    select(Inbound.mail_from, Inbound.state, Inbound.attempts, Inbound.reason)
                ).all()
            if len(rows) < 2 or any(row.state == "pending" for row in rows):
                return None
            return {row.mail_from: (row.state, row.attempts, row.reason) for row in rows}

        rows = wait_for(settled, 120, "both messages to leave the spool")
    finally:
        db.dispose()
    state, attempts, reason = rows["mallory@example.net"]
    assert (state, attempts) == ("quarantined", MAX_ATTEMPTS)
    assert reason is not None and f"did not finish in {MAX_ATTEMPTS} attempts" in reason
    assert rows["alice@customer.test"][0] == "done"
    outbox = serve.config_path.parent / "outbox"
    [ack] = wait_for(lambda: (outbox / "new").is_dir() and acknowledgements(outbox), 30)
    assert "Printer broken" in str(ack["Subject"])

    # Each attempt ended the worker, the log says how, and serve lived through it all.
    log = serve.log_path.read_text()
    assert log.count(ended_by) == MAX_ATTEMPTS, serve.log()
    if freeze == "python":
        assert "preparing inbound 1 has used" in log
    health = serve.health()
    assert health is not None and health["quarantined"] == 1
    metrics = scrape(serve)
    assert f"maildesk_worker_stuck {MAX_ATTEMPTS}.0" in metrics
    assert "maildesk_worker_processes 1.0" in metrics
    assert serve.terminate() == 0, serve.log()


@pytest.mark.parametrize("processes", [1, 2])
def test_an_import_goes_on_past_a_message_that_sticks_its_process(
    config_values: dict[str, Any], tmp_path: Path, processes: int
) -> None:
    """An archive is a stranger's mail too. The import's processing ran in the import's
    own process (and beside it): a message that stuck a parser hung the import for good."""
    (tmp_path / "fault").mkdir()
    (tmp_path / "fault" / "sitecustomize.py").write_text(FAULT)
    values = json.loads(json.dumps(config_values))
    values["workers"] = {"lease_seconds": 3, "message_seconds": 1, "nice": 0}
    path, settings = initialized(values, tmp_path)
    box = mailbox.mbox(str(tmp_path / "archive.mbox"))
    for n in range(5):
        box.add(make_mail(subject=f"Old issue {n}", message_id=f"<old{n}@customer.test>"))
        if n == 0:  # what a process processed before it stuck is counted too
            stuck = make_mail(
                subject="Stuck", sender="mallory@example.net", **{"X-Test-Freeze": "c"}
            )
            box.add(stuck)
    box.flush()
    box.close()

    done = subprocess.run(
        [*MAILDESK, "--config", str(path), "import", "--processes", str(processes),
         str(tmp_path / "archive.mbox")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path / "fault")},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "6 new, 0 already imported, 6 processed" in done.stderr, (
        done.stderr
    )  # with the stuck one
    assert f"{MAX_ATTEMPTS} processing processes ended themselves" in done.stderr

    db = Database(settings.database.url)
    try:
        with db.reading() as session:
            states = sorted(session.scalars(select(Inbound.state)))
            subjects = set(session.scalars(select(Ticket.subject)))
    finally:
        db.dispose()
    assert subjects == {f"Old issue {n}" for n in range(5)}
    assert states == ["done"] * 5 + ["quarantined"]
