"""Logs as ops read them: one structured line per event, context fields, no secrets,
the journal's own timestamps and priorities under journald."""

from __future__ import annotations

import io
import json
import logging
import os
import random
import re
from pathlib import Path

import pytest

from maildesk import logs
from maildesk.logs import JsonFormatter, ReadableFormatter
from tests.test_redaction import SHAPES, TOKEN


def test_json_lines_off_a_terminal_with_context_and_the_traceback_inside(
    restore_logging: None,
) -> None:
    stream = io.StringIO()
    logs.configure("info", stream)
    log = logging.getLogger("maildesk.outbox")
    with logs.log_context(outbox_id=7, message_id="abc@example.test"):
        log.info("sent", extra={"ticket": 42})
        try:
            raise ValueError("relay said no")
        except ValueError:
            log.exception("send failed")
    log.debug("not at info")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2  # the traceback did not add lines; debug was dropped
    sent, failed = (json.loads(line) for line in lines)
    assert sent["level"] == "info" and sent["logger"] == "maildesk.outbox"
    assert (sent["ticket"], sent["outbox_id"], sent["message_id"]) == (42, 7, "abc@example.test")
    assert "ts" in sent
    assert failed["level"] == "error"
    assert "ValueError: relay said no" in failed["exc"]
    assert failed["exc"].startswith("Traceback")


def test_the_context_ends_with_its_block(restore_logging: None) -> None:
    stream = io.StringIO()
    logs.configure("info", stream)
    with logs.log_context(inbound_id=3):
        logging.getLogger("maildesk.pipeline").info("inside")
    logging.getLogger("maildesk.pipeline").info("outside")
    inside, outside = (json.loads(line) for line in stream.getvalue().splitlines())
    assert inside["inbound_id"] == 3 and "inbound_id" not in outside


def test_no_token_password_or_cookie_reaches_the_log(restore_logging: None) -> None:
    stream = io.StringIO()
    logs.configure("info", stream)
    log = logging.getLogger("maildesk.web")
    log.info("GET /account/set-password?token=eyJhbGciOi.secretpart&lang=cs")
    log.warning("relay smtp://bob:hunter2@relay.example.test:587 refused")
    log.info("headers %s", {"Cookie": "maildesk_session=abcdef123456"})
    log.info("Authorization: Bearer s3cr3t-metrics-token")
    # Our mail's Message-ID (a secret of its ticket) in a relay's answer; a customer's stays.
    log.warning("relay refused <md.YNeq9qywMg4Ebxqp@example.test>, not <CAF1x@gmail.test>")
    try:
        raise RuntimeError("login failed for password='correct horse'")
    except RuntimeError:
        log.exception("oops")
    text = stream.getvalue()
    for secret in (
        "eyJhbGciOi", "secretpart", "hunter2", "abcdef123456", "s3cr3t", "horse", "YNeq9qyw"
    ):  # fmt: skip
        assert secret not in text
    assert "lang=cs" in text and "relay.example.test" in text and "<CAF1x@gmail.test>" in text


# The pattern `logs` used for secret keys until 2026-11-30: the reference for what is
# redacted. It backtracked quadratically over long runs of key characters.
_OLD_KEY = r"[A-Za-z0-9_-]*(?:token|password|passwd|secret|api_?key|session|csrf)[A-Za-z0-9_-]*"
_OLD_VALUE = r"""(?:'[^'\n]*'|"[^"\n]*"|[^\s&'",;)}\]]+)"""
_OLD_KEYED = re.compile(rf"""(?i)({_OLD_KEY}['"]?\s*[=:]\s*){_OLD_VALUE}""")


def test_secret_keys_are_redacted_as_the_old_pattern_did() -> None:
    """20,000 random lines of keys, secret words, separators, quotes and values: the
    linear redaction of keyed secrets leaves what the old pattern left."""
    rng = random.Random(1130)
    parts = [
        "token", "TOKEN", "password", "passwd", "secret", "apikey", "api_key", "session",
        "csrf", "my", "x", "-", "_", "9", "=", ":", " ", "'", '"', "&", ";", ")", "]",
        "}", ",", "\n", ".", "ž", "abc", "=token=", "tokens", "@",
    ]  # fmt: skip
    for _ in range(20_000):
        text = "".join(rng.choice(parts) for _ in range(rng.randrange(1, 14)))
        assert logs._redact_keyed(text) == _OLD_KEYED.sub(r"\1[redacted]", text), text


