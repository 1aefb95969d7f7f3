"""PostgreSQL restarts, fails over or stalls under a running `maildesk serve`.

What ops of a busy support address expect: the daemon rides it out by itself,
loses no mail, sends nothing twice, and needs no restart. The daemon (a real
`maildesk serve` with its worker process) reaches the real PostgreSQL through
a TCP hop the test can take away (`tests/pg_proxy.py`): a restart cuts every
connection and refuses new ones for a while. A stall is a real lock on one of
the daemon's tables, held by the test's own connection. The relay is a real
SMTP sink.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import smtplib
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from maildesk import leases
from maildesk.db import LOCK_TIMEOUT_SECONDS, POSTGRES_TCP, Database
from maildesk.inbound import rawbytes
from maildesk.inbound.store import Envelope
from maildesk.services import Services
from tests.conftest import PG_URL, make_mail, wait_for
from tests.pg_proxy import PgProxy
from tests.smtp_sink import SmtpSink
from tests.test_crash import DaemonProcess
from tests.test_workers import initialized

pytestmark = pytest.mark.skipif(not PG_URL, reason="a PostgreSQL outage needs PostgreSQL")

SUPPORT = "support@example.test"
CUSTOMER = "alice@customer.test"


@pytest.fixture
def hop() -> Iterator[PgProxy]:
    with PgProxy(make_url(PG_URL).port or 5432) as running:
        yield running


def serve(
    config_values: dict[str, Any], tmp_path: Path, relay: SmtpSink, hop: PgProxy, **workers: Any
) -> DaemonProcess:
    """serve with one worker process, its database through `hop`, its mail to `relay`."""
    values = json.loads(json.dumps(config_values))
    values["database"]["url"] = hop.url(values["database"]["url"])
    values["outbound"]["url"] = relay.url
    values["workers"] = {"count": 1, **workers}
    path, settings = initialized(values, tmp_path)
    return DaemonProcess(path, tmp_path / "serve.log", settings)


@pytest.fixture
def start(
    config_values: dict[str, Any], tmp_path: Path, relay: SmtpSink, hop: PgProxy
) -> Iterator[Callable[..., DaemonProcess]]:
    """Starts `serve` (see `serve`); each is killed at the test's end."""
    started: list[DaemonProcess] = []

    def starting(**workers: Any) -> DaemonProcess:
        daemon = serve(config_values, tmp_path, relay, hop, **workers)
        started.append(daemon.start())
        return daemon

    yield starting
    for daemon in started:
        daemon.kill()


def log_records(daemon: DaemonProcess) -> list[dict[str, Any]]:
    """The JSON lines `daemon` has written whole so far."""
    written = daemon.log_path.read_text(errors="replace")
    lines = written[: written.rfind("\n") + 1].splitlines()  # a line being written waits
    return [json.loads(line) for line in lines if line.startswith("{")]


def send(daemon: DaemonProcess, subject: str) -> None:
    smtp = daemon.settings.smtp
    with smtplib.SMTP(smtp.host, smtp.port, timeout=30) as client:
        client.sendmail(CUSTOMER, [SUPPORT], make_mail(subject=subject))


def idle(daemon: DaemonProcess) -> dict[str, Any] | None:
    """The daemon's health once nothing waits in either queue."""
    health = daemon.health()
    if health is None or health["inbound_pending"] or health["outbox_pending"]:
        return None
    return health


def test_an_acknowledgement_the_relay_took_while_postgresql_restarts_is_sent_once(
    relay: SmtpSink,
    hop: PgProxy,
    start: Callable[..., DaemonProcess],
) -> None:
    """The relay says 250 to our acknowledgement just as PostgreSQL goes down: the
    sender cannot mark the row sent. The daemon lives on and knows it was sent, so once
    the database is back the row is marked, not sent again when its lease runs out."""
    daemon = start()
    wait_for(daemon.workers, 60, "serve's worker process")

    def restart_postgresql() -> None:  # the relay holds our mail, not yet answered
        relay.on_data = None
        hop.down()

    relay.on_data = restart_postgresql
    send(daemon, "Printer broken")
    relay.wait_for(1, 60)
    # The sender tries to mark the row the moment the relay answers.
    wait_for(lambda: hop.refused, 30, "the daemon to find PostgreSQL gone")
    hop.up()

    health = wait_for(lambda: idle(daemon), 60 + leases.LEASE.total_seconds(), "empty queues")
    assert health["quarantined"] == 0, health
    assert len(relay.messages) == 1, "the acknowledgement went to the customer twice"


