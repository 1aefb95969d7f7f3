"""/healthz and `maildesk status`: "degraded" with the reason, on a running daemon.

The relay is a port that refuses connections; time moves by ManualClock.
The "gone" database is a deleted SQLite file, or a dropped PostgreSQL schema.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, select, text

from maildesk import health
from maildesk.cli import main
from maildesk.clock import ManualClock
from maildesk.config import from_mapping
from maildesk.models import Outbox
from maildesk.sdnotify import Notifier
from maildesk.services import Services
from maildesk.supervisor import Supervisor
from maildesk.web.ops import Shared
from tests.conftest import (
    METRICS_TOKEN,
    PG_URL,
    RunningDaemon,
    _listening,
    make_mail,
    running_daemon,
    toml,
    wait_for,
)
from tests.helpers import (
    history_with_waiting_rows,
    inbound_table_locked,
    outbox_rows,
    sqlite_plans,
)
from tests.smtp_sink import closed_port
from tests.web.portal_client import Client, customer


def get_health(running: RunningDaemon, token: str = "") -> tuple[int, dict[str, Any]]:
    """/healthz on the public listener; with the metrics `token`, with its figures."""
    web = running.services.settings.web
    wait_for(lambda: _listening(web.host, web.port), what="the web listener")
    request = urllib.request.Request(f"http://{web.host}:{web.port}/healthz")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def deferred(running: RunningDaemon) -> int:
    with running.services.db.transaction() as session:
        return len(
            session.scalars(
                select(Outbox).where(Outbox.state == "pending", Outbox.last_error != "")
            ).all()
        )


def test_relay_down_longer_than_the_threshold_degrades_health(
    config_values: dict[str, Any], tmp_path: Path, clock: ManualClock
) -> None:
    config_values["health"] = {"outbox_failing_minutes": 30, "outbox_backlog_minutes": 120}
    config_values["metrics"] = {"bearer_token": "ops-only"}
    with closed_port() as relay_port:
        config_values["outbound"] = {"url": f"smtp://127.0.0.1:{relay_port}"}
        with running_daemon(from_mapping(config_values, base_dir=tmp_path), clock) as running:
            running.send(make_mail())
            wait_for(lambda: deferred(running), what="the acknowledgement to be deferred")

            status, body = get_health(running, token="ops-only")
            assert (status, body["status"], body["reasons"]) == (200, "ok", [])
            assert body["outbox_deferred"] == 1

            clock.advance(timedelta(minutes=29))
            assert get_health(running)[0] == 200
            clock.advance(timedelta(minutes=2))
            status, body = get_health(running, token="ops-only")
            assert (status, body["status"]) == (503, "degraded")
            [reason] = body["reasons"]
            assert (
                reason
                == "outbox failing for 31 min (1 messages waiting to retry; threshold 30 min)"
            )
            # Without the token: the status and why, not how many wait.
            assert get_health(running) == (
                503,
                {"status": "degraded", "reasons": ["outbox failing for N min"], "database": "ok"},
            )


def test_a_database_that_is_gone_degrades_health_and_status(
    config_values: dict[str, Any], tmp_path: Path, clock: ManualClock, config_file: Path
) -> None:
    settings = from_mapping(config_values, base_dir=tmp_path)
    with running_daemon(settings, clock) as running:
        assert get_health(running)[0] == 200
        assert CliRunner().invoke(main, ["--config", str(config_file), "status"]).exit_code == 0

        restore = _remove_database(settings.database.url, settings.sqlite_path)
        try:
            status, body = get_health(running)
            assert (status, body["status"], body["database"]) == (503, "degraded", "unreachable")
            assert body["reasons"][0].startswith("database unreachable")

            result = CliRunner().invoke(main, ["--config", str(config_file), "status", "--json"])
            assert result.exit_code == 1, result.output
            printed = json.loads(result.stdout)
            assert (printed["status"], printed["reasons"]) == ("degraded", body["reasons"])
            human = CliRunner().invoke(main, ["--config", str(config_file), "status"])
            assert "degraded" in human.stdout and "database unreachable" in human.stdout
        finally:
            restore()


def _remove_database(url: str, sqlite_path: Path | None) -> Any:
    """Make the database go away under the running daemon; returns how to undo that."""
    if sqlite_path is not None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{sqlite_path}{suffix}").unlink(missing_ok=True)
        return lambda: None
    schema = url.rsplit("search_path%3D", 1)[1]
    admin = create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))

    def recreate() -> None:  # the fixture drops it at the end
        with admin.begin() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
        admin.dispose()

    return recreate


def test_free_disk_below_the_threshold_degrades_health(
    config_values: dict[str, Any], tmp_path: Path, clock: ManualClock
) -> None:
    free_mb = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize // (1024 * 1024)
    config_values["health"] = {"min_free_disk_mb": free_mb + 10_000_000}
    config_values["metrics"] = {"bearer_token": "ops-only"}
    with running_daemon(from_mapping(config_values, base_dir=tmp_path), clock) as running:
        status, body = get_health(running, token="ops-only")
        public_status, public = get_health(running)
    assert status == 503
    assert any(r.startswith("free disk") for r in body["reasons"])
    # What anyone may see: no figure, of the disk or of the mail waiting.
    assert public_status == 503 and "free_disk_mb" not in public
    assert any(
        re.fullmatch(r"free disk N MB for the \w+ is below N MB", r) for r in public["reasons"]
    )
    assert not [r for r in public["reasons"] if re.search(r"\d", r)], public["reasons"]
    # /healthz is public: it names what a disk holds, never where the files are.
    assert set(body["free_disk_mb"]) <= {"database", "outbox"}
    assert str(tmp_path) not in json.dumps(body)


@pytest.mark.skipif(bool(PG_URL), reason="the reserve for new mail watches SQLite's disk")
def test_health_says_when_new_mail_is_refused_for_want_of_disk(
    config_values: dict[str, Any], tmp_path: Path, clock: ManualClock
) -> None:
    free_mb = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize // (1024 * 1024)
    # Above the free space, while min_free_disk_mb (500) is not: the reserve is named.
    config_values["limits"] = {"accept_min_free_mb": free_mb + 10_000_000}
    config_values["health"] = {"min_free_disk_mb": 1}
    with running_daemon(from_mapping(config_values, base_dir=tmp_path), clock) as running:
        status, body = get_health(running, token=METRICS_TOKEN)
    assert status == 503
    assert body["reasons"] == [
        f"new mail is refused: free disk for the database is below {free_mb + 10_000_000} MB"
    ]


def test_status_prints_ok_on_a_fresh_install(tmp_path: Path, config_values: dict[str, Any]) -> None:
    path = tmp_path / "maildesk.toml"
    path.write_text(toml(config_values))
    assert CliRunner().invoke(main, ["--config", str(path), "init"]).exit_code == 0
    result = CliRunner().invoke(main, ["--config", str(path), "status", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["status"] == "ok"


@pytest.mark.skipif(bool(PG_URL), reason="reads SQLite's query plans")
def test_health_and_the_status_line_read_the_waiting_rows_never_the_history(
    services: Services, clock: ManualClock
) -> None:
    """Every processed inbound row and every sent outbox row stays (the audit line, the
    Message-IDs replies thread by), so a read of all of them grows without end: at
    300,000 kept messages one /healthz cost 0.9-1.4 s of CPU, and the systemd status
    line, every 5 s, as much (`bench/health.py`). Each statement of both must be a
    search of a state index, whatever the planner's statistics say about the history:
    here `ANALYZE` ran while every row was processed, which says that the state index
    narrows nothing (`db.rare`)."""
    history_with_waiting_rows(services, clock.now())

    answers: dict[str, Any] = {}

    def answer() -> None:
        answers["check"] = health.check(services.settings, services.db, clock)
        answers["line"] = Supervisor(services, None, Notifier({})).status_line()

    plans = sqlite_plans(services, answer, "inbound|outbox")
    backlog = answers["check"].backlog
    assert (backlog.inbound_pending, backlog.outbox_pending) == (3, 3)
    assert answers["line"] == "3 pending, 0 quarantined, 3 to send"
    by_state = re.compile(
        r"SEARCH (inbound|outbox) USING (COVERING )?INDEX ix_\w+_state_\w+ \(state=\?\)"
    )
    assert all(by_state.fullmatch(plan) for plan, _ in plans if "TEMP B-TREE" not in plan), plans


@pytest.mark.skipif(not PG_URL, reason="holds a PostgreSQL table lock to hang the check")
def test_a_flood_of_healthz_on_a_hung_database_runs_one_check_not_one_per_request(
    config_values: dict[str, Any], tmp_path: Path, clock: ManualClock
) -> None:
    """/healthz is public. Each request used to start its own check in the loop's
    default executor (the portal's and the scheduled jobs' threads too): on a hung
    database every thread of the pool ended up waiting there. Requests that arrive
    while a check runs now share it, and each still answers within the timeout."""
    config_values["health"] = {"database_timeout": 1}
    settings = from_mapping(config_values, base_dir=tmp_path)
    with running_daemon(settings, clock) as running:
        assert get_health(running)[0] == 200
        with inbound_table_locked(settings.database.url) as waiting:
            with ThreadPoolExecutor(20) as pool:
                answers = list(pool.map(lambda _: get_health(running), range(20)))
            assert {(status, body["database"]) for status, body in answers} == {
                (503, "unreachable")
            }
            assert waiting() == 1
        wait_for(lambda: get_health(running)[0] == 200, what="a healthy answer again")


def test_requests_during_a_check_share_it_and_the_next_request_starts_a_fresh_one() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        started: list[asyncio.Future[health.Health]] = []

        def start() -> asyncio.Future[health.Health]:
            started.append(loop.create_future())
            return started[-1]

        shared: Shared[health.Health] = Shared()
        first, second = shared.join(start), shared.join(start)
        assert first is second and len(started) == 1
        first.set_result(health.Health(health.OK, (), database=True))
        assert (await second).ok
        assert shared.join(start) is not first and len(started) == 2

    asyncio.run(scenario())


def test_public_healthz_does_not_tell_who_has_an_account(
    config_values: dict[str, Any], tmp_path: Path, clock: ManualClock
) -> None:
    """ "Send me a new link" answers the same whether or not the address is a customer's;
    /healthz, public on the portal's listener, counted the outbox, where a known
    address's invitation waited as long as the relay took (long, while it is down)."""
    config_values["metrics"] = {"bearer_token": "ops-only"}
    with closed_port() as relay_port:
        config_values["outbound"] = {"url": f"smtp://127.0.0.1:{relay_port}"}
        with running_daemon(from_mapping(config_values, base_dir=tmp_path), clock) as running:
            customer(running.services, "ceo@victim.test")
            web = running.services.settings.web
            portal = Client(f"http://{web.host}:{web.port}")
            portal.get("/account/forgot")
            before = get_health(running)
            portal.post("/account/forgot", {"email": "nobody@victim.test"})
            unknown = get_health(running)
            portal.post("/account/forgot", {"email": "ceo@victim.test"})
            wait_for(lambda: outbox_rows(running.services), what="the invitation queued")

            assert get_health(running) == unknown == before
            assert get_health(running, token="ops-only")[1]["outbox_pending"] == 1
            assert get_health(running, token="wrong")[1] == before[1]


def test_health_and_metrics_answers_are_never_stored_by_a_cache(
    config_values: dict[str, Any], tmp_path: Path, clock: ManualClock
) -> None:
    """/healthz gives its figures, and /metrics answers, only to the token's bearer; the
    answers said nothing about caching, so a cache in front of the portal that keys on
    the URL (nginx's proxy_cache does) could keep ops' answer and hand it to anyone."""
    config_values["metrics"] = {"bearer_token": "ops-only"}
    with running_daemon(from_mapping(config_values, base_dir=tmp_path), clock) as running:
        web = running.services.settings.web
        wait_for(lambda: _listening(web.host, web.port), what="the web listener")
        for path in ("/healthz", "/metrics"):
            request = urllib.request.Request(f"http://{web.host}:{web.port}{path}")
            request.add_header("Authorization", "Bearer ops-only")
            with urllib.request.urlopen(request, timeout=10) as response:
                assert response.headers["Cache-Control"] == "no-store", path
