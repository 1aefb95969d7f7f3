"""/metrics after real SMTP traffic, read with prometheus-client's own parser; the access log.

The traffic: three customer mails, one of them sent twice (an MTA retry), one
refused recipient, one message with bare LF, one message quarantined by the
guard (stored by `deliver`, as an MTA pipe would), and web requests.
"""

from __future__ import annotations

import logging
import smtplib
import socket
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, insert, select, update

from maildesk.clock import ManualClock
from maildesk.config import ConfigError, from_mapping
from maildesk.growing import RECOUNT, SETTLE
from maildesk.inbound import landing
from maildesk.inbound.store import Envelope
from maildesk.metrics import DatabaseCollector
from maildesk.models import Inbound, Outbox, Ticket
from maildesk.services import Services
from tests.conftest import (
    METRICS_TOKEN,
    PG_URL,
    RunningDaemon,
    _listening,
    free_port,
    make_mail,
    running_daemon,
    wait_for,
)
from tests.conftest import Outbox as OutboxSink
from tests.helpers import (
    history_with_waiting_rows,
    inbound_row,
    inbound_table_locked,
    inbound_values,
    receive,
    sqlite_plans,
    tickets,
)
from tests.inbound.test_smtp_limits import connect

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def fetch(url: str, token: str = METRICS_TOKEN) -> tuple[int, str]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def scrape(url: str, token: str = METRICS_TOKEN) -> Samples:
    status, body = fetch(url, token)
    assert status == 200, body
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def web_url(running: RunningDaemon, path: str) -> str:
    web = running.services.settings.web
    wait_for(lambda: _listening(web.host, web.port), what="the web listener")
    return f"http://{web.host}:{web.port}{path}"


def send_traffic(running: RunningDaemon) -> None:
    for n in range(3):
        running.send(make_mail(subject=f"Problem {n}", message_id=f"<m{n}@customer.test>"))
    running.send(make_mail(subject="Problem 0", message_id="<m0@customer.test>"))  # a retry
    smtp = running.services.settings.smtp
    with smtplib.SMTP(smtp.host, smtp.port, timeout=10) as client:
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            client.sendmail("alice@customer.test", ["nobody@example.test"], make_mail())
    raw = connect(running)
    raw.reply()
    raw.command("EHLO client.test")
    raw.command("MAIL FROM:<alice@customer.test>")
    raw.command("RCPT TO:<support@example.test>")
    raw.command("DATA")
    raw.sock.sendall(b"Subject: x\r\n\r\nbare\nline\r\n.\r\n")
    assert raw.reply().startswith("554")
    raw.close()
    # Mixed line endings stored by another route: the guard quarantines it.
    running.services.store.put(b"Subject: x\r\n\r\nmixed\nendings\r\n", Envelope("deliver"))


def test_metrics_after_real_traffic(daemon: RunningDaemon, outbox: OutboxSink) -> None:
    send_traffic(daemon)
    outbox.wait(3)
    wait_for(lambda: len(tickets(daemon.services)) == 3, what="three tickets")
    assert fetch(web_url(daemon, "/login?next=/tickets"))[0] == 200
    assert fetch(web_url(daemon, "/no/such/page/12345"))[0] == 404

    def done() -> Samples | None:
        samples = scrape(web_url(daemon, "/metrics"))
        finished = value(samples, "maildesk_inbound_messages", state="pending") == 0
        sent = value(samples, "maildesk_outbox_messages", state="sent") == 3
        return samples if finished and sent else None

    samples = wait_for(done, what="the pipeline and the outbox to finish")
    assert value(samples, "maildesk_database_up") == 1
    assert value(samples, "maildesk_inbound_accepted_total", source="smtp") == 4
    assert value(samples, "maildesk_inbound_accepted_total", source="deliver") == 1
    assert value(samples, "maildesk_inbound_messages", state="done") == 3
    assert value(samples, "maildesk_inbound_messages", state="duplicate") == 1
    assert value(samples, "maildesk_inbound_messages", state="quarantined") == 1
    assert value(samples, "maildesk_smtp_refused_total", reason="unknown_recipient") == 1
    assert value(samples, "maildesk_smtp_refused_total", reason="bare_newline") == 1
    assert value(samples, "maildesk_tickets", status="new") == 3
    assert value(samples, "maildesk_outbox_messages", state="deferred") == 0
    assert value(samples, "maildesk_inbound_oldest_pending_seconds") == 0
    # Acceptance -> ticket, for the three that made one (the clock is manual: 0 s each).
    assert value(samples, "maildesk_processing_seconds_count") == 3
    assert value(samples, "maildesk_processing_seconds_bucket", le="0.05") == 3
    requests = "maildesk_http_requests_total"
    assert value(samples, requests, route="/login", method="GET", status="200") == 1
    assert value(samples, requests, route="unmatched", method="GET", status="404") == 1
    assert value(samples, "maildesk_smtp_sessions") >= 0


