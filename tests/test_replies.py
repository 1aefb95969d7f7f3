"""The new text of a reply, as each mail client quotes and signs it; thanks and approval words."""

from __future__ import annotations

from pathlib import Path

import pytest

from maildesk.replies import has_word, is_only_thanks, new_text

DATA = Path(__file__).parent / "data" / "mail"

# Each fixture is the text/plain body a client sends: new text, signature, quote header, quote.
EXPECTED = {
    "reply-outlook-en.txt": (
        "Hi Alice,\n\nI have reset your password. You will receive an activation e-mail within\n"
        "a few minutes; the link in it is valid for 24 hours."
    ),
    "reply-outlook-cs.txt": (
        "Dobrý den,\n\n"
        "chybu v exportu jsme opravili. Aplikaci prosím restartujte a zkuste to znovu."
    ),
    "reply-outlook-original-en.txt": (
        "Hello Alice,\n\nthe invoice was re-sent to billing@customer.test."
    ),
    "reply-outlook-original-cs.txt": (
        "Dobrý den,\n\nfakturu jsme znovu odeslali na adresu fakturace@zakaznik.test."
    ),
    "reply-gmail-en.txt": (
        "Hi Alice,\n\nthe export works again, the fix has been live since 11:30.\n"
        "Could you try once more and let me know?"
    ),
    "reply-gmail-cs.txt": "Dobrý den,\n\nnávod na nastavení tiskárny posílám v příloze.",
    "reply-apple-mail-en.txt": (
        "Hi Alice,\n\nyour account has been moved to the Business plan.\n\nPetra"
    ),
    "reply-apple-mail-cs.txt": (
        "Dobrý den,\n\núčet jsme převedli na tarif Business.\n\nPetra Svobodová"
    ),
    "reply-thunderbird-en.txt": (
        "Hi Alice,\n\nthe backup from Sunday night is complete; I restored the folder\n"
        '"Contracts" from it.'
    ),
    "reply-thunderbird-cs.txt": (
        "Dobrý den,\n\nsložku „Smlouvy“ jsme obnovili ze zálohy z neděle."
    ),
    "reply-mutt.txt": (
        "Hi Alice,\n\nthe certificate is renewed; the new one is valid until 2027-11-23."
    ),
    "reply-signature-dashdash.txt": "Hello,\n\nthe mailbox quota is now 50 GB.",
    "reply-iphone.txt": "I'll restart the server tonight at 22:00.",
    "reply-iphone-cs.txt": "Server restartuji dnes ve 22:00.",
    "reply-gt-not-quote.txt": (
        "Hello Alice,\n\nplease open the admin page and go to Settings\n"
        '> Users > Permissions, then tick "Export".\n\n'
        "If it still fails, send me a screenshot."
    ),
    "reply-no-quote.txt": (
        "Dobrý den,\n\nproblém je vyřešen, novou verzi najdete na https://example.test/download."
    ),
}


def fixture(name: str) -> str:
    return (DATA / name).read_text(encoding="utf-8")


