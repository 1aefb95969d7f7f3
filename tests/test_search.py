"""Full-text search on the database's own engine (SQLite FTS5, PostgreSQL tsvector + GIN).

Runs on SQLite, and on PostgreSQL when MAILDESK_TEST_DATABASE_URL is set.
"""

from __future__ import annotations

import json
import random
import re
import unicodedata
from datetime import UTC, datetime
from pathlib import Path

from alembic import command
from click.testing import CliRunner
from sqlalchemy import select, text

from maildesk import folding
from maildesk.cli import main
from maildesk.clock import ManualClock
from maildesk.db import Database
from maildesk.models import Message, Person, Ticket
from maildesk.schema import alembic_config, upgrade
from maildesk.services import Services
from maildesk.signing import signed_serializer
from maildesk.tickets.search import (
    MAX_WORD_CHARS,
    _newest_per_ticket,
    fold,
    index_rows,
    indexed,
    search,
    words,
)
from maildesk.tickets.service import NewMessage, Tickets
from maildesk.tickets.visibility import Scope
from tests.conftest import make_mail
from tests.helpers import receive


def numbers(services: Services, words: str, scope: Scope | None = None) -> list[int]:
    with services.db.reading() as session:
        return [hit.ticket.id for hit in search(session, words, 20, person=scope)]


def test_fold_drops_czech_diacritics_and_case() -> None:
    assert fold("Příliš žluťoučký kůň ÚPĚL ďábelské ódy") == (
        "prilis zlutoucky kun upel dabelske ody"
    )


def test_fold_by_runs_is_fold_of_the_whole() -> None:
    """Mostly ASCII text is folded a run of other characters at a time: the result is
    the whole text's (NFKD without marks, case-folded), whatever the neighbours, over
    random text of ASCII, accented letters, loose marks, ligatures, other scripts and
    the characters whose decomposition is only marks."""
    others = ["é", "Č", "ů", "\u0301", "\u0327\u0301", "ß", "İ", "ﬁ", "½", "Σ", "ς", "ж", "가"]
    others += ["\u0f73", "\uff9e", "\U0001d400", "\U0001d165", "\u034f", "ǅ", "ﾞ", "Å"]
    rng = random.Random(17)
    for _ in range(20_000):
        ascii_weight = rng.choice([1, 30])  # mostly other characters, or mostly ASCII
        weights = [ascii_weight] * 5 + [1] * len(others)
        pieces = rng.choices(["a", "B", " ", "7", "-", *others], weights, k=rng.randrange(1, 60))
        text = "".join(pieces)
        whole = unicodedata.normalize("NFKD", folding._without_marks(text))
        assert fold(text) == folding._without_marks(whole).casefold(), ascii(text)


def test_words_are_the_runs_of_letters_and_digits_whatever_the_path() -> None:
    """ASCII text (most text, once folded) is split by a translation table, other text
    by the pattern: both give the pattern's words, longer ones than the index takes
    dropped, over random text of letters, digits, marks, punctuation and separators."""
    alphabet = ["a", "Z", "7", "_", " ", "-", ".", "\t", "\n", "\x1c", "\x00", "é", "ß", "Č"]
    alphabet += ["\u0301", "\u00a0", "\u2028", "٣", "ж", "x" * 70]
    rng = random.Random(13)
    for _ in range(5000):
        value = "".join(rng.choices(alphabet, k=rng.randrange(0, 30)))
        expected = [w for w in re.findall(r"[^\W_]+", fold(value)) if len(w) <= MAX_WORD_CHARS]
        assert words(value) == expected, value


def test_a_body_word_is_found_with_and_without_diacritics(services: Services) -> None:
    receive(
        services, make_mail("Tiskárna", body="Práce na faktuře se zastavila, tiskárna hlásí chybu.")
    )
    receive(services, make_mail("Printer", body="The printer on floor 2 prints blank pages."))

    assert numbers(services, "práce") == [1]
    assert numbers(services, "prace") == [1]
    assert numbers(services, "PRACE") == [1]
    # Every word must match; a word of three letters or more also matches as a prefix
    # (Czech inflects: "faktur" finds "faktuře").
    assert numbers(services, "faktur chybu") == [1]
    assert numbers(services, "faktur printer") == []
    assert numbers(services, "blank") == [2]
    assert numbers(services, "tiskarna") == [1]  # the subject counts too
    assert numbers(services, "  ,;  ") == []