@pytest.fixture
def postgres() -> Iterator[Engine]:
    """The test's own connections to PostgreSQL, not through the hop."""
    engine = create_engine(PG_URL)
    yield engine
    engine.dispose()


def waiting_on_lock(postgres: Engine, table: str, seconds: float) -> int:
    """Backends that have waited `seconds` for a lock, reading `table`: a transaction's
    view of pg_stat_activity is frozen, so each look is a transaction of its own."""
    with postgres.connect() as conn:
        found = conn.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND query ILIKE :reads AND now() - state_change > make_interval(secs => :s)"
            ),
            {"reads": f"%FROM {table}%", "s": seconds},
        )
        return int(found.scalar() or 0)


def test_mail_processed_while_postgresql_stalls_past_the_budget_is_not_quarantined(
    relay: SmtpSink,
    postgres: Engine,
    start: Callable[..., DaemonProcess],
) -> None:
    """PostgreSQL stops answering the worker's write for longer than a message's
    processing budget (a failover, a commit waiting for a synchronous standby, an
    exclusive lock such as VACUUM FULL's). The wait is the database's, not the
    message's: once it answers, the mail becomes a ticket and is acknowledged."""
    daemon = start(message_seconds=1)
    wait_for(daemon.workers, 60, "serve's worker process")
    schema = daemon.settings.database.url.rpartition("search_path%3D")[2]
    with postgres.connect() as stall:
        stall.execute(text(f"LOCK TABLE {schema}.messages IN ACCESS EXCLUSIVE MODE"))
        send(daemon, "Printer broken")  # stored: the spool is not locked
        # Twice the message's budget, spent waiting in its database stages.
        stalled = lambda: waiting_on_lock(postgres, "messages", 2)  # noqa: E731
        wait_for(stalled, 60, "the worker to wait 2 s for the database")
        stall.rollback()

    health = wait_for(lambda: idle(daemon), 60, "empty queues")
    assert health["quarantined"] == 0, daemon.log()
    [ack] = relay.wait_for(1, 10)
    assert b"Printer broken" in ack.content


def terminate(postgres: Engine, connection: Connection) -> None:
    """PostgreSQL ends the backend of `connection` (a restart, `pg_terminate_backend`),
    and the call returns once it has ended."""
    driver = connection.connection.driver_connection
    assert driver is not None
    with postgres.connect() as admin:
        ended = admin.execute(
            text("SELECT pg_terminate_backend(:pid, 10000)"), {"pid": driver.info.backend_pid}
        )
        assert ended.scalar() is True


