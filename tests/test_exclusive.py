"""Work that runs on one instance at a time: a job another instance is running is skipped,
and the lock of an instance killed with SIGKILL passes to the next one at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from maildesk.db import Database
from maildesk.exclusive import exclusive, singly
from tests.conftest import PG_URL, wait_for

pytestmark = pytest.mark.skipif(not PG_URL, reason="advisory locks are PostgreSQL's")


def test_a_job_another_instance_is_running_is_skipped_then_runs_after(db_url: str) -> None:
    first, second = Database(db_url), Database(db_url)
    runs: list[str] = []
    try:
        with exclusive(first, "maildesk:job:autoclose") as mine:
            assert mine
            assert singly(second, "maildesk:job:autoclose", lambda: runs.append("second")) is None
            # Another job's lock is another lock.
            singly(second, "maildesk:job:digest", lambda: runs.append("digest"))
        singly(second, "maildesk:job:autoclose", lambda: runs.append("second"))
    finally:
        first.dispose()
        second.dispose()
    assert runs == ["digest", "second"]


def test_the_lock_of_a_killed_instance_passes_on_at_once(db_url: str) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, time
                from maildesk.db import Database
                from maildesk.exclusive import exclusive
                with exclusive(Database({db_url!r}), "maildesk:imap:box") as mine:
                    print("held" if mine else "refused", flush=True)
                    time.sleep(600)
                """
            ),
        ],
        stdout=subprocess.PIPE,
    )
    other = Database(db_url)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == b"held"
        assert singly(other, "maildesk:imap:box", lambda: "polled") is None
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(30)
        assert wait_for(lambda: singly(other, "maildesk:imap:box", lambda: "polled"), 10) == (
            "polled"
        )
    finally:
        if holder.poll() is None:
            holder.kill()
        other.dispose()
