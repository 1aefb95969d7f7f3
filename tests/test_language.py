"""The customer's language: Content-Language, else what they wrote, else `[support] language`.

Over real SMTP: a customer's mail arrives at the daemon and the acknowledgement
in the Maildir outbox is read as the customer would read it.
"""

from __future__ import annotations

import contextlib
import io
import lzma
import random
import subprocess
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from maildesk.language import MAX_CHARS, Detector, _derived_here, _model
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


def new_process() -> None:
    """Forget the model, as a process that starts does."""
    _model.cache_clear()
    _derived_here.clear()


def corpus() -> list[str]:
    """Texts of every kind a customer may send, and some no one would."""
    czech_words = CZECH.split() + CZECH_PLAIN.split() + ["Ďábelské", "ódy", "úpějí", "žluťoučký"]
    english_words = ENGLISH.split() + ["invoice", "password", "Thanks", "regards"]
    letters = "abcdefghijklmnopqrstuvwxyz áčďéěíňóřšťúůýž ÁČŘŽ äöüß ѐжя 日本 😀🎉 \n\t<>&;/.,!?0123"
    rng = random.Random(9)
    texts = [
        CZECH,
        CZECH_PLAIN,
        ENGLISH,
        CZECH.upper(),  # py3langid reads an all-capitals text in lower case
        "OK díky",
        "ahoj hello jak se máš how are you",
        "Dobrý den, the invoice 2026/114 is wrong, prosím opravte ji.",
        "Guten Tag, der Drucker im zweiten Stock druckt seit heute Morgen nur leere Seiten.",
        "Добрый день, принтер печатает только пустые страницы.",
        "プリンターが白紙しか印刷しません。",
        "<html><body><p>Dobr&yacute; den,<br>tisk&aacute;rna nefunguje.</p></body></html>",
        "Díky moc 😀🎉👍🏽 thanks a lot 🇨🇿",
        "1234 5678 ++ -- ::",
        "Ďábelské ódy úpějí: příliš žluťoučký kůň.",
        "Ste\u0301le rozlozˇeny\u0301 text",  # decomposed accents: NFC joins them
        "a\x00b\udcc3\udca1 broken bytes kept as surrogates",
        "",
        " ",
        "x",
        (CZECH + " ") * 300,  # far longer than MAX_CHARS
        (ENGLISH + " " + CZECH_PLAIN + " ") * 100,
    ]
    for _ in range(60):
        words = rng.choice([czech_words, english_words, czech_words + english_words])
        texts.append(" ".join(rng.choice(words) for _ in range(rng.randint(1, 80))))
    for _ in range(60):
        texts.append("".join(rng.choice(letters) for _ in range(rng.randint(1, 300))))
    return texts


def test_our_small_model_guesses_exactly_as_py3langid_does() -> None:
    """The model a worker loads (derived from py3langid's, `language_derive`) must give
    py3langid's own guess and confidence, to the last bit, for any text."""
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    reference = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    reference.set_languages(["cs", "en"])
    ours = _model()
    for text in corpus():
        assert ours.classify(text) == reference.classify(text), text
    assert ours.classify(CZECH)[0] == "cs" and ours.classify(ENGLISH)[0] == "en"


def test_the_model_is_derived_once_into_the_state_folder(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The small model is derived once into the state folder, and the next process
    reads that file instead of deriving its own; what older versions kept there (the
    whole model unpacked, a model of another py3langid) goes."""
    older = [
        tmp_path / "py3langid-0123456789abcdef.npz",
        tmp_path / "language-0123456789abcdef.npz",
    ]
    for path in older:
        path.write_bytes(b"an older model")
    new_process()  # as a worker process starts
    guessed = Detector(tmp_path).guess(ENGLISH)
    [kept] = tmp_path.glob("language-*.npz")
    assert kept not in older and not any(path.exists() for path in older)
    made = kept.stat()

    new_process()  # the next worker process
    assert Detector(tmp_path).guess(ENGLISH) == guessed
    assert guessed.language == "en"
    assert [p.name for p in tmp_path.iterdir()] == [kept.name]  # no temporary leftovers
    assert (kept.stat().st_ino, kept.stat().st_mtime_ns) == (made.st_ino, made.st_mtime_ns)

    # A folder it cannot write to: a private copy, and the guess all the same.
    new_process()
    assert Detector(tmp_path / "gone").guess(ENGLISH) == guessed
    assert "cannot keep it in" in caplog.text
    new_process()


def test_a_kept_model_cut_short_is_derived_again(tmp_path: Path) -> None:
    new_process()
    guessed = Detector(tmp_path).guess(CZECH)
    [kept] = tmp_path.glob("language-*.npz")
    with kept.open("r+b") as file:
        file.truncate(kept.stat().st_size // 2)  # a full disk, a crash

    new_process()  # the next worker
    assert Detector(tmp_path).guess(CZECH) == guessed
    assert guessed.language == "cs"
    new_process()


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A folder on a small tmpfs with not a byte left (needs the right to mount)."""
    folder = tmp_path / "full"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode(errors='replace')}")
    try:
        with (folder / "filler").open("wb", buffering=0) as filler:
            with contextlib.suppress(OSError):  # ENOSPC: the disk is full now
                while True:
                    filler.write(b"x" * 4096)
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def test_a_state_folder_on_a_full_disk_still_gets_a_guess(full_disk: Path) -> None:
    """Deriving the model in a state folder whose disk is full failed, and the worker
    guessed no language until a restart: Czech customers got English mail from it. It
    derives a copy of its own elsewhere, as for a folder it cannot write."""
    new_process()
    try:
        assert Detector(full_disk).guess(CZECH).language == "cs"
    finally:
        new_process()


def counting_otherwise() -> bytes:
    """py3langid's model with one state counting no feature where it counted one:
    a model another py3langid might ship, which our derivation does not describe."""
    from py3langid.langid import MODEL_DIR, MODEL_FILE

    with np.load(io.BytesIO(lzma.decompress((MODEL_DIR / MODEL_FILE).read_bytes()))) as model:
        arrays = {name: model[name] for name in model.files}
    arrays["out_feat"][np.flatnonzero(arrays["out_feat"] >= 0)[-1]] = -1
    changed = io.BytesIO()
    np.savez(changed, **arrays)
    return lzma.compress(changed.getvalue(), preset=0)


@pytest.mark.parametrize("broken", ["missing", "not-a-model", "counting-otherwise"])
def test_without_its_model_the_detector_guesses_nothing_and_mail_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, broken: str
) -> None:
    """py3langid's own model file missing, unreadable (a broken install) or counting
    otherwise than we derive: no guess, and no exception, so the message takes the
    desk's language instead of failing."""
    import py3langid.langid

    if broken != "missing":
        (tmp_path / "data").mkdir()
        packed = b"not a model" if broken == "not-a-model" else counting_otherwise()
        (tmp_path / "data" / "model.npz.xz").write_bytes(packed)
    monkeypatch.setattr(py3langid.langid, "MODEL_DIR", tmp_path)
    new_process()
    (tmp_path / "state").mkdir()
    detector = Detector(tmp_path / "state")
    assert detector.guess(CZECH).language is None
    assert detector.guess(ENGLISH).language is None
    assert caplog.text.count("language model unavailable") == 1
    assert list((tmp_path / "state").iterdir()) == []  # nothing kept
    monkeypatch.undo()
    new_process()
