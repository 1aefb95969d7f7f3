"""/metrics after real SMTP traffic, read with prometheus-client's own parser; the access log.

The traffic: three customer mails, one of them sent twice (an MTA retry), one
refused recipient, one message with bare LF, one message quarantined by the
guard (stored by `deliver`, as an MTA pipe would), and web requests.
"""

from __future__ import annotations

import logging
import smtplib
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from maildesk.config import from_mapping
from maildesk.inbound.store import Envelope
from tests.conftest import (
    Outbox,
    RunningDaemon,
    _listening,
    free_port,
    make_mail,
    running_daemon,
    wait_for,
)
from tests.helpers import tickets
from tests.inbound.test_smtp_limits import connect

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def fetch(url: str, token: str = "") -> tuple[int, str]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def scrape(url: str, token: str = "") -> Samples:
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


def test_metrics_after_real_traffic(daemon: RunningDaemon, outbox: Outbox) -> None:
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
        samples = scrape(url, "s3cret-scrape")
        assert value(samples, "maildesk_database_up") == 1
        assert fetch(f"http://127.0.0.1:{port}/healthz")[0] == 200
        # Not on the public listener.
        assert fetch(web_url(running, "/metrics"))[0] == 404


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