def test_every_reply_fixture_has_an_expectation() -> None:
    assert sorted(p.name for p in DATA.glob("reply-*.txt")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_new_text_of_each_client(name: str) -> None:
    assert new_text(fixture(name)) == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_new_text_of_new_text_is_unchanged(name: str) -> None:
    once = new_text(fixture(name))
    assert new_text(once) == once


def test_crlf_line_endings() -> None:
    body = fixture("reply-gmail-cs.txt").replace("\n", "\r\n")
    assert new_text(body) == EXPECTED["reply-gmail-cs.txt"]


def test_gmail_header_on_one_line() -> None:
    body = "Díky, opraveno.\n\nOn Mon, Nov 23, 2026 at 10:00 AM Alice <a@x.test> wrote:\n\n> Hi\n"
    assert new_text(body) == "Díky, opraveno."


def test_line_before_a_wrapped_gmail_header_is_kept() -> None:
    body = (
        "On Monday I will call you.\n"
        "On Mon, Nov 23, 2026 at 10:00 AM Alice Smith <alice@customer.test>\n"
        "wrote:\n\n> Call me, please.\n"
    )
    assert new_text(body) == "On Monday I will call you."


def test_signature_below_the_quote_is_dropped_with_the_quote() -> None:
    body = "The fix is live.\n\n> Is it fixed?\n\n-- \nPetra Svobodová\nExample s.r.o.\n"
    assert new_text(body) == "The fix is live."


def test_interleaved_reply_keeps_the_quotes_it_answers() -> None:
    body = "> Is it fixed?\nYes, since 11:30.\n> And the export?\nThat too.\n"
    assert new_text(body) == body.rstrip()


def test_from_line_in_new_text_is_not_a_quote_header() -> None:
    body = "From: 1 December the price is 200 CZK.\nTo: all customers, the same.\n"
    assert new_text(body) == body.rstrip()


def test_closing_salutation_in_the_middle_is_kept() -> None:
    body = (
        "Installed.\n\nBest regards,\nPetra\n\n"
        "P.S. The old version keeps working until the end of the month, so you can switch "
        "whenever it suits you."
    )
    assert new_text(body) == body


def test_salutation_alone_is_kept() -> None:
    assert new_text("S pozdravem\nJan Novák\n") == "S pozdravem\nJan Novák"


def test_thanks_closing_with_comma_is_a_signature_but_thanks_sentence_is_not() -> None:
    assert new_text("Works now.\n\nThanks,\nPetra\n") == "Works now."
    assert new_text("Please send the log.\n\nThanks!\nPetra") == (
        "Please send the log.\n\nThanks!\nPetra"
    )


def test_sentence_starting_like_a_salutation_is_kept() -> None:
    body = "It is done.\n\nThank you for your patience"
    assert new_text(body) == body


@pytest.mark.parametrize(
    "text",
    [
        "Děkuji",
        "Díky!",
        "Děkujeme, funguje to.",
        "Thanks!",
        "Thank you, works now",
        "Many thanks",
        "thx",
        "DEKUJI MOC",
        "Diky moc, uz to funguje :)",
        "Thank you so much for your quick help!",
        "Díky, Petro!",
        "Děkuji,\nJan Novák",
        "Ještě jednou děkuji.",
        "Funguje to, děkuji!\n\nOdesláno z iPhonu",
        "Thanks!\n\nOn Mon, Nov 23, 2026 at 10:00 AM Petra <p@x.test> wrote:\n> Does it work?",
    ],
)
def test_only_thanks(text: str) -> None:
    assert is_only_thanks(text)


@pytest.mark.parametrize(
    "text",
    [
        "Thanks, but it still does not work",
        "Děkuji, ale pořád to nefunguje",
        "Diky, ale porad to nefunguje",
        "Thanks! Does it work on Mac too?",
        "Díky, stále to padá.",
        "Thank you. However the export is slow.",
        "Děkuji, nefunguje to.",
        "Thanks, it doesn't work",
        "Thanks in advance",
        "Předem děkuji",
        "Děkuji za odpověď. Mohli byste mi ještě poslat fakturu?",
        "Thanks. Now I need a second licence for my colleague.",
        "Thanks! Also please change our billing address to Praha 5.",
        "",
        "Hello",
    ],
)
def test_not_only_thanks(text: str) -> None:
    assert not is_only_thanks(text)


def test_has_word_on_the_first_line() -> None:
    assert has_word("SCHVALUJI", ["SCHVALUJI", "APPROVE"])
    assert has_word("Schvaluji, děkuji.\nJan", ["SCHVALUJI"])
    assert has_word("ODMÍTÁM", ["ODMITAM"])
    assert has_word("confirm\n\n> Reply CONFIRM to close the ticket.", ["POTVRZUJI", "CONFIRM"])


def test_has_word_whole_words_only() -> None:
    assert not has_word("NESCHVALUJI", ["SCHVALUJI"])
    assert not has_word("Approved", ["APPROVE"])


def test_has_word_ignores_later_lines_and_quotes() -> None:
    assert not has_word("Ok, I will think about it.\nSCHVALUJI", ["SCHVALUJI"])
    assert not has_word("> Reply APPROVE to approve the price.", ["APPROVE"])
    body = "\nOn Mon, Nov 23, 2026 at 10:00 AM Petra <p@x.test> wrote:\n> Reply APPROVE"
    assert not has_word(body, ["APPROVE"])


def test_has_word_not_after_a_negation() -> None:
    assert not has_word("I do not approve this price.", ["APPROVE"])
    assert not has_word("Don't APPROVE yet", ["APPROVE"])
    assert not has_word("NE SCHVALUJI", ["SCHVALUJI"])


def test_has_word_looks_past_a_greeting_line() -> None:
    assert has_word("Dobrý den,\nSCHVALUJI\nJan", ["SCHVALUJI"])
    assert has_word("Hello Agnes,\napprove, thanks", ["APPROVE"])
    assert not has_word("Dobrý den,\nneschvaluji", ["SCHVALUJI"])
    assert not has_word("Hello,\nI have a question first.\nApprove", ["APPROVE"])
