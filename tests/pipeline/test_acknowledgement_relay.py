"""Our acknowledgement as a stranger's relay: what mail that proved nothing makes us send.

Anyone can send a first mail From any address. We acknowledge it to that address,
signed by our domain, so a stranger who writes From "Call +1 555 0100" <victim@…>
with the subject "Your account is locked, call +1 555 0100" had us deliver that text
to the victim, with our domain's good name on it (help desks have been used as spam
relays this way). Unless its mail proves its sender, a new ticket's acknowledgement
now says only that a request came from this address, under which number.

Runs on SQLite, and on PostgreSQL when MAILDESK_TEST_DATABASE_URL is set.
"""

from __future__ import annotations

from email.message import EmailMessage
from typing import Any

import pytest
from sqlalchemy import select

from maildesk.models import Ticket
from maildesk.services import Services
from tests.conftest import make_mail
from tests.helpers import (
    OUR_MTA,
    outbox_mail,
    outbox_rows,
    outbox_text,
    receive,
    verified_by_our_mta,
)

VICTIM = "victim@customer.test"
LURE = "Your account is locked, call +1 555 0100"
LURE_NAME = "Security Team: call +1 555 0100"
SIGNED = verified_by_our_mta("customer.test")


@pytest.fixture
def config_values(config_values: dict[str, Any]) -> dict[str, Any]:
    config_values["trust"]["authserv_ids"] = [OUR_MTA]
    config_values["trust"]["echo_unproven"] = False  # the default (the suite's is True)
    return config_values


def _acknowledgement(services: Services) -> tuple[EmailMessage, str, str]:
    """The last mail to the victim: parsed, its text part, and everything a reader
    can see of it decoded (every header and every text part)."""
    row = [r for r in outbox_rows(services) if r.recipients == [VICTIM]][-1]
    assert row.kind == "acknowledgement"
    mail = outbox_mail(row)
    seen = [f"{name}: {value}" for name, value in mail.items()]
    seen += [
        str(part.get_content()) for part in mail.walk() if part.get_content_maintype() == "text"
    ]
    return mail, outbox_text(row), "\n".join(seen)


def _lure(**headers: str) -> bytes:
    return make_mail(sender=f'"{LURE_NAME}" <{VICTIM}>', subject=LURE, **headers)


def test_unproven_mail_gets_an_acknowledgement_without_its_words(services: Services) -> None:
    receive(services, _lure(), mail_from="mallory@evil.test")

    mail, text, seen = _acknowledgement(services)
    assert mail["Subject"] == "[#1] Your request"
    assert str(mail["To"]) == VICTIM
    assert mail["Thread-Topic"] is None
    assert "locked" not in seen and "0100" not in seen and "Security" not in seen
    assert text.splitlines()[0] == "Hello,"
    assert "request sent from your address" in text and "[#1]" in text
    assert "If you did not write to us" in text
    with services.db.reading() as session:  # the agents still see what was written
        assert session.scalars(select(Ticket.subject)).all() == [LURE]


def test_proven_mail_is_acknowledged_in_its_own_words(services: Services) -> None:
    receive(services, _lure(Authentication_Results=SIGNED), source="deliver")

    mail, text, seen = _acknowledgement(services)
    assert mail["Subject"] == f"[#1] {LURE}"
    assert mail["Thread-Topic"] == LURE
    assert str(mail["To"]) == f'"{LURE_NAME}" <{VICTIM}>'
    assert f"Hello {LURE_NAME}," in text and f'"{LURE}"' in text
    assert "If you did not write to us" not in text


def test_a_name_proven_before_still_greets_her_in_an_unproven_mails_acknowledgement(
    services: Services,
) -> None:
    """Her signed mail named her; her next mail proves nothing (another client, or a
    stranger): its acknowledgement greets her by her own name, not its subject."""
    receive(
        services,
        make_mail(sender=f"Vera Victim <{VICTIM}>", Authentication_Results=SIGNED),
        source="deliver",
    )
    receive(services, _lure(), mail_from="mallory@evil.test")

    mail, text, seen = _acknowledgement(services)
    assert mail["Subject"] == "[#2] Your request"
    assert str(mail["To"]) == f"Vera Victim <{VICTIM}>"
    assert text.splitlines()[0] == "Hello Vera Victim,"
    assert "locked" not in seen and "0100" not in seen


def test_czech_acknowledgement_of_unproven_mail(services: Services) -> None:
    lure = make_mail(
        sender=f'"{LURE_NAME}" <{VICTIM}>',
        subject="Váš účet je zablokován, volejte +420 555 0100",
        body="Dobrý den, váš účet byl zablokován. Zavolejte nám prosím co nejdříve.",
        Content_Language="cs",
    )
    receive(services, lure, mail_from="mallory@evil.test")

    mail, text, seen = _acknowledgement(services)
    assert mail["Subject"] == "[#1] Váš požadavek"
    assert text.splitlines()[0] == "Dobrý den,"
    assert "požadavek odeslaný z vaší adresy" in text
    assert "0100" not in seen and "volejte" not in seen and "Security" not in seen


class TestWhenTheDeskEchoesUnprovenMail:
    """`[trust] echo_unproven = true`: the acknowledgement as before this change, for a
    desk whose customers' mail proves nothing and who accepts the relay's risk."""

    @pytest.fixture
    def config_values(self, config_values: dict[str, Any]) -> dict[str, Any]:
        config_values["trust"]["echo_unproven"] = True
        return config_values

    def test_the_subject_and_name_are_repeated(self, services: Services) -> None:
        receive(services, _lure(), mail_from="mallory@evil.test")

        mail, text, _ = _acknowledgement(services)
        assert mail["Subject"] == f"[#1] {LURE}"
        assert f"Hello {LURE_NAME}," in text


def test_a_withheld_acknowledgement_repeats_no_id_of_the_mail(services: Services) -> None:
    """A Message-ID and References are words the stranger chose too: written as
    "<Your.account.is.locked.call.1-555-0100@…>", they went back in In-Reply-To and
    References of the acknowledgement, under our signature."""
    lure = "<Your.account.is.locked.call.1-555-0100.now@evil.test>"
    refs = " ".join(f"<Visit.evil-bank.example.step{n}@evil.test>" for n in range(20))
    raw = make_mail(sender=VICTIM, subject=LURE, message_id=lure, References=refs)
    receive(services, raw, mail_from="mallory@evil.test")

    mail, _text, seen = _acknowledgement(services)
    assert mail["In-Reply-To"] is None and mail["References"] is None
    assert "1-555-0100" not in seen and "evil-bank" not in seen
