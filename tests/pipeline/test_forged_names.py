"""A display name is text anyone can write in a From: what it may change in mail we send.

Every mail to a customer greets them and addresses them by their stored name
(acknowledgements, relayed answers, status notices), signed by our domain. So a
forger's name must not become a customer's: only mail that proves its sender
fills in a name we lack.
"""

from __future__ import annotations

from maildesk.services import Services
from tests.conftest import make_mail
from tests.helpers import outbox_mail, outbox_rows, outbox_text, receive

ALICE = "alice@customer.test"
FORGED_NAME = "URGENT call +1 555 0100 to keep your account"


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
