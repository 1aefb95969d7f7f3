"""The customer's language: Content-Language, else what they wrote, else `[support] language`.

Over real SMTP: a customer's mail arrives at the daemon and the acknowledgement
in the Maildir outbox is read as the customer would read it.
"""

from __future__ import annotations

from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from maildesk.language import MAX_CHARS, Detector
from maildesk.tickets.agents import Agents
from tests.conftest import Outbox, RunningDaemon, make_mail, wait_for
from tests.helpers import ticket

AGENT = "agent@example.test"
AGENT_CS = "kolega@example.test"

ENGLISH = "Hello, the printer on the second floor prints only blank pages since this morning."
CZECH = "Dobrý den, tiskárna ve druhém patře od rána tiskne jen prázdné stránky."
CZECH_PLAIN = "Dobry den, tiskarna ve druhem patre od rana tiskne jen prazdne stranky."


@pytest.fixture
def config_values(config_values: dict[str, Any], request: pytest.FixtureRequest) -> dict[str, Any]:
    """`[support] language` is cs unless a test asks for en (indirect parametrization)."""
    config_values["support"]["language"] = getattr(request, "param", "cs")
    config_values["agents"]["addresses"] = [AGENT, AGENT_CS]
    return config_values


def text_of(msg: EmailMessage) -> str:
    part = msg.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


def mail_to(outbox: Outbox, address: str, count: int = 1) -> list[EmailMessage]:
    """The first `count` messages to `address`, waiting for them."""

    def found() -> list[EmailMessage]:
        return [m for m in outbox.messages() if m["To"].addresses[0].addr_spec == address]

    return wait_for(lambda: len(found()) >= count and found(), what=f"{count} to {address}")[:count]


def acknowledgement(daemon: RunningDaemon, outbox: Outbox, body: str, **headers: str) -> str:
    daemon.send(make_mail(body=body, **headers))
    [ack] = mail_to(outbox, "alice@customer.test")
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
    [ack] = mail_to(outbox, "alice@customer.test")
    assert text_of(ack).startswith("Dobrý den"), text_of(ack)


