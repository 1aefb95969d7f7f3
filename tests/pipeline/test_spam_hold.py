"""Spam is held, never answered (issue 7, item 14), with a real spamd over real SMTP.

Held mail is stored with its score and rules, gets no acknowledgement, reaches
no agent and opens no ticket, until `maildesk spam release` lets it through as
ham. A spamd that is down or silent never holds mail. A global cap bounds the
automatic replies of an hour, whoever the senders are.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from maildesk import config
from maildesk.cli import main
from maildesk.clock import ManualClock
from maildesk.inbound.store import Envelope
from maildesk.models import Inbound
from maildesk.pipeline.spam import SpamCheck, mta_verdict
from maildesk.services import Services, build
from tests.conftest import free_port, make_mail, running_daemon, toml, wait_for
from tests.helpers import outbox_rows, ticket, tickets
from tests.spamd import GTUBE, SPAMD, SpamdServer

AGENT = "agent@example.test"
ORDINARY = "The printer on floor 2 prints only blank pages since this morning. Thanks, Bob"


@pytest.fixture(scope="session")
def spamd() -> Iterator[SpamdServer]:
    if SPAMD is None:
        pytest.skip("spamd is not installed (apt-get install spamd; .ci/run does it)")
    with SpamdServer() as server:
        yield server


def build_settings(values: dict[str, Any], tmp_path: Path, **spam: Any) -> config.Settings:
    values["spam"] = spam
    values["agents"] = {"addresses": [AGENT]}
    (tmp_path / "maildesk.toml").write_text(toml(values))
    return config.from_mapping(values, base_dir=tmp_path)


def states(services: Services) -> dict[str, str]:
    """Envelope sender -> state of its inbound row."""
    with services.db.transaction() as session:
        rows = session.execute(select(Inbound.mail_from, Inbound.state)).all()
    return {r.mail_from: r.state for r in rows}


def processed(services: Services, sender: str) -> str:
    found: str = wait_for(
        lambda: states(services).get(sender, "pending") != "pending" and states(services)[sender],
        20,
        f"mail from {sender} processed",
    )
    return found


def recipients(services: Services) -> list[str]:
    return [r for row in outbox_rows(services) for r in row.recipients]


def cli(tmp_path: Path, *args: str) -> Any:
    return CliRunner().invoke(main, ["--config", str(tmp_path / "maildesk.toml"), *args])


def test_gtube_is_held_listed_and_released_as_a_ticket(
    spamd: SpamdServer, config_values: dict[str, Any], tmp_path: Path, clock: ManualClock
) -> None:
    settings = build_settings(
        config_values, tmp_path, spamd_host=spamd.host, spamd_port=spamd.port, threshold=5.0
    )
    with running_daemon(settings, clock) as daemon:
        services = daemon.services
        spam = make_mail(
            "Cheap watches",
            sender="Spammer <spammer@spam.test>",
            body=f"Buy now!\n{GTUBE}\n",
        )
        daemon.send(spam, sender="spammer@spam.test")
        daemon.send(make_mail(sender="Bob <bob@customer.test>", body=ORDINARY), "bob@customer.test")

        assert processed(services, "spammer@spam.test") == "held"
        assert processed(services, "bob@customer.test") == "done"
        # Bob is acknowledged and the agent told; the spammer gets nothing, nor does the agent.
        assert [t["requester"] for t in tickets(services)] == ["bob@customer.test"]
        assert sorted(recipients(services)) == [AGENT, "bob@customer.test"]

        listed = cli(tmp_path, "spam", "list", "--json")
        assert listed.exit_code == 0, listed.output
        held = json.loads(listed.stdout)
        assert len(held) == 1
        assert held[0]["from"] == "spammer@spam.test"
        assert held[0]["subject"] == "Cheap watches"
        assert held[0]["verdict_by"] == "spamd"
        assert held[0]["score"] >= 1000
        assert "GTUBE" in held[0]["rules"]

        released = cli(tmp_path, "spam", "release", str(held[0]["id"]))
        assert released.exit_code == 0, released.output
        # The daemon picks it up and processes it as ham, without asking spamd again.
        wait_for(lambda: len(tickets(services)) == 2, 20, "the released message's ticket")
        assert processed(services, "spammer@spam.test") == "done"
        assert json.loads(cli(tmp_path, "spam", "list", "--json").stdout) == []
        wait_for(lambda: "spammer@spam.test" in recipients(services), 10, "its acknowledgement")
        again = cli(tmp_path, "spam", "release", str(held[0]["id"]))
        assert again.exit_code != 0
        assert "no message" in again.output


def test_the_trusted_mta_verdict_holds_mail_only_when_trusted(
    config_values: dict[str, Any], tmp_path: Path, clock: ManualClock
) -> None:
    flagged = make_mail(
        "Re: your invoice",
        sender="Mallory <mallory@spam.test>",
        X_Spam_Flag="YES",
        X_Spam_Status="Yes, score=12.3 required=5.0 tests=BAYES_99,URIBL_BLACK autolearn=no",
    )
    trusting = build_settings(dict(config_values), tmp_path, trust_mta_headers=True)
    with running_daemon(trusting, clock) as daemon:
        daemon.send(flagged, sender="mallory@spam.test")
        assert processed(daemon.services, "mallory@spam.test") == "held"
        held = json.loads(cli(tmp_path, "spam", "list", "--json").stdout)
        assert [(h["verdict_by"], h["score"], h["rules"]) for h in held] == [
            ("mta", 12.3, ["BAYES_99", "URIBL_BLACK"])
        ]
        assert outbox_rows(daemon.services) == []


def test_held_spam_with_her_message_id_leaves_her_thread_whole(
    config_values: dict[str, Any], tmp_path: Path, clock: ManualClock
) -> None:
    """A spam run that reuses a customer's Message-ID is held and joins no ticket;
    it contested her id all the same, and her follow-up answering her own mail
    opened a ticket of its own instead of joining hers."""
    trusting = build_settings(dict(config_values), tmp_path, trust_mta_headers=True)
    first = "<alice-9@customer.test>"
    with running_daemon(trusting, clock) as daemon:
        services = daemon.services
        daemon.send(make_mail(message_id=first), sender="alice@customer.test")
        wait_for(lambda: len(tickets(services)) == 1, 20, "her ticket")
        spam = make_mail("Re: Printer broken", sender="Mallory <mallory@spam.test>",
                         message_id=first, X_Spam_Flag="YES")  # fmt: skip
        daemon.send(spam, sender="mallory@spam.test")
        assert processed(services, "mallory@spam.test") == "held"
        follow_up = make_mail("Re: Printer broken", body="Contract 4711.",
                              In_Reply_To=first, References=first)  # fmt: skip
        daemon.send(follow_up, sender="alice@customer.test")
        # Three rows, none pending: her follow-up's row may not be in the spool yet.
        wait_for(lambda: all_processed(services, 3), 20, "her follow-up processed")
        [hers] = tickets(services)
        assert hers["requester"] == "alice@customer.test"
        texts = [m["body_text"] for m in ticket(services, hers["number"])["messages"]]
        assert any(text.startswith("Contract 4711.") for text in texts)


def states_all(services: Services) -> list[str]:
    with services.db.transaction() as session:
        return list(session.scalars(select(Inbound.state)))


def all_processed(services: Services, count: int) -> bool:
    found = states_all(services)
    return len(found) == count and "pending" not in found


def test_mta_headers_are_ignored_unless_trusted(
    config_values: dict[str, Any], tmp_path: Path, clock: ManualClock
) -> None:
    """Without an MTA that strips them, anyone's filter could have written these headers."""
    flagged = make_mail(sender="Carol <carol@customer.test>", X_Spam_Flag="YES")
    with running_daemon(build_settings(config_values, tmp_path), clock) as daemon:
        daemon.send(flagged, sender="carol@customer.test")
        assert processed(daemon.services, "carol@customer.test") == "done"
        wait_for(lambda: "carol@customer.test" in recipients(daemon.services), 10, "the ack")


