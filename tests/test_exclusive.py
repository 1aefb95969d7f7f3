"""Work that runs on one instance at a time: a job another instance is running is skipped,
and the lock of an instance killed with SIGKILL passes to the next one at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Callable

import pytest
from sqlalchemy import create_engine, text

from maildesk.db import Database
from maildesk.exclusive import exclusive, singly, while_holding
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


class Turns:
    """Work that notes who runs it, and how many ran it at once at most."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.working: set[str] = set()
        self.most_at_once = 0
        self.lock = threading.Lock()

    def work(self, who: str) -> Callable[[threading.Event], None]:
        def run(release: threading.Event) -> None:
            with self.lock:
                self.log.append(f"{who} starts")
                self.working.add(who)
                self.most_at_once = max(self.most_at_once, len(self.working))
            release.wait()
            with self.lock:
                self.log.append(f"{who} stops")
                self.working.discard(who)

        return run

    def count(self, entry: str) -> int:
        with self.lock:
            return self.log.count(entry)

    def someone_works(self) -> bool:
        with self.lock:
            return len(self.working) == 1


_HOLDER = text(
    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    " AND classid = :high AND objid = :low"
)


def _holder_of(db: Database, name: str) -> int:
    """The backend pid holding `name`'s lock in this test's schema."""
    with db.engine.connect() as conn:
        key = conn.execute(
            text("SELECT hashtextextended(current_schema() || '/' || :name, 0)"), {"name": name}
        ).scalar_one()
        pid = conn.execute(_HOLDER, {"high": (key >> 32) & 0xFFFFFFFF, "low": key & 0xFFFFFFFF})
        return int(pid.scalar_one())


def _holding_in_thread(
    db: Database, name: str, work: Callable[[threading.Event], None]
) -> tuple[threading.Thread, threading.Event]:
    stop = threading.Event()
    timing = {"retry": 0.1, "check": 0.1, "answer": 1.0}
    thread = threading.Thread(target=while_holding, args=(db, name, stop, work), kwargs=timing)
    thread.start()
    return thread, stop


@pytest.mark.parametrize("how", ["terminated", "silent"])
def test_a_holder_whose_session_ends_or_falls_silent_stops_its_work(db_url: str, how: str) -> None:
    """A PostgreSQL restart, a terminated backend or a cut network ends the lock's
    session under a live holder: it must stop polling, not poll beside the next one."""
    name = "maildesk:imap:support@imap.test:993/INBOX"
    first, second, admin = Database(db_url), Database(db_url), Database(db_url)
    turns = Turns()
    threads: list[tuple[threading.Thread, threading.Event]] = []
    stopped_backend: int | None = None
    try:
        threads.append(_holding_in_thread(first, name, turns.work("A")))
        wait_for(lambda: turns.count("A starts"), what="A to take the work")
        threads.append(_holding_in_thread(second, name, turns.work("B")))
        backend = _holder_of(admin, name)
        if how == "silent":  # as behind a cut network: A cannot tell whether it still holds
            os.kill(backend, signal.SIGSTOP)  # the lock, so it must stop
            stopped_backend = backend
        with admin.engine.connect() as conn:  # a stopped backend acts on it once it runs
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": backend})
        wait_for(lambda: turns.count("A stops"), 10, "A to let the work go")
        if stopped_backend is not None:
            assert turns.log == ["A starts", "A stops"]  # nobody else could work meanwhile
            os.kill(stopped_backend, signal.SIGCONT)  # the server notices: the lock is free
            stopped_backend = None
        # The work goes on, on one instance: the other one's asks are refused meanwhile.
        wait_for(turns.someone_works, 10, "one instance to take the work up again")
        assert turns.count("A starts") + turns.count("B starts") == 2, turns.log
        # The overlap is at most one check (0.1 s here) after the session ended.
        assert turns.most_at_once <= (1 if how == "silent" else 2)
    finally:
        if stopped_backend is not None:
            os.kill(stopped_backend, signal.SIGCONT)
        for thread, stop in threads:
            stop.set()
            thread.join(15)
        for db in (first, second, admin):
            db.dispose()


def test_desks_in_schemas_of_their_own_do_not_wait_for_each_other(db_url: str) -> None:
    """Two desks sharing one PostgreSQL database, each in its own schema: each polls
    its own mailbox and runs its own autoclose, whatever the other is doing."""
    other_schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {other_schema}"))
    sep = "&" if "?" in PG_URL else "?"
    mine, theirs = (
        Database(db_url),
        Database(f"{PG_URL}{sep}options=-csearch_path%3D{other_schema}"),
    )
    try:
        with exclusive(theirs, "maildesk:job:autoclose") as held_there:
            assert held_there
            assert singly(mine, "maildesk:job:autoclose", lambda: "closed") == "closed"
    finally:
        mine.dispose()
        theirs.dispose()
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {other_schema} CASCADE"))
        admin.dispose()
