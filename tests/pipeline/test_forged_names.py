"""A display name is text anyone can write in a From: what it may change in mail we send.

Every mail to a customer greets them and addresses them by their stored name
(acknowledgements, relayed answers, status notices), signed by our domain. So a
forger's name must not become a customer's: only mail that proves its sender
fills in a name we lack, or replaces one that unproven mail gave; a name the
person or an admin typed no mail changes (`Person.name_source`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from maildesk.cli import main
from maildesk.clock import ManualClock
from maildesk.config import Settings
from maildesk.models import Person
from maildesk.services import Services
from maildesk.states import NameSource
from tests.conftest import make_mail, running_daemon, wait_for
from tests.helpers import (
    OUR_MTA,
    outbox_mail,
    outbox_rows,
    outbox_text,
    receive,
    ticket,
    verified_by_our_mta,
)
from tests.web.portal_client import customer, logged_in

ALICE = "alice@customer.test"
FORGED_NAME = "URGENT call +1 555 0100 to keep your account"
SIGNED_BY_HER_DOMAIN = verified_by_our_mta("customer.test")


@pytest.fixture
def config_values(config_values: dict[str, Any]) -> dict[str, Any]:
    config_values["trust"]["authserv_ids"] = [OUR_MTA]
    config_values["support"]["base_url"] = f"http://127.0.0.1:{config_values['web']['port']}"
    return config_values


def forged(services: Services, subject: str = "Hello", **headers: str) -> None:
    """Mallory writes From Alice's address with his name, over SMTP from his server."""
    mail = make_mail(sender=f'"{FORGED_NAME}" <{ALICE}>', subject=subject, **headers)
    receive(services, mail, mail_from="mallory@evil.test")


def proven(services: Services, sender: str, subject: str = "Scanner broken too") -> None:
    """Alice writes a new mail, signed by customer.test, through our MTA."""
    mail = make_mail(sender=sender, subject=subject, Authentication_Results=SIGNED_BY_HER_DOMAIN)
    receive(services, mail, source="deliver")


def _last_mail_to_alice(services: Services) -> tuple[str, str]:
    row = [r for r in outbox_rows(services) if r.recipients == [ALICE]][-1]
    return str(outbox_mail(row)["To"]), outbox_text(row)


def test_a_forged_from_does_not_name_a_customer_in_our_later_mail(services: Services) -> None:
    """Alice's client sends no display name. A stranger writes a new mail From her
    address with one of his choosing: it was stored as her name, so every later mail
    of ours to her (here the acknowledgement of her own next ticket) greeted her with
    the stranger's text, in the To and in "Hello …"."""
    receive(services, make_mail(sender=ALICE, subject="Printer broken"))
    forged = make_mail(sender=f'"{FORGED_NAME}" <{ALICE}>', subject="Hello")
    receive(services, forged, mail_from="mallory@evil.test")

    receive(services, make_mail(sender=ALICE, subject="Scanner broken too"))

    to, text = _last_mail_to_alice(services)
    assert to == ALICE
    assert FORGED_NAME not in text


def test_a_customers_proven_reply_still_brings_her_name(services: Services) -> None:
    """Her reply to our mail (its signed Reply-To: a secret of the ticket) proves her,
    and names her from then on."""
    receive(services, make_mail(sender=ALICE, subject="Printer broken"))
    reply_to = str(outbox_mail(outbox_rows(services)[0])["Reply-To"].addresses[0].addr_spec)
    receive(services, make_mail(sender=f"Alice Customer <{ALICE}>", to=reply_to, body="More."))

    receive(services, make_mail(sender=ALICE, subject="Scanner broken too"))

    to, text = _last_mail_to_alice(services)
    assert to == f"Alice Customer <{ALICE}>"
    assert "Hello Alice Customer" in text


def test_her_proven_mail_replaces_the_name_a_forgers_first_mail_gave_her(
    services: Services,
) -> None:
    """Mallory writes first, before Alice ever did: his unproven mail names her (we knew
    no better). Nothing recorded where that name came from, so her own signed mail
    did not replace it, and every mail of ours greeted her with his text."""
    forged(services)

    proven(services, f"Alice Customer <{ALICE}>")

    to, text = _last_mail_to_alice(services)
    assert to == f"Alice Customer <{ALICE}>"
    assert "Hello Alice Customer" in text and FORGED_NAME not in text


def test_her_proven_reply_without_a_name_takes_the_forgers_name_away(
    services: Services,
) -> None:
    """Her client sends no display name: her reply to our acknowledgement (its signed
    Reply-To proves her) leaves her nameless rather than named by Mallory."""
    forged(services)
    reply_to = str(outbox_mail(outbox_rows(services)[0])["Reply-To"].addresses[0].addr_spec)
    receive(services, make_mail(sender=ALICE, to=reply_to, body="I never wrote this."))

    receive(services, make_mail(sender=ALICE, subject="Scanner broken too"))

    to, text = _last_mail_to_alice(services)
    assert to == ALICE
    assert FORGED_NAME not in text


def test_unproven_mail_does_not_replace_the_name_her_proven_mail_gave(
    services: Services,
) -> None:
    """Once her signed mail named her, Mallory cannot name her again: neither by a new
    mail with an Authentication-Results of his own (our MTA did not pass it), nor by
    a reply into her ticket, nor by her own unsigned mail naming her otherwise."""
    forged(services)
    proven(services, f"Alice Customer <{ALICE}>")

    forged(services, Authentication_Results=SIGNED_BY_HER_DOMAIN)
    forged(services, subject="Re: [#2] Scanner broken too")
    receive(services, make_mail(sender=f"Alice from her phone <{ALICE}>", subject="Toner"))

    to, text = _last_mail_to_alice(services)
    assert to == f"Alice Customer <{ALICE}>"
    assert "Hello Alice Customer" in text