def test_a_scrape_reads_without_the_write_lock(daemon: RunningDaemon) -> None:
    """A scrape counts every table: with SQLite's write lock held meanwhile (the
    processor writing mail), it still answers from the database, and never holds the
    lock itself while it counts."""
    daemon.send(make_mail())
    wait_for(lambda: tickets(daemon.services), what="a ticket")
    with daemon.services.db.transaction():  # holds the write lock (SQLite) meanwhile
        samples = scrape(web_url(daemon, "/metrics"))
    assert value(samples, "maildesk_database_up") == 1
    assert value(samples, "maildesk_tickets", status="new") == 1


def test_metrics_on_their_own_listener_with_a_bearer_token(
    config_values: dict[str, Any], tmp_path: Path, clock: Any
) -> None:
    port = free_port()
    config_values["metrics"] = {"port": port, "bearer_token": "s3cret-scrape"}
    with running_daemon(from_mapping(config_values, base_dir=tmp_path), clock) as running:
        url = f"http://127.0.0.1:{port}/metrics"
        wait_for(lambda: _listening("127.0.0.1", port), what="the metrics listener")
        status, body = fetch(url)
        assert status == 401 and "maildesk" not in body
        assert fetch(url, "wrong")[0] == 401
        assert _status_line(port, b"Authorization: Bearer \xff\xfe") == b"HTTP/1.1 401 Unauthorized"
        samples = scrape(url, "s3cret-scrape")
        assert value(samples, "maildesk_database_up") == 1
        assert fetch(f"http://127.0.0.1:{port}/healthz")[0] == 200
        # Not on the public listener.
        assert fetch(web_url(running, "/metrics"))[0] == 404


def test_a_tokenless_metrics_listener_off_loopback_is_warned_of_at_start(
    config_values: dict[str, Any], tmp_path: Path, clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """`[metrics] port` without a bearer token on an address other machines reach gives
    /metrics and /healthz's figures to anyone there; nothing said so. One warning at
    start names the settings; a loopback listener or one with a token gets none."""
    caplog.set_level(logging.WARNING, logger="maildesk.web")

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if "[metrics] port" in r.getMessage()]

    port = free_port()
    config_values["metrics"] = {"host": "0.0.0.0", "port": port}
    with running_daemon(from_mapping(config_values, base_dir=tmp_path), clock):
        wait_for(lambda: _listening("127.0.0.1", port), what="the metrics listener")
        status, body = fetch(f"http://127.0.0.1:{port}/healthz", token="")
        assert status == 200 and "inbound_pending" in body  # the figures, to anyone
    [warning] = warnings()
    assert f"port {port} on 0.0.0.0" in warning and "bearer_token" in warning

    caplog.clear()
    for metrics in ({"host": "127.0.0.1"}, {"host": "0.0.0.0", "bearer_token": "s3cret"}):
        port = free_port()
        config_values["metrics"] = {**metrics, "port": port}
        with running_daemon(from_mapping(config_values, base_dir=tmp_path), clock):
            wait_for(lambda p=port: _listening("127.0.0.1", p), what="the metrics listener")
        assert warnings() == [], metrics
    assert all("s3cret" not in r.getMessage() for r in caplog.records)