def test_the_whole_stored_text_is_found_not_only_the_new_words(services: Services) -> None:
    """The index holds what the ticket shows: the quote and signature too (the worker
    folds it before its write transaction, from the same parsed text it stores)."""
    body = "Díky, zkusím to.\n\nOn Mon, Bob wrote:\n> Restartujte směrovač.\n\n-- \nAlice"
    receive(services, make_mail("Síť padá", body=body))

    assert numbers(services, "zkusim") == [1]
    assert numbers(services, "smerovac") == [1]  # quoted
    assert numbers(services, "alice") == [1]  # signature
    assert numbers(services, "sit pada") == [1]  # subject


def test_newest_match_first_and_an_agent_reply_is_found(services: Services) -> None:
    receive(services, make_mail("First", body="heslo nefunguje"))
    receive(services, make_mail("Second", body="zase heslo", sender="bob@other.test"))
    assert numbers(services, "heslo") == [2, 1]
    with services.db.reading() as session:
        hit = search(session, "nefunguje", 5)[0]
        assert "heslo nefunguje" in hit.snippet


def test_the_acknowledgement_template_is_not_indexed(services: Services) -> None:
    """Our own automatic mail says the same words on every ticket; they would match all."""
    receive(services, make_mail("Printer", body="blank pages"))
    with services.db.reading() as session:
        ours = session.scalars(select(Message).where(Message.direction == "out")).all()
    assert ours, "an acknowledgement was recorded"
    word = next(w for w in ours[0].body_text.split() if w.isalpha() and len(w) > 4)
    assert word.lower() not in "blank pages printer"
    assert numbers(services, word) == []


def test_a_customers_scope_sees_only_public_messages_of_their_tickets(services: Services) -> None:
    receive(services, make_mail("Mine", body="tajný kód je ve skříni"))
    receive(
        services,
        make_mail("Theirs", body="tajný plán", sender="mallory@other.test"),
        mail_from="mallory@other.test",
    )
    with services.db.transaction() as session:
        alice = session.scalar(select(Person).where(Person.email == "alice@customer.test"))
        assert alice is not None
        ticket = session.get(Ticket, 1)
        assert ticket is not None
        Tickets(session).add_message(
            ticket,
            NewMessage(
                message_id="note-1@example.test",
                direction="in",
                kind="note",
                from_addr="agent@example.test",
                from_name="",
                subject="",
                body_text="interní poznámka: zákazník dluží",
                created_at=services.clock.now(),
                internal=True,
            ),
        )
        scope = Scope(alice.id, None)
    assert numbers(services, "tajny") == [2, 1]
    assert numbers(services, "tajny", scope) == [1]
    assert numbers(services, "dluzi") == [1]  # agents find their notes
    assert numbers(services, "dluzi", scope) == []


def test_an_organizations_scope_adds_colleagues_proven_tickets(services: Services) -> None:
    receive(services, make_mail("Alice's", body="sklad hlásí chybu"))
    colleague = "Bob <bob@customer.test>"
    bobs = make_mail("Bob's", body="sklad je prázdný", sender=colleague)
    receive(services, bobs, "bob@customer.test", source="import")  # vouched for by ops
    receive(services, make_mail("Other", body="sklad", sender="eve@other.test"), "eve@other.test")
    # Anyone can write Carol's From: her unproven ticket is hers alone (visibility.py).
    carols = make_mail("Carol's?", body="sklad hoří", sender="carol@customer.test")
    receive(services, carols, "carol@customer.test")
    with services.db.reading() as session:
        alice = session.scalar(select(Person.id).where(Person.email == "alice@customer.test"))
    assert alice is not None
    assert numbers(services, "sklad", Scope(alice, None)) == [1]
    assert numbers(services, "sklad", Scope(alice, "customer.test")) == [2, 1]


def test_the_migration_indexes_messages_stored_before_it(tmp_path: Path, db_url: str) -> None:
    db = Database(db_url)
    config = alembic_config(db)
    with db.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0009")
    now = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    with db.engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO people (id, email, name, created_at, session_version) "
                "VALUES (1, 'old@customer.test', '', :now, 0)"
            ),
            {"now": now},
        )
        connection.execute(
            text(
                "INSERT INTO tickets (id, subject, status, priority, requester_id, language, "
                "created_at, updated_at, channel, paid_note, paid_round) "
                "VALUES (1, 'Stará žádost', 'new', 'normal', 1, 'cs', :now, :now, 'email', '', 0)"
            ),
            {"now": now},
        )
        connection.execute(
            text(
                "INSERT INTO messages (id, ticket_id, message_id, direction, kind, from_addr, "
                "from_name, to_addrs, cc_addrs, subject, body_text, body_html, created_at, "
                "internal, flag, proof) VALUES (1, 1, 'old@x', 'in', 'customer', "
                "'old@customer.test', '', '[]', '[]', 'Stará žádost', 'Účetní uzávěrka', '', "
                ":now, false, '', '')"
            ),
            {"now": now},
        )
    with db.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    with db.reading() as session:
        assert [h.ticket.id for h in search(session, "uzaverka", 5)] == [1]
        assert [h.ticket.id for h in search(session, "stara zadost", 5)] == [1]
    db.dispose()


