"""Retention (`[retention]`, `maildesk purge`): what is old enough goes, what threading needs stays.

On a ManualClock: raw bytes of processed mail and bodies of sent mail go after
their days, younger ones stay, quarantined mail never goes; a reply to a
60-day-old acknowledgement still joins its ticket and a bounce of it is still
filed; two instances purging at once remove each row once.
"""

from __future__ import annotations

import json
import re
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from prometheus_client import generate_latest
from sqlalchemy import func, select

from maildesk import config, jobs, retention
from maildesk.cli import main
from maildesk.clock import ManualClock
from maildesk.config import Settings
from maildesk.db import Database
from maildesk.metrics import Metrics
from maildesk.models import (
    Agent,
    Confirmation,
    ConsoleRequest,
    InboundRaw,
    Outbox,
    OutboxRaw,
    Person,
    SpamHold,
    WebSession,
)
from maildesk.services import Services
from tests.conftest import eml, make_mail
from tests.helpers import inbound_row, outbox_rows, receive, ticket, tickets

AGENT = "agent@example.test"
DAY = timedelta(days=1)


@pytest.fixture
def config_values(config_values: dict[str, Any]) -> dict[str, Any]:
    config_values["agents"]["addresses"] = [AGENT]
    # The MTA's X-Spam-Flag is believed: spam can be held without a spamd here.
    config_values["spam"] = {"trust_mta_headers": True}
    return config_values


def send_outbox(services: Services) -> None:
    sender = services.sender()
    try:
        sender.send_due()
    finally:
        sender.transport.close()


def has_raw(services: Services, spool_id: int) -> bool:
    with services.db.reading() as session:
        return session.get(InboundRaw, spool_id) is not None


def bodies(services: Services) -> dict[str, int]:
    """Message-ID -> length of the stored body of each outbox row."""
    with services.db.reading() as session:
        rows = session.execute(
            select(Outbox.message_id, func.length(OutboxRaw.raw)).outerjoin(OutboxRaw)
        ).all()
    return {mid: int(size or 0) for mid, size in rows}


def ack_of(services: Services, number: int) -> Outbox:
    [ack] = [
        r for r in outbox_rows(services) if r.kind == "acknowledgement" and r.ticket_id == number
    ]
    return ack


def purge(services: Services, dry_run: bool = False) -> dict[str, int]:
    return retention.purge(services.db, services.settings, services.clock.now(), dry_run).counts


def test_old_mail_bytes_and_bodies_go_young_and_quarantined_stay(
    services: Services, clock: ManualClock
) -> None:
    old = receive(services, make_mail(subject="Old printer"))
    forged = eml("bounce-postfix-dsn.eml").replace(b"{ORIGINAL_ID}", b"1.forged@example.test")
    quarantined = receive(services, forged, mail_from="<>")
    assert inbound_row(services, quarantined).state == "quarantined"
    send_outbox(services)
    old_ack = ack_of(services, 1).message_id
    clock.advance(20 * DAY)
    young = receive(services, make_mail(subject="Young scanner", sender="bob@customer.test"))
    send_outbox(services)
    young_ack = ack_of(services, 2).message_id
    clock.advance(11 * DAY)  # the first mail is 31 days old, the second 11

    would = purge(services, dry_run=True)
    assert has_raw(services, old) and bodies(services)[old_ack] > 0  # a dry run changes nothing
    done = purge(services)

    assert done == would
    assert done["inbound_raw"] == 1
    assert not has_raw(services, old)
    assert has_raw(services, young)
    assert services.store.load(quarantined).raw == forged  # ops decide, never the purge
    assert inbound_row(services, old).state == "done"  # the audit line stays
    sizes = bodies(services)
    assert sizes[old_ack] == 0 and sizes[young_ack] > 0
    old_rows = [r for r in outbox_rows(services) if r.ticket_id == 1]
    assert done["outbox_bodies"] == len(old_rows) >= 2  # the ack and the agent's notice
    # The tickets keep what people read.
    assert ticket(services, 1)["messages"][0]["body_text"].startswith("The printer on floor 2")
    assert purge(services) == dict.fromkeys(retention.KINDS, 0)  # nothing twice