def test_rspamd_and_spamassassin_headers_are_read() -> None:
    rspamd = (
        b"X-Rspamd-Action: add header\r\n"
        b"X-Spamd-Result: default: False [9.40 / 15.00];\r\n"
        b"\tR_SPF_FAIL(1.00)[-all];\r\n\tABUSE_SURBL(5.50)[evil.test:url]\r\n"
        b"From: x@spam.test\r\n\r\nbody\r\n"
    )
    verdict = mta_verdict(rspamd)
    assert (verdict.spam, verdict.score, verdict.rules) == (
        True,
        9.4,
        ("R_SPF_FAIL", "ABUSE_SURBL"),
    )
    folded = (
        b"X-Spam-Status: Yes, score=7.0 required=5.0 tests=A_RULE,\r\n"
        b"\tB_RULE autolearn=no version=4.0.1\r\nFrom: x@spam.test\r\n\r\n"
    )
    assert mta_verdict(folded).rules == ("A_RULE", "B_RULE")
    ham = b"X-Spam-Status: No, score=1.0\r\nX-Rspamd-Action: no action\r\n\r\n"
    assert not mta_verdict(ham).spam
    # Only the top-level header block counts: a quoted original's headers do not.
    quoted = b"From: a@customer.test\r\n\r\nForwarded:\r\nX-Spam-Flag: YES\r\n"
    assert not mta_verdict(quoted).spam