def test_the_upgrade_drops_link_tokens_an_older_index_holds(db_url: str) -> None:
    """Before 27f6a86 a quoted set-password link's token was indexed word by word, and a
    prefix search read it back to anyone who may search the ticket (a colleague in the
    portal could rebuild it, case aside). Migration 0020 makes every document again."""
    token = signed_serializer("k", "maildesk.invitation", ManualClock()).dumps(
        {"p": 1007, "n": "hal22SDW8pPi191HTmipGA"}  # as accounts.py makes them
    )
    link = f"https://help.example.test/account/set-password?token={token}"
    now = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
    messages = [  # (id, direction, kind, subject, body)
        (1, "in", "customer", "Heslo", f"Kolega mi přeposlal tohle:\n> {link}\n"),
        (2, "out", "acknowledgement", "[#1] Heslo", "Potvrzujeme přijetí požadavku."),
        (3, "out", "agent_reply", "Re: Heslo", "Odkaz už neplatí, posíláme nový."),
    ]
    db = Database(db_url)
    upgrade(db, "0019")
    with db.engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO people (id, email, name, created_at, session_version) "
                "VALUES (1, 'carol@customer.test', '', :now, 0)"
            ),
            {"now": now},
        )
        connection.execute(
            text(
                "INSERT INTO tickets (id, subject, status, priority, requester_id, language, "
                "created_at, updated_at, channel, paid_note, paid_round) "
                "VALUES (1, 'Heslo', 'new', 'normal', 1, 'cs', :now, :now, 'email', '', 0)"
            ),
            {"now": now},
        )
        for pk, direction, kind, subject, body in messages:
            connection.execute(
                text(
                    "INSERT INTO messages (id, ticket_id, message_id, direction, kind, "
                    "from_addr, from_name, to_addrs, cc_addrs, subject, body_text, body_html, "
                    "created_at, internal, flag, proof) VALUES (:pk, 1, :mid, :direction, "
                    ":kind, 'carol@customer.test', '', '[]', '[]', :subject, :body, '', :now, "
                    "false, '', '')"
                ),
                {"pk": pk, "mid": f"m{pk}@x", "direction": direction, "kind": kind}
                | {"subject": subject, "body": body, "now": now},
            )
            if indexed(direction, kind):  # as the code before 27f6a86 indexed it
                old = " ".join(words(f"{subject}\n{body}"))
                index_rows(connection, [(pk, old)])
    stem = words(token)[0][:12]  # a colleague's prefix search, case aside
    assert len(stem) == 12 and stem.startswith("eyj")
    with db.reading() as session:  # the index alone: today's tickets have columns 0019 lacks
        assert list(_newest_per_ticket(session, [stem], 5, None, prefix=True)) == [1]
    db.dispose()

    upgrade(db)  # `maildesk init` after installing the new version
    with db.reading() as session:
        found = {
            w: [h.ticket.id for h in search(session, w, 5)]
            for w in (stem, stem[:4], "password", "preposlal", "neplati", "potvrzujeme")
        }
    db.dispose()
    assert (
        found
        == {
            stem: [],  # the token's words are gone, whole and as prefixes
            stem[:4]: [],
            "password": [1],  # the rest of the customer's message is still found
            "preposlal": [1],
            "neplati": [1],  # an agent's answer is indexed as before
            "potvrzujeme": [],  # our templated mail never was
        }
    )


def test_cli_search_prints_json(services: Services, config_file: Path) -> None:
    receive(services, make_mail("Faktura", body="Prosím o opravu faktury č. 2041."))
    result = CliRunner().invoke(
        main, ["--config", str(config_file), "tickets", "search", "faktury", "--json"]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [(r["number"], r["subject"]) for r in rows] == [(1, "Faktura")]
    assert "faktury" in rows[0]["snippet"]
    table = CliRunner().invoke(main, ["--config", str(config_file), "tickets", "search", "oprav"])
    assert table.exit_code == 0 and "Faktura" in table.output