def test_a_reply_to_a_60_day_old_acknowledgement_still_joins_its_ticket(
    services: Services, clock: ManualClock
) -> None:
    receive(services, make_mail(message_id="<first@customer.test>"))
    send_outbox(services)
    ack = ack_of(services, 1)
    clock.advance(60 * DAY)
    assert purge(services)["outbox_bodies"] >= 1
    assert bodies(services)[ack.message_id] == 0

    # A reply quoting only our acknowledgement's Message-ID (no tag in the subject).
    reply = make_mail(
        subject="Still broken",
        body="It still prints blank pages.",
        In_Reply_To=f"<{ack.message_id}>",
    )
    receive(services, reply)

    assert len(tickets(services)) == 1
    assert ticket(services, 1)["messages"][-1]["body_text"].startswith("It still prints")


def test_a_bounce_of_a_purged_acknowledgement_is_still_filed(
    services: Services, clock: ManualClock
) -> None:
    receive(services, make_mail(message_id="<first@customer.test>"))
    send_outbox(services)
    ack = ack_of(services, 1)
    clock.advance(40 * DAY)
    purge(services)
    bounce = eml("bounce-postfix-dsn.eml").replace(b"{ORIGINAL_ID}", ack.message_id.encode())

    spool_id = receive(services, bounce, mail_from="<>")

    assert inbound_row(services, spool_id).state == "done"
    assert [m["kind"] for m in ticket(services, 1)["messages"] if m["direction"] == "in"] == [
        "customer",
        "bounce",
    ]
    assert ack_of(services, 1).state == "bounced"


def test_held_spam_goes_after_its_days_unless_released(
    services: Services, clock: ManualClock
) -> None:
    def spam(sender: str) -> int:
        flagged = make_mail(sender=sender, X_Spam_Flag="YES", X_Spam_Status="Yes, score=12.0")
        return receive(services, flagged, mail_from=sender)

    old = spam("mallory@spam.test")
    clock.advance(25 * DAY)
    young = spam("trudy@spam.test")
    assert inbound_row(services, young).state == "held"
    clock.advance(6 * DAY)

    assert purge(services)["held_spam"] == 1

    assert inbound_row(services, old).state == "expired"  # the audit line stays
    assert not has_raw(services, old)
    with services.db.reading() as session:
        assert session.get(SpamHold, old) is None  # so `spam list` no longer shows it
    assert inbound_row(services, young).state == "held"
    assert services.store.load(young).raw.startswith(b"From: trudy@spam.test")


def test_console_requests_sessions_and_confirmations_go_when_spent(
    services: Services, clock: ManualClock
) -> None:
    receive(services, make_mail())
    now = clock.now()
    with services.db.transaction() as session:
        agent = session.scalars(select(Agent.id)).one()
        person = session.scalars(select(Person.id)).one()
        for n, age in enumerate((8, 8, 0)):  # days; the newest is also the highest id
            at = now - age * DAY
            session.add(ConsoleRequest(agent_id=agent, message_id=f"c{n}@x", at=at, proof=""))
            session.add(
                WebSession(id_hash=f"{n:064d}", person_id=person, created_at=at, last_seen_at=at)
            )

        def confirmation(created: timedelta, used: bool) -> None:
            at = now - created
            session.add(
                Confirmation(
                    agent_id=agent,
                    ticket_id=1,
                    commands="#close",
                    created_at=at,
                    expires_at=at + DAY,
                    used_at=at if used else None,
                    used_via="web" if used else "",
                )
            )
            session.flush()

        confirmation(10 * DAY, used=True)
        confirmation(10 * DAY, used=False)  # expired unused
        confirmation(2 * DAY, used=True)  # used, kept a week to answer "used"
        confirmation(40 * DAY, used=False)  # old, but the highest id: never deleted

    counts = purge(services)

    assert (counts["console_requests"], counts["confirmations"]) == (2, 2)
    with services.db.reading() as session:
        assert session.scalars(select(Confirmation.id).order_by(Confirmation.id)).all() == [3, 4]
    assert counts["web_sessions"] == 0  # a login lasts [web] session_days (30)
    clock.advance(23 * DAY)
    assert purge(services)["web_sessions"] == 2
    with services.db.reading() as session:
        assert session.scalars(select(ConsoleRequest.message_id)).all() == ["c2@x"]
        kept = session.scalars(select(Confirmation.id).order_by(Confirmation.id)).all()
        assert kept == [4]  # the used one went once it was a week old
        assert len(session.scalars(select(WebSession.id_hash)).all()) == 1