def test_only_the_head_of_a_long_text_is_read() -> None:
    """Bounded work on a stranger's input: a megabyte costs what MAX_CHARS does."""
    detector = Detector()
    head = (CZECH + " ") * (MAX_CHARS // len(CZECH) + 1)
    assert detector.detect(head + ENGLISH * 20_000) == "cs"
    assert detector.detect("x" * 10 + ENGLISH * 20_000) == "en"


def agent_answers(daemon: RunningDaemon, notification: EmailMessage, text: str) -> None:
    """The agent replies to their notification from their mail client (proven by Reply-To)."""
    reply_to = notification["Reply-To"].addresses[0].addr_spec
    raw = make_mail(
        subject=f"Re: {notification['Subject']}",
        sender=f"Agnes Agent <{AGENT}>",
        to=reply_to,
        body=text,
        In_Reply_To=notification["Message-ID"],
        References=notification["Message-ID"],
    )
    daemon.send(raw, sender=AGENT, recipients=(reply_to,))


def test_lang_command_switches_the_ticket_language(daemon: RunningDaemon, outbox: Outbox) -> None:
    acknowledgement(daemon, outbox, CZECH)  # detected: cs
    [notification] = mail_to(outbox, AGENT)
    agent_answers(daemon, notification, "#lang en\n#status resolved")
    [_, resolved] = mail_to(outbox, "alice@customer.test", 2)
    assert resolved["Subject"].startswith("[#1] Resolved:"), resolved["Subject"]
    assert "Dobrý den" not in text_of(resolved)
    assert ticket(daemon.services, 1)["language"] == "en"


def test_lang_with_another_value_is_an_error_back_to_the_agent(
    daemon: RunningDaemon, outbox: Outbox
) -> None:
    acknowledgement(daemon, outbox, ENGLISH)
    [notification] = mail_to(outbox, AGENT)
    agent_answers(daemon, notification, "#lang de\n\nHallo!")
    [_, error] = mail_to(outbox, AGENT, 2)
    assert "#lang de: musí být jedno z: cs, en" in text_of(error)
    assert ticket(daemon.services, 1)["language"] == "en"


def status_line(msg: EmailMessage) -> str:
    return next(line for line in text_of(msg).splitlines() if "|" in line)


def test_each_agent_reads_names_in_their_own_language(
    daemon: RunningDaemon, outbox: Outbox
) -> None:
    with daemon.services.db.transaction() as session:
        Agents(session).set_language(AGENT, "en")
        Agents(session).set_language(AGENT_CS, "cs")
    daemon.send(make_mail(body=CZECH))
    [english] = mail_to(outbox, AGENT)
    [czech] = mail_to(outbox, AGENT_CS)
    assert status_line(english) == "Status: New | Type: - | Priority: normal | Owner: nobody"
    assert status_line(czech) == "Stav: Nový | Typ: - | Priorita: normální | Řeší: nikdo"
    for label in ("Nový", "normální", "Stav", "Priorita", "Nový požadavek"):
        assert label not in text_of(english)
    assert english["Subject"].startswith("[#1] New ticket:")
    assert czech["Subject"].startswith("[#1] Nový požadavek:")


def test_the_catalogue_names_every_status_type_and_priority() -> None:
    from maildesk.config import LANGUAGES
    from maildesk.i18n import CATALOGUE
    from maildesk.models import PRIORITIES, STATUSES, TYPES

    for language in LANGUAGES:
        names = CATALOGUE[language]
        assert set(names.status) == set(STATUSES)
        assert set(names.type) == set(TYPES)
        assert set(names.priority) == set(PRIORITIES)
    assert CATALOGUE["cs"].status["new"] != "new" and CATALOGUE["cs"].priority["low"] != "low"


def test_every_language_names_what_the_english_catalogue_names() -> None:
    from dataclasses import fields

    from maildesk.config import LANGUAGES
    from maildesk.i18n import CATALOGUE

    for language in LANGUAGES:
        for table in fields(CATALOGUE["en"]):
            if table.type == "dict[str, str]":
                english = getattr(CATALOGUE["en"], table.name)
                assert set(getattr(CATALOGUE[language], table.name)) == set(english), table.name
    czech = CATALOGUE["cs"]
    event = {"field": "sla", "old": None, "new": "first_response breached", "actor": "system",
             "via": "schedule"}  # fmt: skip
    assert czech.event(event) == {**event, "field_name": "SLA", "old_name": "",
                                  "new_name": "první reakce PŘEKROČENO", "actor_name": "systém",
                                  "via_name": "automaticky"}  # fmt: skip
    assert czech.value("status", "waiting_customer") == "Čeká na zákazníka"
    assert czech.value("owner", "eva@example.test") == "eva@example.test"


def test_agents_may_write_values_by_their_names_in_any_language() -> None:
    from maildesk.tickets import commands

    parsed = commands.parse("#priority Kritická\n#status ceka na zakaznika\n#type Bug\nHello")
    assert [(c.name, c.arg) for c in parsed.commands] == [
        ("priority", "critical"),
        ("status", "waiting_customer"),
        ("type", "bug"),
    ]
    [bad] = commands.parse("#priority urgentní").errors
    assert bad.line == "#priority urgentní"


def test_our_two_language_model_guesses_as_py3langid_does() -> None:
    """`language._model` loads py3langid's file itself (our two languages' weights only,
    its automaton shared rather than copied): every guess and confidence must be the
    library's own."""
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    from maildesk.language import _model

    reference = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    reference.set_languages(["cs", "en"])
    texts = [
        CZECH,
        CZECH_PLAIN,
        ENGLISH,
        "OK díky",
        "ahoj hello jak se máš how are you",
        "Dobrý den, the invoice 2026/114 is wrong, prosím opravte ji.",
        "1234 5678 ++ -- ::",
        "Ďábelské ódy úpějí: příliš žluťoučký kůň.",
    ]
    ours = _model()
    assert [ours.classify(text) for text in texts] == [reference.classify(t) for t in texts]


def test_every_worker_maps_one_unpacked_model_kept_in_the_state_folder(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The model is unpacked once into the state folder (on disk, not a tmpfs /tmp),
    and the next process maps that file instead of unpacking its own copy; a copy an
    older py3langid left there goes."""
    from maildesk.language import _model

    older = tmp_path / "py3langid-0123456789abcdef.npz"
    older.write_bytes(b"an older model")
    _model.cache_clear()  # as a worker process starts
    guessed = Detector(tmp_path).guess(ENGLISH)
    [kept] = tmp_path.glob("py3langid-*.npz")
    assert kept != older and not older.exists()
    made = kept.stat()

    _model.cache_clear()  # the next worker process
    assert Detector(tmp_path).guess(ENGLISH) == guessed
    assert guessed.language == "en"
    assert [p.name for p in tmp_path.iterdir()] == [kept.name]  # no temporary leftovers
    assert (kept.stat().st_ino, kept.stat().st_mtime_ns) == (made.st_ino, made.st_mtime_ns)

    # A folder it cannot write to: a private copy, and the guess all the same.
    _model.cache_clear()
    assert Detector(tmp_path / "gone").guess(ENGLISH) == guessed
    assert "cannot keep it in" in caplog.text
    _model.cache_clear()


def test_a_kept_model_cut_short_is_unpacked_again(tmp_path: Path) -> None:
    from maildesk.language import _model

    _model.cache_clear()
    guessed = Detector(tmp_path).guess(CZECH)
    [kept] = tmp_path.glob("py3langid-*.npz")
    with kept.open("r+b") as file:
        file.truncate(kept.stat().st_size // 2)  # a full disk, a crash

    _model.cache_clear()  # the next worker
    assert Detector(tmp_path).guess(CZECH) == guessed
    assert guessed.language == "cs"
    _model.cache_clear()


def test_without_its_model_the_detector_guesses_nothing_and_mail_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import py3langid.langid

    from maildesk.language import _model

    # py3langid's own model file missing (a broken install): no guess, no exception,
    # so the message takes the desk's language instead of failing.
    monkeypatch.setattr(py3langid.langid, "MODEL_DIR", tmp_path / "nowhere")
    _model.cache_clear()
    detector = Detector(tmp_path)
    assert detector.guess(CZECH).language is None
    assert detector.guess(ENGLISH).language is None
    assert caplog.text.count("language model unavailable") == 1
    monkeypatch.undo()
    _model.cache_clear()