def _status_line(port: int, header: bytes) -> bytes:
    """GET /metrics with `header` written as raw bytes (no client sends non-UTF-8)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        request = b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        sock.sendall(request + header + b"\r\n\r\n")
        return sock.recv(200).split(b"\r\n")[0]


def test_access_log_has_route_status_and_client_but_no_query_string(
    daemon: RunningDaemon, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="maildesk.http")
    secret = "tok3n-never-logged"
    fetch(web_url(daemon, f"/account/set-password?token={secret}"))
    fetch(web_url(daemon, "/%0d%0aFAKE%20200?x=1"))

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "maildesk.http"]

    wait_for(lambda: len(lines()) >= 2, what="two access log lines")
    first, second = lines()[:2]
    assert first.startswith("GET /account/set-password 400 ")  # an invalid link
    assert first.endswith(" 127.0.0.1")
    assert secret not in first and "?" not in first
    assert second.startswith("GET /%0d%0aFAKE%20200 404 ") and "\n" not in second
    assert all(secret not in r.getMessage() for r in caplog.records)


def collected(collector: DatabaseCollector) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in collector.collect()
        for sample in family.samples
    }


def full_count(services: Services) -> Samples:
    """What a scrape must report: every row counted, as scrapes once did each time."""
    found: Samples = {}
    with services.db.reading() as session:
        for source, n in session.execute(
            select(Inbound.source, func.count()).group_by(Inbound.source)
        ):
            found["maildesk_inbound_accepted_total", frozenset({("source", source)})] = n
        for model, name, column in (
            (Inbound, "maildesk_inbound_messages", Inbound.state),
            (Outbox, "maildesk_outbox_messages", Outbox.state),
            (Ticket, "maildesk_tickets", Ticket.status),
        ):
            label = "status" if model is Ticket else "state"
            for state, n in session.execute(select(column, func.count()).group_by(column)):
                if (model, state) != (Outbox, "pending"):  # split as queued and deferred
                    found[name, frozenset({(label, state)})] = n
    file = landing.sqlite_file(services.db.url)
    if file is not None:  # accepted, not yet moved into the table: pending all the same
        pending = "maildesk_inbound_messages", frozenset({("state", "pending")})
        found[pending] = found.get(pending, 0) + landing.waiting(landing.path_of(file)).count
    return found


def assert_counts(collector: DatabaseCollector, services: Services) -> None:
    truth = full_count(services)
    scraped = collected(collector)
    names = {name for name, _ in truth}
    reported = {key: n for key, n in scraped.items() if key[0] in names and n}
    assert reported == {key: n for key, n in truth.items() if n}


def test_a_scrape_matches_a_full_count_as_mail_arrives_and_rows_change_state(
    services: Services, clock: ManualClock
) -> None:
    """Scrapes count only what arrived since the last one (`maildesk/growing.py`); what
    they report must stay what counting every row reports, while mail arrives, rows
    leave their first state (processed, sent, bounced, closed, reopened) and, on
    PostgreSQL, the ids seen settle a minute later."""
    collector = DatabaseCollector(services.db, clock)
    for n in range(4):
        receive(services, make_mail(subject=f"Problem {n}", message_id=f"<c{n}@customer.test>"))
    receive(services, make_mail(subject="Problem 0", message_id="<c0@customer.test>"))
    receive(services, make_mail(message_id="<d@customer.test>"), source="deliver")
    assert_counts(collector, services)
    assert value(collected(collector), "maildesk_inbound_messages", state="duplicate") == 1

    def change(statement: Any) -> None:
        with services.db.transaction() as session:
            session.execute(statement)

    change(update(Outbox).values(state="sent"))
    assert_counts(collector, services)
    clock.advance(timedelta(seconds=30))
    change(update(Outbox).where(Outbox.id == 1).values(state="bounced"))
    change(update(Ticket).where(Ticket.id <= 2).values(status="closed"))
    receive(services, make_mail(subject="Later", message_id="<e@customer.test>"))
    assert_counts(collector, services)
    clock.advance(timedelta(seconds=45))  # past PostgreSQL's settling of the first reads
    change(update(Ticket).where(Ticket.id == 1).values(status="accepted"))  # reopened
    spool_id = services.store.put(make_mail(message_id="<f@customer.test>"), Envelope("imap"))
    assert_counts(collector, services)
    assert value(collected(collector), "maildesk_inbound_messages", state="pending") == 1
    services.drain_inbound()
    assert inbound_row(services, spool_id).state == "done"
    clock.advance(timedelta(minutes=5))
    assert_counts(collector, services)
    assert value(collected(collector), "maildesk_tickets", status="closed") == 1


@pytest.mark.skipif(bool(PG_URL), reason="reads SQLite's query plans")
def test_a_later_scrape_reads_what_arrived_since_never_the_history(
    services: Services, clock: ManualClock
) -> None:
    """Inbound, outbox and ticket rows stay forever, and every scrape used to count all
    of them: 0.9 s of CPU at 1,000,000 kept messages (`bench/health.py`). After a
    process's first scrape, each statement of a scrape is a search: of the ids above
    what it counted already, or of a state index for the few rows not in their
    table's final state."""
    history = 3000
    history_with_waiting_rows(services, clock.now(), history)  # analysed while all were done
    collector = DatabaseCollector(services.db, clock)
    collector.start()
    collected(collector)  # the first: counts every row once
    receive(services, make_mail())

    scraped: Samples = {}
    plans = sqlite_plans(
        services, lambda: scraped.update(collected(collector)), "inbound|outbox|tickets"
    )
    assert value(scraped, "maildesk_inbound_messages", state="done") == history
    assert value(scraped, "maildesk_inbound_messages", state="pending") == 3
    assert value(scraped, "maildesk_outbox_messages", state="sent") == 3 * history
    assert value(scraped, "maildesk_tickets", status="new") == 1
    assert not [(plan, statement) for plan, statement in plans if plan.startswith("SCAN")]