def _no_mail_renames(services: Services, typed: str) -> None:
    """Her signed mail (a new one, and a reply to ours) and Mallory's forged one, each
    with a display name other than `typed`; then the greeting of our next mail."""
    proven(services, f"A. Customer <{ALICE}>")
    ack = [row for row in outbox_rows(services) if row.recipients == [ALICE]][-1]
    reply_to = str(outbox_mail(ack)["Reply-To"].addresses[0].addr_spec)
    receive(services, make_mail(sender=f"Alice C. <{ALICE}>", to=reply_to, body="More."))
    forged(services)

    receive(services, make_mail(sender=ALICE, subject="Toner"))

    to, text = _last_mail_to_alice(services)
    assert to == f"{typed} <{ALICE}>"
    assert f"Hello {typed}," in text


def test_a_name_she_set_in_the_portal_is_not_replaced_by_any_mail(
    settings: Settings, clock: ManualClock, services: Services
) -> None:
    """Mallory's first mail named her; she logs in and types her name on the portal's
    name page. No mail changes it afterwards, her own signed mail included."""
    forged(services)
    customer(services, ALICE)
    with running_daemon(settings, clock) as daemon:
        browser = logged_in(daemon, ALICE)
        assert FORGED_NAME in browser.get("/account/name").text
        saved = browser.post("/account/name", {"name": " Alice Nováková\r\n"})
        assert saved.location == "/account/name?saved=1"
        assert 'value="Alice Nováková"' in browser.get("/account/name").text

    _no_mail_renames(services, "Alice Nováková")


def test_a_name_an_admin_set_is_not_replaced_by_any_mail(
    services: Services, config_file: Path
) -> None:
    """Mallory's first mail named her; an admin sets her name (`maildesk people name`).
    No mail changes it afterwards, her own signed mail included."""
    forged(services)

    def run(*args: str) -> str:
        done = CliRunner().invoke(main, ["--config", str(config_file), "people", *args])
        assert done.exit_code == 0, done.output
        return done.stdout

    run("name", ALICE, "Alice Customer")
    [listed] = json.loads(run("list", "--json"))
    assert (listed["name"], listed["name_source"]) == ("Alice Customer", "set")

    _no_mail_renames(services, "Alice Customer")


def test_an_admin_hands_a_set_name_back_to_proven_mail(
    services: Services, config_file: Path
) -> None:
    """An admin typed a wrong name (`people name`); `people name --from-mail` hands it
    back: it stays until Alice's signed mail brings hers, and Mallory's forged mail
    still names nobody."""

    def run(*args: str, code: int = 0) -> str:
        done = CliRunner().invoke(main, ["--config", str(config_file), "people", *args])
        assert done.exit_code == code, done.output
        return done.output

    def named() -> tuple[str, str]:
        [listed] = json.loads(run("list", "--json"))
        return listed["name"], listed["name_source"]

    proven(services, f"Alice Customer <{ALICE}>")
    run("name", ALICE, "Alice Wrong")
    assert "either NAME or --from-mail" in run("name", ALICE, code=2)
    assert "either NAME or --from-mail" in run("name", ALICE, "X", "--from-mail", code=2)
    assert named() == ("Alice Wrong", "set")

    assert "until proven mail names them" in run("name", ALICE, "--from-mail")
    assert named() == ("Alice Wrong", "unproven")
    forged(services)  # a stranger's From still names nobody
    assert named() == ("Alice Wrong", "unproven")
    to, text = _last_mail_to_alice(services)
    assert to == f"Alice Wrong <{ALICE}>" and "Hello Alice Wrong," in text

    proven(services, f"Alice Nováková <{ALICE}>")
    assert named() == ("Alice Nováková", "proven")
    to, text = _last_mail_to_alice(services)
    assert to == f"Alice Nováková <{ALICE}>" and "Hello Alice Nováková," in text


def test_a_display_name_longer_than_a_stored_name_is_cut_not_refused(
    services: Services,
) -> None:
    """A From's display name of 300 characters: PostgreSQL refused the person's row
    (a name holds 200), so the stranger's mail failed at each attempt and ended in
    quarantine. It is a ticket, its sender named by the first 200 characters."""
    long_name = "Ž" * 300
    receive(services, make_mail(sender=f'"{long_name}" <{ALICE}>', subject="Long name"))

    to, text = _last_mail_to_alice(services)
    assert to.count("Ž") == 200 and to.endswith(f"<{ALICE}>")
    assert "Long name" in text


def test_a_portal_reply_does_not_make_the_name_a_forger_gave_her_hers(
    settings: Settings, clock: ManualClock, services: Services
) -> None:
    """Proven mail that repeats the name we hold makes it hers. A portal reply is proven
    (she logged in) but written From the name we hold, not one she gave: it made
    Mallory's name hers, and every later mail of ours named her by it."""
    forged(services)
    customer(services, ALICE)
    with running_daemon(settings, clock) as daemon:
        alice = logged_in(daemon, ALICE)
        alice.get("/tickets/1")
        assert alice.post("/tickets/1/reply", {"text": "I never wrote this."}).status == 303

        def replied() -> bool:
            return any("I never wrote" in m["body_text"] for m in ticket(services, 1)["messages"])

        wait_for(replied, what="the portal reply in ticket 1")

    with services.db.reading() as session:
        source = session.scalar(select(Person.name_source).where(Person.email == ALICE))
    assert source == NameSource.UNPROVEN