@pytest.mark.parametrize("failure", ["refused", "silent"])
def test_mail_goes_on_unscored_when_spamd_is_down(
    failure: str, config_values: dict[str, Any], tmp_path: Path, clock: ManualClock
) -> None:
    with socket.socket() as silent:
        if failure == "silent":  # accepts connections (in its backlog), never answers
            silent.bind(("127.0.0.1", 0))
            silent.listen(8)
            port = silent.getsockname()[1]
        else:
            port = free_port()  # nothing listens there
        settings = build_settings(
            config_values, tmp_path, spamd_host="127.0.0.1", spamd_port=port, spamd_timeout=0.5
        )
        with running_daemon(settings, clock) as daemon:
            services = daemon.services
            for name in ("dan", "eve"):  # GTUBE: held, if spamd could say so
                sender = f"{name}@customer.test"
                daemon.send(make_mail(sender=sender, body=f"Hello\n{GTUBE}\n"), sender)
                assert processed(services, sender) == "done"
            assert [t["requester"] for t in tickets(services)] == [
                "dan@customer.test",
                "eve@customer.test",
            ]
            assert services.processor.spam.unscored == 2
            # spamd rests after a failure: the second mail did not wait for it again.
            if failure == "silent":
                assert connections(silent) == 1
            clock.advance(timedelta(seconds=31))
            daemon.send(make_mail(sender="fay@customer.test"), "fay@customer.test")
            assert processed(services, "fay@customer.test") == "done"
            assert services.processor.spam.unscored == 3
            if failure == "silent":
                assert connections(silent) == 1  # asked again after its rest


def connections(listener: socket.socket) -> int:
    """Connections waiting in the listener's backlog since the last call (then closed)."""
    listener.setblocking(False)
    count = 0
    while True:
        try:
            accepted, _ = listener.accept()
        except BlockingIOError:
            return count
        accepted.close()
        count += 1


def test_global_cap_on_automatic_replies(
    config_values: dict[str, Any], tmp_path: Path, clock: ManualClock
) -> None:
    # The total alone: forged senders' mail may use all of it here (the shares of the
    # total have their test in tests/test_trust.py).
    config_values["limits"] = {
        "auto_replies_per_hour_total": 2,
        "auto_replies_unproven_percent": 100,
    }
    settings = build_settings(config_values, tmp_path)
    with running_daemon(settings, clock) as daemon:
        services = daemon.services
        for n in range(3):
            sender = f"forged{n}@victims.test"
            daemon.send(make_mail(sender=sender), sender=sender)
            processed(services, sender)
        # Every mail is a ticket (and the agent hears of each), but only two got an answer.
        assert len(tickets(services)) == 3
        answered = [r for r in recipients(services) if r != AGENT]
        assert answered == ["forged0@victims.test", "forged1@victims.test"]
        clock.advance(timedelta(hours=1, seconds=1))
        daemon.send(make_mail(sender="late@victims.test"), sender="late@victims.test")
        processed(services, "late@victims.test")
        assert [r for r in recipients(services) if r != AGENT][-1] == "late@victims.test"