@pytest.mark.skipif(bool(PG_URL), reason="writes a row below the ids counted (SQLite)")
def test_a_row_counted_nowhere_is_found_by_the_hourly_full_count(
    services: Services, clock: ManualClock
) -> None:
    """A row that appears below the ids a process counted already (a database restored
    under a running daemon, a commit later than PostgreSQL's settling) is missed by the
    scrapes that count from there, until the full count an hour after the last."""
    with services.db.transaction() as session:
        session.execute(insert(Inbound), [inbound_values(10, "done", clock.now())])
    collector = DatabaseCollector(services.db, clock)
    collected(collector)
    with services.db.transaction() as session:  # below the ids counted, as a restore might
        session.execute(insert(Inbound), [inbound_values(5, "done", clock.now())])
    receive(services, make_mail())
    assert value(collected(collector), "maildesk_inbound_accepted_total", source="smtp") == 2
    clock.advance(RECOUNT)
    assert_counts(collector, services)
    assert value(collected(collector), "maildesk_inbound_accepted_total", source="smtp") == 3


@pytest.mark.skipif(not PG_URL, reason="PostgreSQL hands out ids before their commits")
def test_a_row_committed_after_a_higher_id_is_counted_on_postgresql(
    services: Services, clock: ManualClock
) -> None:
    """On PostgreSQL a scrape can see id k+1 while id k's transaction is still open. The
    scrapes count such a row once it commits, as long as that is within `SETTLE` of
    the scrape that saw the higher id (the floor rises only to ids seen that long ago)."""
    collector = DatabaseCollector(services.db, clock)
    with services.db.engine.connect() as late:
        with late.begin():
            row = {k: v for k, v in inbound_values(0, "done", clock.now()).items() if k != "id"}
            late.execute(insert(Inbound), [row])  # its id comes from the sequence
            receive(services, make_mail(message_id="<early@customer.test>"))
            assert_counts(collector, services)
            clock.advance(SETTLE / 2)
            assert_counts(collector, services)
        clock.advance(SETTLE)
        assert_counts(collector, services)
        assert value(collected(collector), "maildesk_inbound_accepted_total", source="smtp") == 2
        clock.advance(SETTLE * 2)
        assert value(collected(collector), "maildesk_inbound_accepted_total", source="smtp") == 2


@pytest.mark.skipif(not PG_URL, reason="holds a PostgreSQL table lock to hang the scrape")
def test_scrapes_of_a_hung_database_answer_in_time_and_share_one_read(
    config_values: dict[str, Any], tmp_path: Path, clock: ManualClock
) -> None:
    """Each scrape read the database in a thread of the loop's default executor,
    however long it took: with the database hung, every scrape (Prometheus's every
    15 s, or a stranger's flood of a public /metrics) held one more thread, until the
    portal's pages and the health checks had none left. Scrapes now share the read
    in flight, and each answers within `[health] database_timeout` with what this
    process counted itself and `maildesk_database_up 0`."""
    config_values["health"] = {"database_timeout": 1}
    settings = from_mapping(config_values, base_dir=tmp_path)
    with running_daemon(settings, clock) as running:
        url = web_url(running, "/metrics")
        assert value(scrape(url), "maildesk_database_up") == 1
        with inbound_table_locked(settings.database.url) as waiting:
            with ThreadPoolExecutor(20) as pool:
                answers = list(pool.map(lambda _: scrape(url), range(20)))
            assert {value(samples, "maildesk_database_up") for samples in answers} == {0}
            requests = "maildesk_http_requests_total"
            assert all(
                value(samples, requests, route="/metrics", method="GET", status="200") >= 1
                for samples in answers
            )
            assert waiting() == 1
        wait_for(lambda: value(scrape(url), "maildesk_database_up") == 1, what="the database")


