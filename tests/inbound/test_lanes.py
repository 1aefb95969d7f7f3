"""Fair turns (inbound/lanes.py): under a flood, one sender's pile of mail does not hold
up everyone else's, and each sender's own mail stays in the order it arrived.

Mail is stored through `InboundStore.put`, the call every door makes (on SQLite into
the landing, moved into the spool by the next claim; on PostgreSQL straight into the
spool), and processed by the real processor. Tickets are numbered as they open, so
their numbers show the order the desk took the mail in.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from click.testing import CliRunner
from sqlalchemy import select, text

from maildesk import config
from maildesk.cli import main
from maildesk.clock import ManualClock
from maildesk.db import Database
from maildesk.inbound import importer
from maildesk.inbound.imap import ImapPoller
from maildesk.inbound.lanes import IMPORTS, lane_of
from maildesk.inbound.store import Envelope
from maildesk.models import Inbound, Ticket
from maildesk.schema import alembic_config
from maildesk.services import Services, build
from tests.conftest import PG_URL, make_mail
from tests.dovecot import Dovecot
from tests.helpers import history_with_waiting_rows, sqlite_plans


def put(services: Services, sender: str, subject: str, **headers: str) -> int:
    raw = make_mail(subject=subject, sender=sender, **headers)
    return services.store.put(raw, Envelope("smtp", mail_from=sender))


def opened(services: Services) -> list[str]:
    """The subjects of the tickets, in the order they were opened."""
    with services.db.transaction() as session:
        return list(session.scalars(select(Ticket.subject).order_by(Ticket.id)))


def test_a_flood_from_one_sender_does_not_hold_up_anyone_elses_mail(services: Services) -> None:
    # A customer's mail loop: 40 messages before the next customer writes.
    for n in range(40):
        put(services, "loop@customer.test", f"loop {n}")
    put(services, "bob@other.test", "Invoice question")

    services.drain_inbound()

    order = opened(services)
    # Bob waited for one of the loop's messages, not for forty.
    assert order.index("Invoice question") == 1
    # The loop's own mail was taken in the order it came.
    assert [s for s in order if s.startswith("loop")] == [f"loop {n}" for n in range(40)]


def test_busy_senders_share_the_workers_turn_by_turn(services: Services) -> None:
    for n in range(6):
        put(services, "first@customer.test", f"first {n}")
    for n in range(6):
        put(services, "second@customer.test", f"second {n}")

    services.drain_inbound()

    assert opened(services) == [s for n in range(6) for s in (f"first {n}", f"second {n}")]


def test_a_newcomer_joins_the_turn_being_served_not_the_front_of_the_queue(
    services: Services,
) -> None:
    """A lane with nothing waiting starts at the turn being served: it waits for at most
    one message of each busy lane, and a busy lane is not pushed back by every newcomer."""
    for n in range(10):
        put(services, "loop@customer.test", f"loop {n}")
    assert services.processor.process_pending(batch=5).processed == 5

    put(services, "carol@other.test", "Login fails")
    services.drain_inbound()

    order = opened(services)
    assert order[4:7] == ["loop 4", "loop 5", "Login fails"]
    assert [s for s in order if s.startswith("loop")] == [f"loop {n}" for n in range(10)]


def test_a_bounce_storm_is_one_lane(services: Services) -> None:
    """Bounces come with the null sender, from many servers: they wait in one lane."""
    bounces = [
        services.store.put(
            make_mail(
                subject=f"Undelivered Mail Returned to Sender {n}", sender="MAILER-DAEMON@mx.test"
            ),
            Envelope("smtp", mail_from="<>"),  # as the SMTP door stores MAIL FROM:<>
        )
        for n in range(8)
    ]
    customer = put(services, "dana@customer.test", "Where is my order?")

    claimed = [row.id for row in services.store.claim(3).rows]

    assert claimed == [bounces[0], customer, bounces[1]]


def test_an_import_keeps_its_threads_and_lets_live_mail_through(services: Services) -> None:
    """Every import shares one lane: the archive keeps its order (a reply after what it
    answers), and live mail does not wait for the whole archive."""
    archive = [
        make_mail(
            subject=f"archived {n}", sender=f"c{n}@customer.test", message_id=f"<a{n}@c.test>"
        )
        for n in range(12)
    ]
    archive.append(
        make_mail(
            subject="Re: archived 0",
            sender="c0@customer.test",
            message_id="<a0-reply@c.test>",
            In_Reply_To="<a0@c.test>",
            References="<a0@c.test>",
        )
    )
    assert importer.store_batch(services.store, archive, notify=False) == 13
    put(services, "erin@customer.test", "Urgent: site down")

    services.drain_inbound()

    order = opened(services)
    assert order.index("Urgent: site down") == 1
    assert [s for s in order if s.startswith("archived")] == [f"archived {n}" for n in range(12)]
    with services.db.transaction() as session:
        lanes = set(session.scalars(select(Inbound.lane).where(Inbound.source == "import")))
    assert lanes == {IMPORTS}
    # The reply joined its parent's ticket: one ticket for the two.
    assert "Re: archived 0" not in order


def test_a_sender_is_one_lane_however_its_address_is_written(services: Services) -> None:
    put(services, "Loop@Customer.test", "loop 0")
    put(services, "loop@customer.TEST", "loop 1")
    put(services, "bob@other.test", "Invoice question")

    services.drain_inbound()

    assert opened(services) == ["loop 0", "Invoice question", "loop 1"]


def test_mail_stored_before_the_upgrade_goes_first_in_its_order(
    settings: config.Settings, clock: ManualClock
) -> None:
    """Rows waiting at the upgrade (migration 0016) hold turn 0: taken first, by id."""
    db = Database(settings.database.url)
    migrations = alembic_config(db)
    with db.engine.begin() as connection:
        migrations.attributes["connection"] = connection
        command.upgrade(migrations, "0015")
        for n in range(3):
            raw = make_mail(subject=f"old {n}", sender="old@customer.test")
            spool_id = connection.execute(
                text(
                    "INSERT INTO inbound (received_at, source, mail_from, peer, rcpt_to, size, "
                    "digest, notify, state, attempts, reason, error) VALUES (:now, 'smtp', "
                    "'old@customer.test', '', '[]', :size, :digest, true, 'pending', 0, '', '') "
                    "RETURNING id"
                ),
                {"now": clock.now(), "size": len(raw), "digest": f"{n:064x}"},
            ).scalar_one()
            connection.execute(
                text("INSERT INTO inbound_raw (inbound_id, raw) VALUES (:id, :raw)"),
                {"id": spool_id, "raw": raw},
            )
    db.dispose()

    services = build(settings, clock)
    services.prepare()  # `maildesk init` after installing the new version
    try:
        put(services, "new@customer.test", "new 0")
        services.drain_inbound()
        assert opened(services) == ["old 0", "old 1", "old 2", "new 0"]
    finally:
        services.db.dispose()


@pytest.mark.skipif(bool(PG_URL), reason="reads SQLite's query plans")
def test_turns_are_given_and_claimed_by_index_on_a_long_history(
    services: Services, clock: ManualClock
) -> None:
    """The turn of a message is two index lookups per sender; a claim reads the state
    index in (turn, id) order: neither walks the history nor sorts what waits."""
    history_with_waiting_rows(services, clock.now())
    found: dict[str, Any] = {}

    def store_and_claim() -> None:
        put(services, "loop@customer.test", "loop 0")
        put(services, "loop@customer.test", "loop 1")
        found["claimed"] = services.store.claim(16).rows

    plans = sqlite_plans(services, store_and_claim, "inbound")
    assert len(found["claimed"]) == 5
    assert not [(plan, statement) for plan, statement in plans if plan.startswith("SCAN")]
    assert not [(plan, statement) for plan, statement in plans if "TEMP B-TREE" in plan]


def test_status_names_the_busiest_senders_waiting(services: Services, config_file: Path) -> None:
    """Ops under a flood want to know who it comes from (to block them at the MTA).
    Envelope senders are a stranger's to write: no control character reaches the
    terminal."""
    for n in range(5):
        put(services, "loop@customer.test", f"loop {n}")
    hostile = "evil\x1b[2J\x1b[31m@x.test"
    for n in range(3):
        services.store.put(make_mail(subject=f"e {n}"), Envelope("smtp", mail_from=hostile))
    services.store.claim(0)  # some waits in the spool, some still where it landed
    services.store.put(make_mail(subject="bounce"), Envelope("smtp", mail_from="<>"))
    services.store.put(make_mail(subject="bounce 2"), Envelope("smtp", mail_from="<>"))
    put(services, "bob@other.test", "Invoice question")

    result = CliRunner().invoke(main, ["--config", str(config_file), "status"])

    # Degraded (exit 1): the test clock's mail looks months old to the real one.
    assert result.exit_code in (0, 1), result.output
    lines = result.stdout.splitlines()
    assert "busiest senders waiting: loop@customer.test 5, evil [2j [31m@x.test 3, <> 2" in lines
    assert "\x1b" not in result.stdout
    as_json = CliRunner().invoke(main, ["--config", str(config_file), "status", "--json"])
    assert json.loads(as_json.stdout)["busiest_senders"][0] == {
        "sender": "loop@customer.test",
        "waiting": 5,
    }


def test_mail_polled_from_a_mailbox_takes_the_lane_of_its_return_path(
    services: Services,
) -> None:
    """IMAP mail comes with no envelope of ours: the Return-Path its mailbox's delivery
    agent wrote at the top names the sender (a real Dovecot, the poller as serve runs
    it). A Return-Path in the body or below the header block names nobody."""

    def delivered(return_path: str, subject: str, sender: str) -> bytes:
        mail = make_mail(subject=subject, sender=sender, body="Return-Path: <bob@other.test>")
        return f"Return-Path: <{return_path}>\r\n".encode() + mail

    with Dovecot() as dovecot:
        for n in range(4):
            dovecot.append(
                "INBOX", delivered("Loop@Customer.test", f"loop {n}", "loop@customer.test")
            )
        dovecot.append("INBOX", delivered("bob@other.test", "Invoice question", "bob@other.test"))
        poller = ImapPoller(
            dovecot.settings(), lambda raw: services.store.put(raw, Envelope(source="imap"))
        )
        try:
            assert poller.poll_once() == 5
        finally:
            poller.close()

    services.drain_inbound()

    assert opened(services)[:3] == ["loop 0", "Invoice question", "loop 1"]
    with services.db.transaction() as session:
        lanes = set(session.scalars(select(Inbound.lane)))
    assert lanes == {"loop@customer.test", "bob@other.test"}


def test_a_return_path_is_read_only_at_the_top_of_the_header_block() -> None:
    body_only = make_mail(subject="x", body="Return-Path: <bob@other.test>")
    assert lane_of("imap", "", body_only) == ""
    assert lane_of("imap", "", b"Return-Path: <>\r\n" + body_only) == "<>"
    # From the SMTP door the envelope decides, whatever the message says.
    assert lane_of("smtp", "alice@customer.test", b"Return-Path: <x@y.test>\r\n") == (
        "alice@customer.test"
    )
