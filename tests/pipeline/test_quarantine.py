"""Bad input loses nothing: it is held in quarantine, byte for byte, with a reason.

A held message never blocks the mail behind it, and `maildesk quarantine retry`
sends it through the pipeline again (after a fix or a config change).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from maildesk.cli import main
from maildesk.config import Settings
from maildesk.inbound.store import Envelope
from maildesk.services import Services, build
from tests.conftest import eml, make_mail
from tests.helpers import inbound_row, outbox_rows, receive, ticket, tickets

SUPPORT = "support@example.test"


def received(hops: int = 2500) -> bytes:
    """The Received fields of two misconfigured relays that bounced a message between
    them until the headers grew huge."""
    return b"".join(
        b"Received: from relay%d.customer.test (relay%d.customer.test [198.51.100.%d])\n"
        b"\tby relay%d.customer.test (Postfix) with ESMTP id 4dK9%06dQ\n"
        b"\tfor <support@example.test>; Mon,  5 Jan 2026 10:00:00 +0100 (CET)\n"
        % (hop % 2, hop % 2, hop % 2 + 10, 1 - hop % 2, hop)
        for hop in range(hops)
    )


def mail_loop(hops: int = 2500) -> bytes:
    """A message two misconfigured relays bounced between until the headers grew huge."""
    return received(hops) + make_mail(subject="Invoice question").replace(b"\r\n", b"\n")


def deep_mime(depth: int = 3000) -> bytes:
    """multipart/mixed inside multipart/mixed ... `depth` levels down (a parser-crash probe)."""
    top = (
        b"From: Mallory <mallory@evil.test>\n"
        b"To: support@example.test\n"
        b"Subject: nested\n"
        b"Message-ID: <deep@evil.test>\n"
        b"MIME-Version: 1.0\n"
    )
    opening = b"".join(
        b'Content-Type: multipart/mixed; boundary="b%d"\n\n--b%d\n' % (i, i) for i in range(depth)
    )
    closing = b"".join(b"--b%d--\n" % i for i in reversed(range(depth)))
    return top + opening + b"Content-Type: text/plain\n\nhello\n" + closing


BAD: dict[str, tuple[Callable[[], bytes], tuple[str, ...]]] = {
    "smtp-smuggling-bare-lf": (
        lambda: eml("smtp-smuggling-bare-lf.eml"),
        ("mixed line endings", "bare LF"),
    ),
    "header-block-over-cap": (mail_loop, ("header block", "bytes", "limit 262144")),
    "mime-nesting-3000-deep": (deep_mime, ("MIME nesting depth", "limit 20")),
    "unparseable-from": (
        lambda: eml("unparseable-from-no-address.eml"),
        ("From", "not a valid address"),
    ),
    "ambiguous-from-cve-2023-27043": (
        lambda: eml("ambiguous-from-cve-2023-27043.eml"),
        ("ambiguous From",),
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_message_is_held_with_a_reason_and_the_next_one_is_processed(
    services: Services, case: str
) -> None:
    make, words = BAD[case]
    raw = make()
    # Both are stored before the pipeline runs: one batch, the bad one first.
    bad_id = services.store.put(raw, Envelope("smtp", "mallory@evil.test", (SUPPORT,)))
    good_id = receive(services, make_mail(subject="Printer broken"))

    bad = inbound_row(services, bad_id)
    assert bad.state == "quarantined"
    for word in words:
        assert word in bad.reason
    assert services.store.load(bad_id).raw == raw  # byte-identical, to inspect or retry
    assert bad.size == len(raw)
    good = inbound_row(services, good_id)
    assert good.state == "done"
    [only] = tickets(services)
    assert (only["subject"], only["requester"]) == ("Printer broken", "alice@customer.test")
    acks = [row.recipients for row in outbox_rows(services) if row.kind == "acknowledgement"]
    assert acks == [["alice@customer.test"]]


def test_ambiguous_from_cannot_write_into_the_ticket_of_the_address_it_names(
    services: Services,
) -> None:
    """CVE-2023-27043: `alice@customer.test)<mallory@evil.test>` must not pass for Alice."""
    receive(services, make_mail(message_id="<first@customer.test>"))

    spool_id = receive(services, eml("ambiguous-from-cve-2023-27043.eml"))

    assert inbound_row(services, spool_id).state == "quarantined"
    assert len(tickets(services)) == 1
    senders = [m["from"] for m in ticket(services, 1)["messages"] if m["direction"] == "in"]
    assert senders == ["alice@customer.test"]


def test_retry_of_a_message_that_still_fails_goes_back_to_quarantine(services: Services) -> None:
    raw = eml("smtp-smuggling-bare-lf.eml")
    spool_id = receive(services, raw)
    reason = inbound_row(services, spool_id).reason

    assert services.store.requeue(spool_id)
    row = inbound_row(services, spool_id)
    assert (row.state, row.attempts, row.reason) == ("pending", 0, "")

    services.drain_inbound()

    row = inbound_row(services, spool_id)
    assert (row.state, row.reason) == ("quarantined", reason)
    assert services.store.load(spool_id).raw == raw
    assert tickets(services) == []


def test_retry_after_a_config_change_processes_the_held_message(
    services: Services, settings: Settings
) -> None:
    raw = mail_loop()
    spool_id = receive(services, raw)
    assert inbound_row(services, spool_id).state == "quarantined"

    limits = dataclasses.replace(settings.limits, max_header_bytes=1024 * 1024)
    raised = build(dataclasses.replace(settings, limits=limits), services.clock)
    try:
        assert raised.store.requeue(spool_id)
        raised.drain_inbound()
    finally:
        raised.db.dispose()

    assert inbound_row(services, spool_id).state == "done"
    [only] = tickets(services)
    assert only["subject"] == "Invoice question"


def test_only_quarantined_messages_can_be_retried(services: Services) -> None:
    spool_id = receive(services, make_mail())

    assert not services.store.requeue(spool_id)  # done: retrying would duplicate nothing
    assert not services.store.requeue(spool_id + 1000)  # no such message
    assert inbound_row(services, spool_id).state == "done"


# -- the command line --------------------------------------------------------------------------


@pytest.fixture
def cli_config(tmp_path: Path, settings: Settings) -> Path:
    """A config for the `maildesk` command, on the same database as `services`."""
    path = tmp_path / "cli.toml"
    path.write_text(
        "[support]\n"
        'address = "support@example.test"\n'
        "[database]\n"
        f"url = {json.dumps(settings.database.url)}\n"
        "[web]\n"
        'secret_key = "test-secret-key"\n'
        "[outbound]\n"
        f"url = {json.dumps(settings.outbound.url)}\n"
    )
    return path


def test_an_envelope_sender_writes_nothing_but_text_into_the_list(
    services: Services, cli_config: Path
) -> None:
    """The envelope sender is a stranger's: `deliver -f` stores it as given, and the
    table printed its control characters raw (a terminal title, then a forged row)."""
    hostile = "x@y.test\x1b]0;pwned\x07\r\n42  2026-01-01  smtp  ceo@example.test  forged"
    receive(services, eml("unparseable-from-no-address.eml"), mail_from=hostile)

    listed = CliRunner().invoke(main, ["--config", str(cli_config), "quarantine", "list"])

    assert listed.exit_code == 0, listed.output
    assert "\x1b" not in listed.stdout and "\x07" not in listed.stdout
    assert len(listed.stdout.splitlines()) == 2  # the head, and one row


def test_cli_lists_held_messages_and_retries_one(services: Services, cli_config: Path) -> None:
    smuggled = receive(services, eml("smtp-smuggling-bare-lf.eml"), mail_from="mallory@evil.test")
    receive(services, make_mail())  # processed normally: not listed
    unparseable = receive(services, eml("unparseable-from-no-address.eml"))
    runner = CliRunner()

    listed = runner.invoke(main, ["--config", str(cli_config), "quarantine", "list", "--json"])

    assert listed.exit_code == 0, listed.output
    held = json.loads(listed.stdout)
    assert [(h["id"], h["mail_from"]) for h in held] == [
        (smuggled, "mallory@evil.test"),
        (unparseable, "alice@customer.test"),
    ]
    assert "mixed line endings" in held[0]["reason"]
    assert "not a valid address" in held[1]["reason"]
    assert held[0]["size"] == len(eml("smtp-smuggling-bare-lf.eml"))

    retried = runner.invoke(
        main, ["--config", str(cli_config), "quarantine", "retry", str(unparseable)]
    )

    assert retried.exit_code == 0, retried.output
    assert f"message {unparseable} queued" in retried.stderr
    assert inbound_row(services, unparseable).state == "pending"
    listed = runner.invoke(main, ["--config", str(cli_config), "quarantine", "list", "--json"])
    assert [h["id"] for h in json.loads(listed.stdout)] == [smuggled]


def test_cli_retry_of_an_unknown_id_is_a_clear_error(services: Services, cli_config: Path) -> None:
    done = receive(services, make_mail())
    runner = CliRunner()

    for bad_id in (999, done):
        result = runner.invoke(
            main, ["--config", str(cli_config), "quarantine", "retry", str(bad_id)]
        )
        assert result.exit_code != 0
        assert f"no quarantined message {bad_id}" in result.stderr
    assert inbound_row(services, done).state == "done"


def retry_with_raised_header_cap(
    spool_id: int, settings: Settings, services: Services, cli_config: Path
) -> None:
    """Ops retry the message (`quarantine retry`) and raise `[limits] max_header_bytes`
    to 1 MB; the desk then processes it."""
    retried = CliRunner().invoke(
        main, ["--config", str(cli_config), "quarantine", "retry", str(spool_id)]
    )
    assert retried.exit_code == 0, retried.output
    limits = dataclasses.replace(settings.limits, max_header_bytes=1024 * 1024)
    raised = build(dataclasses.replace(settings, limits=limits), services.clock)
    try:
        raised.drain_inbound()
    finally:
        raised.db.dispose()


def test_a_message_held_again_after_a_retry_still_shows_why_it_was_held_first(
    services: Services, settings: Settings, cli_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ops raise the header cap a mail loop was held for and retry it; it is held again,
    now for its MIME nesting. The retry used to clear the first reason: the list showed
    only the second, and nothing told why the message had been held to begin with."""
    spool_id = receive(services, received() + deep_mime(30))
    first = inbound_row(services, spool_id).reason
    assert "header block" in first
    monkeypatch.setenv("USER", "anna")
    retry_with_raised_header_cap(spool_id, settings, services, cli_config)
    runner = CliRunner()
    config = ["--config", str(cli_config)]

    listed = runner.invoke(main, [*config, "quarantine", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    [held] = json.loads(listed.stdout)
    assert held["id"] == spool_id
    assert "MIME nesting depth" in held["reason"]
    [before] = held["earlier"]
    assert (before["reason"], before["retried_by"]) == (first, "anna")
    assert before["quarantined_at"] and before["retried_at"]

    table = runner.invoke(main, [*config, "quarantine", "list"])
    head, row = table.stdout.splitlines()
    assert head.split()[5] == "retried"
    assert row.split()[5] == "1"

    shown = runner.invoke(main, [*config, "quarantine", "show", str(spool_id)])
    assert shown.exit_code == 0, shown.output
    text = shown.stdout
    assert text.startswith(f"message {spool_id}: quarantined\n")
    # In their order: the first reason, the retry, the reason it is held for now.
    assert text.index(first) < text.index("retried ") < text.index("MIME nesting depth")
    assert "by anna" in text

    as_json = runner.invoke(main, [*config, "quarantine", "show", str(spool_id), "--json"])
    detail = json.loads(as_json.stdout)
    assert [b["reason"] for b in detail["earlier"]] == [first]
    assert "MIME nesting depth" in detail["reason"]


def test_a_retried_message_that_went_through_shows_why_it_had_been_held(
    services: Services, settings: Settings, cli_config: Path
) -> None:
    spool_id = receive(services, mail_loop())
    first = inbound_row(services, spool_id).reason
    retry_with_raised_header_cap(spool_id, settings, services, cli_config)
    runner = CliRunner()
    config = ["--config", str(cli_config)]

    listed = runner.invoke(main, [*config, "quarantine", "list", "--json"])
    assert json.loads(listed.stdout) == []
    shown = runner.invoke(main, [*config, "quarantine", "show", str(spool_id), "--json"])
    assert shown.exit_code == 0, shown.output
    detail = json.loads(shown.stdout)
    assert (detail["state"], detail["reason"]) == ("done", "")
    assert [b["reason"] for b in detail["earlier"]] == [first]


def test_show_of_a_message_never_held_is_a_clear_error(
    services: Services, cli_config: Path
) -> None:
    done = receive(services, make_mail())
    result = CliRunner().invoke(
        main, ["--config", str(cli_config), "quarantine", "show", str(done)]
    )
    assert result.exit_code != 0
    assert f"no quarantined message {done}" in result.stderr