def test_a_flood_of_new_tickets_shows_as_a_sender_filed_quietly(
    services: Services, clock: ManualClock
) -> None:
    """Ops alert on a flood (pipeline/quiet.py) from the scrape: the gauge counts the
    senders whose new tickets are filed quietly now, for the hour after it began."""
    collector = DatabaseCollector(services.db, clock)
    for n in range(10):
        receive(services, make_mail(subject=f"Alert {n}", sender="alerts@monitor.test"))
    assert value(collected(collector), "maildesk_senders_filed_quietly") == 0  # ten: no flood
    receive(services, make_mail(subject="Alert 10", sender="alerts@monitor.test"))
    assert value(collected(collector), "maildesk_senders_filed_quietly") == 1
    clock.advance(timedelta(minutes=61))
    assert value(collected(collector), "maildesk_senders_filed_quietly") == 0


def _get(url: str, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return err.code


def test_without_a_token_the_portals_listener_serves_metrics_to_no_client_ops_did_not_name(
    config_values: dict[str, Any], tmp_path: Path, clock: Any
) -> None:
    """A bare nginx `proxy_pass` sends no proxy header, and its peer is the machine's own
    address, which no config names as a proxy: /metrics answered it 200, and so the
    whole Internet (the outbox's counts rise by one for a known address's "send me a new
    link": who has an account here). Without a token it now answers no one by default."""
    config_values["metrics"] = {}
    with running_daemon(from_mapping(config_values, base_dir=tmp_path), clock) as running:
        url = web_url(running, "/metrics")
        status, body = fetch(url, "")
        assert status == 404 and "maildesk_" not in body
        # /healthz still answers, without its figures.
        assert fetch(web_url(running, "/healthz"), "")[0] == 200


def test_ops_scrape_without_a_token_where_they_said_so(
    config_values: dict[str, Any], tmp_path: Path, clock: Any
) -> None:
    """The documented setups keep working: a scraper named in `allow_without_token`
    reaching the listener directly, and a `[metrics] port` of its own without a token."""
    port = free_port()
    config_values["metrics"] = {"allow_without_token": ["127.0.0.0/8"]}
    with running_daemon(from_mapping(config_values, base_dir=tmp_path), clock) as running:
        url = web_url(running, "/metrics")
        assert value(scrape(url, ""), "maildesk_database_up") == 1
        assert _get(url, {"X-Forwarded-For": "203.0.113.9"}) == 404  # relayed: never
    config_values["metrics"] = {"port": port}
    with running_daemon(from_mapping(config_values, base_dir=tmp_path), clock) as running:
        wait_for(lambda: _listening("127.0.0.1", port), what="the metrics listener")
        assert value(scrape(f"http://127.0.0.1:{port}/metrics", ""), "maildesk_database_up") == 1


def test_a_wrong_allow_without_token_entry_stops_the_start(
    config_values: dict[str, Any], tmp_path: Path
) -> None:
    config_values["metrics"] = {"allow_without_token": ["prometheus.internal"]}
    with pytest.raises(ConfigError, match="allow_without_token"):
        from_mapping(config_values, base_dir=tmp_path)


@pytest.mark.parametrize("proxies", [[], ["127.0.0.1"]])
def test_without_a_token_the_portals_listener_serves_metrics_to_no_one_a_proxy_relays(
    config_values: dict[str, Any], tmp_path: Path, clock: Any, proxies: list[str]
) -> None:
    """The outbox's counts rise by one for a known address's "send me a new link": a
    proxy that passed /metrics on told strangers who has an account. Without a token, a
    scraper ops named that reaches the listener directly still gets it; a relayed request
    is 404."""
    config_values["metrics"] = {"allow_without_token": ["127.0.0.1"]}
    config_values["web"]["trusted_proxies"] = proxies
    with running_daemon(from_mapping(config_values, base_dir=tmp_path), clock) as running:
        url = web_url(running, "/metrics")
        relayed = [
            {"X-Forwarded-For": "203.0.113.9"},
            {"Forwarded": "for=203.0.113.9;proto=https"},
        ]
        for headers in relayed:
            assert _get(url, headers) == 404
        # Our own proxy's peer address is a relayed request even without the headers.
        assert _get(url, {}) == (404 if proxies else 200)
        if not proxies:
            assert value(scrape(url, ""), "maildesk_database_up") == 1