def test_a_long_address_in_a_log_line_costs_no_more_than_its_length() -> None:
    """A stranger's 20 KB address (a From the parser accepts) lands in log lines: the
    redaction of such a line grew with the square of its length (12 s for 16 KB)."""
    from tests.test_linear_work import GROWTH_BOUND, growth

    for shape in (
        lambda n: "outbox 7 sent <x@y> to " + "a" * n + "@customer.test",
        lambda n: "tokenx" * (n // 6) + " end",
        lambda n: "a-" * (n // 2) + "=",
    ):
        assert growth(logs.redact, shape, 2_000) < GROWTH_BOUND


def test_under_journald_no_timestamp_and_a_priority_prefix(
    restore_logging: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (tmp_path / "journal").open("w+") as stream:
        stat = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{stat.st_dev}:{stat.st_ino}")
        logs.configure("info", stream)
        logging.getLogger("maildesk.outbox").warning("relay down")
        logging.getLogger("maildesk").info("listening")
        stream.flush()
        stream.seek(0)
        warning, info = stream.read().splitlines()
    assert warning.startswith("<4>{") and info.startswith("<6>{")
    assert "ts" not in json.loads(warning[3:])


def test_a_terminal_gets_a_readable_line(restore_logging: None) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    logs.configure("info", stream)
    logging.getLogger("maildesk.outbox").warning("deferred", extra={"outbox_id": 5})
    line = stream.getvalue().strip()
    assert line.endswith("WARNING maildesk.outbox: deferred  outbox_id=5")


def test_lines_held_in_a_block_come_out_at_its_end_in_order_with_their_context(
    restore_logging: None,
) -> None:
    stream = io.StringIO()
    logs.configure("info", stream)
    log = logging.getLogger("maildesk.pipeline")
    count = [1]
    with pytest.raises(RuntimeError), logs.held():
        for inbound in (1, 2):
            with logs.log_context(inbound_id=inbound):
                log.info("message %d of %s", inbound, count)
        count[0] = 99  # the line says what held when it was logged
        with logs.held():  # nested: the outer block writes
            log.warning("inner")
        assert stream.getvalue() == ""
        raise RuntimeError("the transaction failed")  # its lines are written all the same
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(line["msg"], line.get("inbound_id")) for line in lines] == [
        ("message 1 of [1]", 1),
        ("message 2 of [1]", 2),
        ("inner", None),
    ]


def test_a_block_that_logs_without_end_holds_a_bounded_number_of_lines(
    restore_logging: None,
) -> None:
    stream = io.StringIO()
    logs.configure("info", stream)
    with logs.held():
        for n in range(logs.MOST_HELD + 5):
            logging.getLogger("maildesk.test").info("line %d", n)
        assert len(stream.getvalue().splitlines()) == logs.MOST_HELD  # written at the cap
    lines = [json.loads(line)["msg"] for line in stream.getvalue().splitlines()]
    assert lines == [f"line {n}" for n in range(logs.MOST_HELD + 5)]


def test_a_transactions_lines_wait_for_its_commit_and_go_with_its_rollback(
    restore_logging: None,
) -> None:
    """`logs.after_commit()` is what `Database.transaction()` wraps a transaction in."""
    stream = io.StringIO()
    logs.configure("info", stream)
    told = logs.transactional("maildesk.test.told")
    other = logging.getLogger("maildesk.test.other")

    def written() -> list[str]:
        return [json.loads(line)["msg"] for line in stream.getvalue().splitlines()]

    with logs.after_commit():
        with logs.log_context(inbound_id=7):
            told.info("inbound %d -> ticket %d", 7, 1)
        with pytest.raises(RuntimeError), logs.undone_on_error():  # a savepoint rolled back
            told.info("inbound 8 -> ticket 2")
            raise RuntimeError("rolled back")
        other.info("not a transaction's word: written at once")
        told.error("a failure is written at once")
        with logs.after_commit():  # a transaction of its own, committed
            told.info("inner committed")
        assert written() == [
            "not a transaction's word: written at once",
            "a failure is written at once",
            "inner committed",
        ]
    assert written()[3:] == ["inbound 7 -> ticket 1"]
    assert json.loads(stream.getvalue().splitlines()[3])["inbound_id"] == 7

    with pytest.raises(RuntimeError), logs.after_commit():
        told.warning("inbound 9 quarantined")
        raise RuntimeError("the commit failed")
    told.info("outside any transaction")
    assert written()[4:] == ["outside any transaction"]


@pytest.mark.parametrize("shape", ["qp soft breaks", "wrapped", "wrapped three times"])
def test_the_readable_log_redacts_a_link_cut_across_lines(shape: str) -> None:
    """The readable log escaped line breaks before it redacted: a link wrapped or
    quoted across lines was no longer found, and its token's tail was logged."""
    text = SHAPES[shape]
    record = logging.LogRecord("maildesk.test", logging.WARNING, __file__, 1,
                               "body excerpt: %s", (text,), None)  # fmt: skip
    json_line = JsonFormatter(timestamps=False).format(record)
    assert TOKEN[-20:] not in json_line  # the JSON log redacts it (before encoding)
    line = ReadableFormatter(timestamps=False).format(record)
    assert TOKEN[-20:] not in line, line
