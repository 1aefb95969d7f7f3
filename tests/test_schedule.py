"""Serve's scheduled jobs (maildesk/schedule.py): serve stops them before it returns.

A job still in its transaction after serve returned held locks that whatever came
next waited for: once, on PostgreSQL, the test fixture's `DROP SCHEMA` deadlocked
with an autoclose run still going in the stopped daemon's thread pool.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from maildesk import jobs
from maildesk.app import DRAIN_SECONDS
from maildesk.models import JobRun
from maildesk.services import Services
from tests.conftest import RunningDaemon, wait_for

STOPPED = "stopped"
WAITING = "stopping: waiting for the scheduled jobs running now (autoclose)"


class Said(logging.Handler):
    """The daemon's log lines, in the order they were written."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__(logging.INFO)
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def said(caplog: pytest.LogCaptureFixture) -> Iterator[list[str]]:
    caplog.set_level(logging.INFO, logger="maildesk")
    lines: list[str] = []
    handler = Said(lines)
    logging.getLogger("maildesk").addHandler(handler)
    yield lines
    logging.getLogger("maildesk").removeHandler(handler)


def test_serve_returns_only_once_the_job_running_at_stop_has_committed(
    services: Services, monkeypatch: pytest.MonkeyPatch, said: list[str]
) -> None:
    inside, release = threading.Event(), threading.Event()

    def held_autoclose(services: Services) -> int:
        # The first run, at start: mid-transaction, with a row written, until released.
        with services.db.transaction() as session:
            session.add(JobRun(name="held", key="autoclose", at=services.clock.now()))
            session.flush()
            inside.set()
            release.wait(DRAIN_SECONDS + 30)
        said.append("job committed")
        return 0

    monkeypatch.setattr(jobs, "autoclose", held_autoclose)
    running = RunningDaemon(services).start()
    try:
        assert inside.wait(30), "autoclose did not run at start"
        running.loop.call_soon_threadsafe(running.daemon.stop)
        # Serve says it waits for the job, or (what this test catches) returns without it.
        wait_for(lambda: WAITING in said or STOPPED in said, DRAIN_SECONDS + 10, "serve to stop")
    finally:
        release.set()
        running.stop()

    assert [line for line in said if line in (WAITING, "job committed", STOPPED)] == [
        WAITING,
        "job committed",
        STOPPED,
    ]
    with services.db.reading() as session:
        assert session.scalars(select(JobRun.name).where(JobRun.name == "held")).all() == ["held"]