def test_a_connection_whose_backend_ended_is_dropped_with_one_line_and_no_traceback(
    services: Services, postgres: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    """The raw bytes are read on the driver's own cursor, where SQLAlchemy does not see a
    connection die. Its pool then failed to roll the returned connection back and
    logged an ERROR with two tracebacks, for each connection a PostgreSQL restart took
    (`serve.log` of a flood under restarts: one per connection lost), beside the failure
    the reader had reported already. One warning now, and the next use connects afresh."""
    spool_id = services.store.put(make_mail(), Envelope("smtp", CUSTOMER, (SUPPORT,)))
    with services.db.reading_connection() as connection:
        raw = rawbytes.read(connection, spool_id)
        rawbytes.end_reads(connection)

    with caplog.at_level(logging.WARNING):
        # A reader (the processor loading a message) whose backend ends between reads.
        with services.db.reading_connection() as connection:
            assert rawbytes.read(connection, spool_id) == raw  # the driver's transaction
            terminate(postgres, connection)
            with pytest.raises(psycopg.OperationalError):
                rawbytes.read(connection, spool_id)

    assert [(r.name, r.getMessage()) for r in caplog.records if r.exc_info] == []
    [lost] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert (lost.name, lost.levelno) == ("maildesk.db", logging.WARNING)
    assert lost.getMessage().startswith("a database connection was lost (")
    assert services.store.load(spool_id).raw == raw


def test_mail_arriving_while_postgresql_does_not_answer_gets_a_temporary_failure(
    relay: SmtpSink,
    postgres: Engine,
    start: Callable[..., DaemonProcess],
) -> None:
    """PostgreSQL takes the connection and never answers the commit (a failover whose
    old primary is gone with its address, a synchronous standby away, a lock): the
    client is told 451 to come back later, within SQLite's own writer wait, instead
    of waiting as long as the database does. Once it answers, mail is taken again."""
    daemon = start()
    schema = daemon.settings.database.url.rpartition("search_path%3D")[2]
    smtp = daemon.settings.smtp
    raw = make_mail(subject="Printer broken")
    with postgres.connect() as stall:
        stall.execute(text(f"LOCK TABLE {schema}.inbound IN ACCESS EXCLUSIVE MODE"))
        with smtplib.SMTP(smtp.host, smtp.port, timeout=LOCK_TIMEOUT_SECONDS + 15) as client:
            with pytest.raises(smtplib.SMTPDataError) as refused:
                client.sendmail(CUSTOMER, [SUPPORT], raw)
        assert refused.value.smtp_code == 451
        stall.rollback()

    with smtplib.SMTP(smtp.host, smtp.port, timeout=30) as client:
        client.sendmail(CUSTOMER, [SUPPORT], raw)  # the client comes back, as told
    health = wait_for(lambda: idle(daemon), 60, "empty queues")
    assert health["quarantined"] == 0, health
    # The first try may have been stored once the lock went: the same mail, once.
    [ack] = relay.messages
    assert b"Printer broken" in ack.content


class BlackHole:
    """Drops every packet to and from one port on this machine (nftables), as a server
    whose machine is gone, or the network to it cut: nothing answers, not even a reset."""

    def __init__(self, port: int) -> None:
        self.table = f"maildesk_test_{port}"
        self.port = port

    def __enter__(self) -> BlackHole:
        rules = (
            f"add table inet {self.table}\n"
            f"add chain inet {self.table} out {{ type filter hook output priority 0; }}\n"
            f"add rule inet {self.table} out tcp dport {self.port} drop\n"
            f"add rule inet {self.table} out tcp sport {self.port} drop\n"
        )
        subprocess.run(["nft", "-f", "-"], input=rules.encode(), check=True)
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["nft", "delete", "table", "inet", self.table], check=True)


def _can_black_hole() -> bool:
    if shutil.which("nft") is None or os.geteuid() != 0:
        return False
    probe = f"maildesk_probe_{os.getpid()}"
    made = subprocess.run(["nft", "add", "table", "inet", probe], capture_output=True)
    if made.returncode != 0:
        return False
    subprocess.run(["nft", "delete", "table", "inet", probe], check=True)
    return True


@pytest.mark.skipif(not _can_black_hole(), reason="needs root and nftables (Debian: nftables)")
def test_a_statement_to_a_server_that_vanished_fails_in_seconds_not_minutes(
    hop: PgProxy,
) -> None:
    """PostgreSQL's machine is lost (or the network to it cut): no reset ever comes. A
    statement in flight must fail after the TCP timeout maildesk gives libpq, so the
    pool connects afresh once the server is back (a failover), not wait out the
    kernel's retransmissions for about 15 minutes while every 250 becomes a 451."""
    db = Database(hop.url(PG_URL))
    try:
        with db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))  # connected: from here on, nothing answers
            outcome: list[BaseException | None] = []

            def ask() -> None:
                try:
                    conn.execute(text("SELECT 1"))
                    outcome.append(None)
                except BaseException as exc:
                    outcome.append(exc)

            with BlackHole(hop.port):
                asking = threading.Thread(target=ask, daemon=True)
                asking.start()
                asking.join(POSTGRES_TCP["tcp_user_timeout"] / 1000 + 30)
                assert outcome, "the statement still waits for a server that is gone"
                assert isinstance(outcome[0], OperationalError), outcome
                # A new connection to it gives up too, not after the SYN's retries.
                connecting = threading.Thread(target=connect_once, args=(db, outcome))
                connecting.start()
                connecting.join(POSTGRES_TCP["connect_timeout"] + 30)
                assert len(outcome) == 2, "a new connection still waits for the server"
                assert isinstance(outcome[1], OperationalError), outcome
        # The server is reachable again: the next statement takes a new connection.
        with db.engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
    finally:
        db.dispose()


