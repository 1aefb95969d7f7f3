"""Everything an agent receives is in that agent's language (issue 10, item 6).

Over real SMTP: Agnes reads Czech, Bob reads English, `[support] language` is
English. Their digests, `#list` answers, confirmation mails and the errors of a
refused command are read from the Maildir outbox as their mail clients show them:
the Czech ones carry Czech names and sentences and no raw status value, the
English ones no Czech word.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from maildesk import jobs
from maildesk.cli import main
from maildesk.tickets.agents import Agents
from tests.conftest import Outbox, RunningDaemon
from tests.mailclient import (
    AGENT,
    ALICE,
    BOB,
    STRANGER,
    Sent,
    agent_writes,
    customer_mail,
    desk_config,
    mails_to,
    open_ticket,
    processed,
)

# The raw values agents must never read in Czech mail (whole words: `normální` is fine).
RAW_VALUES = re.compile(r"\b(new|accepted|waiting_customer|resolved|closed|critical|normal|low)\b")
CZECH_WORDS = ("Nový", "normální", "stav", "priorita", "řešitel", "stáří", "Požadavky",
               "Potvrďte", "musí", "tiket")  # fmt: skip


@pytest.fixture
def config_values(config_values: dict[str, Any]) -> dict[str, Any]:
    config_values["support"]["language"] = "en"
    return desk_config(config_values, AGENT, BOB)


@pytest.fixture
def agnes_reads_czech(daemon: RunningDaemon) -> None:
    with daemon.services.db.transaction() as session:
        Agents(session).set_language(AGENT, "cs")
        Agents(session).set_language(BOB, "en")


def body(mail: Sent) -> str:
    part = mail.msg.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


def assert_czech(mail: Sent, *expected: str) -> None:
    text = f"{mail.subject}\n{body(mail)}"
    for word in expected:
        assert word in text, text
    assert not RAW_VALUES.search(text), text


def assert_english(mail: Sent, *expected: str) -> None:
    text = f"{mail.subject}\n{body(mail)}"
    for word in expected:
        assert word in text, text
    for word in CZECH_WORDS:
        assert word not in text, (word, text)


@pytest.mark.usefixtures("agnes_reads_czech")
def test_each_agents_digest_is_in_their_language(daemon: RunningDaemon, outbox: Outbox) -> None:
    open_ticket(daemon, outbox)
    assert jobs.digest(daemon.services) == 2
    [czech] = mails_to(outbox, AGENT, "Požadavky čekající na vás")
    [english] = mails_to(outbox, BOB, "Tickets waiting on you")
    assert_czech(czech, "[normální] Nový")
    assert_english(english, "[normal] New")


@pytest.mark.usefixtures("agnes_reads_czech")
def test_each_agents_list_is_in_their_language(daemon: RunningDaemon, outbox: Outbox) -> None:
    open_ticket(daemon, outbox)
    agent_writes(daemon, AGENT, "#list all")
    agent_writes(daemon, BOB, "#list all")
    [czech] = mails_to(outbox, AGENT, "#list all")
    [english] = mails_to(outbox, BOB, "#list all")
    assert_czech(czech, "stav", "Nový", "normální")
    assert_english(english, "status", "New", "normal")


@pytest.mark.usefixtures("agnes_reads_czech")
def test_each_agents_confirmation_is_in_their_language(
    daemon: RunningDaemon, outbox: Outbox, config_file: Path
) -> None:
    open_ticket(daemon, outbox)
    for agent in (AGENT, BOB):
        agent_writes(daemon, agent, "#watch", envelope=STRANGER, subject="[#1] forged",
                     extra={"Reply-To": STRANGER})  # fmt: skip
    [czech] = mails_to(outbox, AGENT, "Potvrďte: #watch u [#1]")
    [english] = mails_to(outbox, BOB, "Confirm: #watch on [#1]")
    assert_czech(czech, "stav Nový")
    assert_english(english, "status New")


def labels(mail: Sent) -> str:
    """What maildesk itself wrote in a #show: its subject, header, SLA, message and event
    lines, without the messages' own text, the addresses, or the command summary (whose
    values are what an agent types)."""
    kept, in_message = [], False
    for line in body(mail).replace("\r\n", "\n").split("\n-- \n")[0].splitlines():
        if line.startswith("=== "):
            in_message = line[4:5].isdigit()  # "=== 2026-01-09 14:00 IN ..." opens a message
            kept.append(line)
        elif not in_message:
            kept.append(line)
    return re.sub(r"<?\S+@\S+", "", "\n".join([mail.subject, *kept]))


# Raw values and field names a Czech #show must not show (addresses are left out first).
RAW_IN_SHOW = re.compile(
    r"\b(new|accepted|waiting_customer|critical|normal|bug|status|owner|priority|type|"
    r"language|command|customer|acknowledgement|first_response|running|en|cs|system)\b"
)


@pytest.mark.usefixtures("agnes_reads_czech")
def test_each_agents_show_names_everything_in_their_language(
    daemon: RunningDaemon, outbox: Outbox
) -> None:
    opened = open_ticket(daemon, outbox)
    # Agnes takes the ticket and changes all she can: events of every kind of value.
    agent_writes(daemon, AGENT, "#assign me\n#type bug\n#priority critical\n#lang cs",
                 to=opened.reply_to, answering=opened.notification)  # fmt: skip
    processed(daemon, 2)
    for agent in (AGENT, BOB):
        agent_writes(daemon, agent, "#show 1")
    [czech] = mails_to(outbox, AGENT, "[#1] Printer broken")
    [english] = mails_to(outbox, BOB, "[#1] Printer broken")

    czech_labels, english_labels = labels(czech), labels(english)
    for line in ("stav: Nový -> Přijatý —  příkazem", "priorita: normální -> kritická",
                 "typ: - -> chyba", "jazyk: angličtina -> čeština", "SLA první reakce: běží",
                 "PŘIŠLO zákazník", "ODEŠLO potvrzení přijetí"):  # fmt: skip
        assert line in czech_labels, czech_labels
    assert not RAW_IN_SHOW.search(czech_labels), RAW_IN_SHOW.search(czech_labels)
    for line in ("status: New -> Accepted —  by command", "priority: normal -> critical",
                 "type: - -> bug", "language: English -> Czech", "SLA first response: running",
                 "IN customer", "OUT acknowledgement"):  # fmt: skip
        assert line in english_labels, english_labels
    assert_english(english)
    for word in ("stav", "řešitel", "příkazem", "čeština", "běží", "zákazník", "PŘIŠLO"):
        assert word not in english_labels, word


def error_lines(mail: Sent) -> list[str]:
    return [line.strip()[2:] for line in body(mail).splitlines() if line.startswith("  - ")]


@pytest.mark.usefixtures("agnes_reads_czech")
def test_a_refused_command_is_explained_in_the_agents_language(
    daemon: RunningDaemon, outbox: Outbox
) -> None:
    opened = open_ticket(daemon, outbox)
    # A reply to the notification (the agent flow) with two bad lines.
    agent_writes(daemon, AGENT, "#lang de\n#assign nobody@else.test\n\nHallo",
                 to=opened.reply_to, answering=opened.notification)  # fmt: skip
    [czech] = mails_to(outbox, AGENT, "[#1] Neodesláno")
    assert error_lines(czech) == ["#lang de: musí být jedno z: cs, en",
                                  "#assign nobody@else.test: není řešitel"]  # fmt: skip
    assert "V odpovědi k tiketu:" in body(czech)  # the command summary in Czech too
    assert "In a reply to a ticket" not in body(czech)

    # A console request with a bad filter, from each agent.
    for agent in (AGENT, BOB):
        agent_writes(daemon, agent, "#list bogus", subject="list")
    [czech_list] = mails_to(outbox, AGENT, "Neodesláno: list")
    [english_list] = mails_to(outbox, BOB, "Not sent: list")
    [line] = error_lines(czech_list)
    assert line.startswith("#list bogus: musí být jedno z: mine, unassigned"), line
    assert line.endswith("status=STAV nebo from=E-MAIL"), line
    assert error_lines(english_list) == [
        "#list bogus: must be one of mine, unassigned, open, waiting, overdue, all,"
        " status=STATUS or from=EMAIL"
    ]
    assert_english(english_list, "In a reply to a ticket")


def test_every_command_error_has_a_sentence_in_every_language() -> None:
    from maildesk.config import LANGUAGES
    from maildesk.tickets.command_errors import SENTENCES, Code

    fields = {code: re.findall(r"{(\w+)}", SENTENCES["en"][code]) for code in Code}
    for language in LANGUAGES:
        assert set(SENTENCES[language]) == set(Code)
        for code in Code:
            assert sorted(re.findall(r"{(\w+)}", SENTENCES[language][code])) == sorted(
                fields[code]
            ), (language, code)


def test_people_language_sets_the_language_a_customer_gets_mail_in(
    daemon: RunningDaemon, outbox: Outbox, config_file: Path
) -> None:
    open_ticket(daemon, outbox)  # Alice writes English: English mail

    def people(*args: str) -> str:
        result = CliRunner().invoke(main, ["--config", str(config_file), "people", *args])
        assert result.exit_code == 0, result.output
        return str(result.output)

    people("language", ALICE.upper(), "cs")
    assert "cs" in next(line for line in people("list").splitlines() if ALICE in line)
    daemon.send(customer_mail("en", message_id=f"<{uuid.uuid4().hex}@customer.test>",
                              subject="Another one"))  # fmt: skip
    [_, second] = mails_to(outbox, ALICE, "[#", 2)
    assert "Dobrý den" in body(second), body(second)

    people("language", ALICE, "default")
    assert " - " in next(line for line in people("list").splitlines() if ALICE in line)
    bad = CliRunner().invoke(main, ["--config", str(config_file), "people", "language",
                                    "nobody@else.test", "cs"])  # fmt: skip
    assert bad.exit_code != 0 and "no person nobody@else.test" in bad.output
