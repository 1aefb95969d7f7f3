"""The customer's language: Content-Language, else what they wrote, else `[support] language`.

Over real SMTP: a customer's mail arrives at the daemon and the acknowledgement
in the Maildir outbox is read as the customer would read it.
"""

from __future__ import annotations

from email.message import EmailMessage
from typing import Any

import pytest

from maildesk.language import MAX_CHARS, Detector
from tests.conftest import Outbox, RunningDaemon, make_mail
from tests.helpers import ticket

ENGLISH = "Hello, the printer on the second floor prints only blank pages since this morning."
CZECH = "Dobrý den, tiskárna ve druhém patře od rána tiskne jen prázdné stránky."
CZECH_PLAIN = "Dobry den, tiskarna ve druhem patre od rana tiskne jen prazdne stranky."


@pytest.fixture
def config_values(config_values: dict[str, Any], request: pytest.FixtureRequest) -> dict[str, Any]:
    """`[support] language` is cs unless a test asks for en (indirect parametrization)."""
    config_values["support"]["language"] = getattr(request, "param", "cs")
    return config_values


def text_of(msg: EmailMessage) -> str:
    part = msg.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


def acknowledgement(daemon: RunningDaemon, outbox: Outbox, body: str, **headers: str) -> str:
    daemon.send(make_mail(body=body, **headers))
    [ack] = outbox.wait(1)
    return text_of(ack)


def test_english_text_without_content_language_gets_english_mail(
    daemon: RunningDaemon, outbox: Outbox
) -> None:
    text = acknowledgement(daemon, outbox, ENGLISH)
    assert text.startswith("Hello Alice Customer,"), text
    assert "Dobrý den" not in text
    assert ticket(daemon.services, 1)["language"] == "en"


@pytest.mark.parametrize("config_values", ["en"], indirect=True)
@pytest.mark.parametrize("body", [CZECH, CZECH_PLAIN], ids=["diacritics", "without"])
def test_czech_text_without_content_language_gets_czech_mail(
    daemon: RunningDaemon, outbox: Outbox, body: str
) -> None:
    text = acknowledgement(daemon, outbox, body)
    assert text.startswith("Dobrý den, Alice Customer,"), text
    assert ticket(daemon.services, 1)["language"] == "cs"


@pytest.mark.parametrize("body", ["Thanks!", "Thanks a lot", "OK fine, bye now"])
def test_a_short_text_gets_the_support_language(
    daemon: RunningDaemon, outbox: Outbox, body: str
) -> None:
    text = acknowledgement(daemon, outbox, body)
    assert text.startswith("Dobrý den"), text
    assert ticket(daemon.services, 1)["language"] == "cs"


def test_content_language_beats_the_text(daemon: RunningDaemon, outbox: Outbox) -> None:
    """A client that says cs is believed, even about a mail written in English."""
    make = make_mail(body=ENGLISH)
    raw = make.replace(b"\r\nContent-Type:", b"\r\nContent-Language: cs\r\nContent-Type:", 1)
    daemon.send(raw)
    [ack] = outbox.wait(1)
    assert text_of(ack).startswith("Dobrý den"), text_of(ack)


def test_only_the_head_of_a_long_text_is_read() -> None:
    """Bounded work on a stranger's input: a megabyte costs what MAX_CHARS does."""
    detector = Detector()
    head = (CZECH + " ") * (MAX_CHARS // len(CZECH) + 1)
    assert detector.detect(head + ENGLISH * 20_000) == "cs"
    assert detector.detect("x" * 10 + ENGLISH * 20_000) == "en"