def test_two_instances_purging_at_once_remove_each_row_once(
    services: Services, settings: Settings, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(12):
        receive(services, make_mail(sender=f"c{n}@customer.test"))
    send_outbox(services)
    clock.advance(31 * DAY)
    receive(services, make_mail(subject="Young"))  # stays, and keeps the ids from reuse
    expected = purge(services, dry_run=True)
    assert expected["inbound_raw"] == 12

    small = retention_settings(settings, batch=3)
    # Batches of 3 rows, cut to one mail by bytes (each is over 300): many turns each.
    monkeypatch.setattr(retention, "BATCH_BYTES", 300)
    start = threading.Barrier(2)
    results: list[dict[str, int]] = []
    errors: list[BaseException] = []

    def instance() -> None:
        db = Database(settings.database.url)  # each instance has its own engine
        try:
            start.wait()
            results.append(retention.purge(db, small, clock.now()).counts)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            db.dispose()

    threads = [threading.Thread(target=instance) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert errors == []
    for kind in retention.KINDS:
        assert sum(r[kind] for r in results) == expected[kind], kind
    assert purge(services) == dict.fromkeys(retention.KINDS, 0)


def test_a_purge_asked_to_stop_returns_between_batches_and_the_next_run_goes_on(
    services: Services, settings: Settings, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first purge of a large desk can take minutes; serve stopping must not wait
    # for all of it (schedule.py asks it to stop, it ends after the batch under way).
    spooled = [receive(services, make_mail(sender=f"c{n}@customer.test")) for n in range(6)]
    send_outbox(services)
    clock.advance(31 * DAY)
    monkeypatch.setattr(retention, "BATCH_BYTES", 300)  # one mail per batch

    def left() -> int:
        return sum(has_raw(services, spool_id) for spool_id in spooled)

    stopped = jobs.purge(services, stopping=lambda: left() <= 4)

    assert stopped == 2 and left() == 4  # two batches, then it stopped
    assert all(size > 0 for size in bodies(services).values())  # the next kinds not begun
    with services.db.reading() as session:
        assert retention.last_finished(session) is None  # /metrics: not a finished purge
    assert jobs.purge(services) > 4
    assert left() == 0 and not any(bodies(services).values())
    with services.db.reading() as session:
        assert retention.last_finished(session) == clock.now()


def test_the_daemon_job_runs_on_one_instance_and_the_cli_prints_counts(
    services: Services, clock: ManualClock, config_file: Path, tmp_path: Path
) -> None:
    receive(services, make_mail())
    send_outbox(services)
    clock.advance(31 * DAY)
    jobs.one_instance("purge", jobs.purge)(services)
    assert bodies(services)[ack_of(services, 1).message_id] == 0
    # /metrics tells how long ago a purge last finished: a failing purge shows.
    clock.advance(timedelta(hours=3))
    scraped = generate_latest(Metrics(services.db, clock).registry).decode()
    assert "maildesk_retention_last_purge_seconds 10800.0" in scraped.splitlines()

    runner = CliRunner()
    shown = runner.invoke(main, ["--config", str(config_file), "purge", "--dry-run", "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["inbound_raw"] == 0  # the job did it already
    text = runner.invoke(main, ["--config", str(config_file), "purge"])
    assert text.exit_code == 0, text.output
    assert "inbound_raw" in text.stdout and "removed 0" in text.stdout


def retention_settings(settings: Settings, **values: Any) -> Settings:
    import dataclasses

    return dataclasses.replace(
        settings, retention=dataclasses.replace(settings.retention, **values)
    )


def test_the_shipped_config_purges_and_a_bad_value_is_refused_naming_the_key(
    config_values: dict[str, Any], tmp_path: Path
) -> None:
    shipped = config.load(Path(__file__).parent.parent / "config" / "maildesk.toml")
    assert shipped.retention == config.RetentionSettings()
    for values, error in (
        ({"inbound_raw_days": 0}, "[retention] inbound_raw_days must be at least 1"),
        ({"spam_days": "30"}, "[retention] spam_days must be an integer"),
        ({"batch": 0}, "[retention] batch must be between 1 and 10000"),
        ({"keep_forever": True}, "unknown key [retention] keep_forever"),
    ):
        with pytest.raises(config.ConfigError, match=re.escape(error)):
            config.from_mapping({**config_values, "retention": values}, tmp_path)