def connect_once(db: Database, outcome: list[BaseException | None]) -> None:
    try:
        with db.engine.connect():
            outcome.append(None)
    except BaseException as exc:
        outcome.append(exc)


def test_mail_refused_while_postgresql_is_away_logs_one_traceback_not_one_per_message(
    hop: PgProxy,
    start: Callable[..., DaemonProcess],
) -> None:
    """PostgreSQL is away: every message is answered 451, each in a commit of its own
    that fails. The log holds the first failure's traceback, then a line per message,
    and says when storing works again; before, each message logged two tracebacks."""
    daemon = start()
    wait_for(daemon.workers, 60, "serve's worker process")
    hop.down()
    smtp = daemon.settings.smtp
    for n in range(3):
        with smtplib.SMTP(smtp.host, smtp.port, timeout=60) as client:
            with pytest.raises(smtplib.SMTPDataError) as refused:
                client.sendmail(CUSTOMER, [SUPPORT], make_mail(subject=f"Away {n}"))
        assert refused.value.smtp_code == 451
    hop.up()
    send(daemon, "Back again")

    storing = [
        r for r in log_records(daemon) if r["logger"] in ("maildesk.spool", "maildesk.inbound.smtp")
    ]
    assert sum("exc" in r for r in storing) == 1, storing
    failed = [r["msg"] for r in storing if r["msg"].startswith("storing 1 messages failed")]
    assert len(failed) == 3 and "again (3 commits in a row)" in failed[-1], failed
    said = [r for r in storing if r["msg"].startswith("could not store a message from")]
    assert len(said) == 3 and all(r["level"] == "warning" for r in said), said
    assert any(r["msg"] == "storing works again, after 3 failed commits" for r in storing)


def test_a_worker_waiting_out_an_outage_logs_one_traceback_and_when_it_works_again(
    relay: SmtpSink,
    hop: PgProxy,
    start: Callable[..., DaemonProcess],
) -> None:
    """PostgreSQL is away while a worker waits for mail: its processing and its sending
    each fail every sweep. Ops read the first failure whole, a line for each one after
    it, and when it works again; before, every sweep logged a traceback (two every two
    seconds, hundreds in a ten-minute failover)."""
    daemon = start()
    send(daemon, "Printer broken")
    wait_for(lambda: relay.messages, 60, "the acknowledgement: the worker at work")
    hop.down()

    def worker_records() -> list[dict[str, Any]]:
        return [r for r in log_records(daemon) if r["logger"] == "maildesk.worker"]

    def failed(what: str) -> list[dict[str, Any]]:
        return [r for r in worker_records() if r["level"] == "error" and what in r["msg"]]

    wait_for(lambda: len(failed("processing")) >= 3, 60, "three failed processing sweeps")
    wait_for(lambda: len(failed("sending")) >= 3, 60, "three failed sending sweeps")
    hop.up()
    send(daemon, "Back again")
    wait_for(lambda: len(relay.messages) == 2, 60, "the second acknowledgement")

    for what in ("processing", "sending"):
        said = failed(what)
        assert sum("exc" in r for r in said) == 1, said
        assert said[2]["msg"].startswith(f"{what} failed again (3 tries in a row): "), said

    # Logged once the sweep that worked returns: it may end after the relay's 250.
    def said_back(what: str) -> bool:
        return any(r["msg"].startswith(f"{what} works again, after") for r in worker_records())

    wait_for(lambda: said_back("processing"), 30, "processing said to work again")
    wait_for(lambda: said_back("sending"), 30, "sending said to work again")