def test_messages_scored_side_by_side_keep_their_own_verdicts_and_order(
    spamd: SpamdServer, config_values: dict[str, Any], tmp_path: Path, clock: ManualClock
) -> None:
    # A worker prepares several claimed messages at once ([workers] prepare_ahead): each
    # spamd verdict must stay with its own message, and tickets open in arrival order.
    config_values["workers"] = {"count": 0, "prepare_ahead": 4}
    settings = build_settings(config_values, tmp_path, spamd_host=spamd.host, spamd_port=spamd.port)
    services = build(settings, clock)
    services.prepare()
    try:
        senders = [f"{'spammer' if n % 3 == 1 else 'customer'}{n}@mail.test" for n in range(9)]
        for n, sender in enumerate(senders):
            body = f"Buy now!\n{GTUBE}\n" if sender.startswith("spammer") else ORDINARY
            mail = make_mail(
                f"Message {n}", sender=sender, message_id=f"<side{n}@mail.test>", body=body
            )
            services.store.put(mail, Envelope("smtp", sender, ("support@example.test",)))
        assert services.drain_inbound() == 9

        assert states(services) == {
            s: "held" if s.startswith("spammer") else "done" for s in senders
        }
        customers = [s for s in senders if s.startswith("customer")]
        assert [t["requester"] for t in tickets(services)] == customers
        assert [t["subject"] for t in tickets(services)] == [
            f"Message {senders.index(c)}" for c in customers
        ]
    finally:
        services.db.dispose()


class ScriptedSpamd:
    """A peer that answers as no real spamd can be made to (a 70 KB symbol list, a
    score of nan): the one part of these tests that is not the real spamd."""

    def __init__(self, answers: dict[bytes, bytes]) -> None:
        self.answers, self.asked = answers, 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def _serve(self) -> None:
        while True:
            connection, _ = self.sock.accept()
            with connection:
                self.asked += 1
                request = b""
                while chunk := connection.recv(65536):
                    request += chunk
                word = next((w for w in self.answers if w in request), b"")
                connection.sendall(self.answers[word])


SPAMMY = b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 20.0 / 5.0\r\n\r\nGTUBE"


def test_one_messages_unusable_answer_does_not_rest_spamd_for_everyone() -> None:
    """spamd rests after it fails, so that a silent one costs one timeout, not one a
    message. An answer too long for us to read is one message's, not spamd's, failure:
    resting then let every spam of the next 30 s through unscored."""
    huge = b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 90.0 / 5.0\r\n\r\n" + b"RULE_X," * 12_000
    nan = b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; nan / 5.0\r\n\r\nGTUBE"
    spamd = ScriptedSpamd({b"HUGE": huge, b"NAN": nan, b"": SPAMMY})
    spam = SpamCheck(
        config.SpamSettings(spamd_host="127.0.0.1", spamd_port=spamd.port, spamd_timeout=5),
        ManualClock(),
    )
    ordinary = b"From: a@b.test\r\nSubject: buy\r\n\r\nbuy now\r\n"

    assert spam.score(1, "smtp", ordinary).spam
    assert not spam.score(2, "smtp", b"Subject: x\r\n\r\nHUGE\r\n").spam
    assert not spam.score(3, "smtp", b"Subject: x\r\n\r\nNAN\r\n").spam  # no score: nan
    assert spam.unscored == 2
    assert spam.score(4, "smtp", ordinary).spam  # spamd was asked, and held it
    assert spamd.asked == 4
