"""Text a mail brings that SQLite stores but PostgreSQL refuses: NUL characters, which
no PostgreSQL text holds, and search documents past what a tsvector holds. Refused,
the mail failed at every attempt and ended in quarantine, never part of a ticket.
These run on both databases (see conftest.py).
"""

from __future__ import annotations

import random
import smtplib

import pytest

from maildesk.services import Services
from maildesk.tickets import search
from tests.conftest import Outbox, RunningDaemon, eml, make_mail
from tests.helpers import inbound_row, outbox_rows, outbox_text, receive, ticket, tickets

ALICE = "alice@customer.test"


def _mail(body: bytes, content_type: bytes, encoding: bytes = b"8bit") -> bytes:
    """make_mail's headers over a body of our own bytes."""
    head = make_mail(subject="Printer broken").split(b"\r\n\r\n")[0].split(b"\r\n")
    kept = [line for line in head if not line.lower().startswith((b"content-", b"mime-"))]
    return b"\r\n".join(
        [
            *kept,
            b"MIME-Version: 1.0",
            b"Content-Type: " + content_type,
            b"Content-Transfer-Encoding: " + encoding,
            b"",
            body,
            b"",
        ]
    )


def _acknowledged(services: Services) -> str:
    [ack] = [row for row in outbox_rows(services) if row.recipients == [ALICE]]
    return outbox_text(ack)


def test_a_utf16_body_labelled_ascii_becomes_a_ticket(services: Services) -> None:
    """A client wrote UTF-16 and called it ASCII: a NUL beside each letter. PostgreSQL
    refused the text; the mail is a ticket, its text the letters without the NULs."""
    body = "The printer prints blank pages.".encode("utf-16-le")
    spool_id = receive(services, _mail(body, b"text/plain; charset=us-ascii"))

    assert inbound_row(services, spool_id).state == "done"
    [message] = ticket(services, 1)["messages"][:1]
    assert message["body_text"].strip() == "The printer prints blank pages."
    assert "Printer broken" in _acknowledged(services)


def test_an_html_body_with_a_nul_becomes_a_ticket(services: Services) -> None:
    body = b"<p>The printer prints=00 blank pages.</p>"
    spool_id = receive(
        services, _mail(body, b"text/html; charset=utf-8", encoding=b"quoted-printable")
    )

    assert inbound_row(services, spool_id).state == "done"
    [message] = ticket(services, 1)["messages"][:1]
    assert "The printer prints blank pages." in message["body_text"]
    assert "Printer broken" in _acknowledged(services)


def test_a_message_id_holding_a_nul_is_no_id(services: Services) -> None:
    """A Message-ID with a NUL in it: PostgreSQL refused it where it is stored, and
    where a reply names it the lookup. Such an id is no id: the mail is a ticket,
    and a reply naming it beside our acknowledgement's id joins that ticket."""
    first = make_mail().replace(b"Message-ID: <", b"Message-ID: <\0")
    spool_id = receive(services, first)
    assert inbound_row(services, spool_id).state == "done"
    [ack] = [row for row in outbox_rows(services) if row.recipients == [ALICE]]

    reply = make_mail(
        subject="Re: Printer broken",
        body="Still broken.",
        In_Reply_To=ack.message_id,
        References=f"<x@customer.test> <{ack.message_id}>",
    ).replace(b"<x@customer.test>", b"<x\0@customer.test>")
    spool_id = receive(services, reply)

    assert inbound_row(services, spool_id).state == "done"
    assert len(tickets(services)) == 1
    assert [m["body_text"].strip() for m in ticket(services, 1)["messages"][2:]] == [
        "Still broken."
    ]


def test_a_bounce_quoting_an_id_with_a_nul_is_filed(services: Services) -> None:
    """A bounce of our acknowledgement whose returned headers name a Message-ID with a
    NUL beside ours: the lookup of the quoted ids failed on PostgreSQL."""
    receive(services, make_mail())
    [ack] = [row for row in outbox_rows(services) if row.recipients == [ALICE]]
    raw = eml("bounce-postfix-dsn.eml").replace(
        b"{ORIGINAL_ID}>", ack.message_id.encode() + b">\nMessage-ID: <a\0b@customer.test>", 1
    )

    spool_id = receive(services, raw, mail_from="<>")

    assert inbound_row(services, spool_id).state == "done"
    assert [m["kind"] for m in ticket(services, 1)["messages"]][-1] == "bounce"


# -- the envelope ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "mail_from",
    [b'<"mallory\x00"@evil.test>', b'<"mallory\xff"@evil.test> SMTPUTF8'],
    ids=["nul", "not-utf8"],
)
def test_a_mail_from_of_unstorable_text_is_accepted(
    daemon: RunningDaemon, outbox: Outbox, mail_from: bytes
) -> None:
    """The envelope sender is stored with the mail as it is accepted, in one commit with
    every other mail arriving then. A NUL (refused by PostgreSQL) or bytes that are no
    UTF-8 (a lone surrogate, refused by both databases) failed that commit: a 451 for
    this mail, at every try, and for the others in its commit."""
    smtp = daemon.services.settings.smtp
    with smtplib.SMTP(smtp.host, smtp.port, timeout=10) as client:
        client.ehlo()
        client.send(b"MAIL FROM:" + mail_from + b"\r\n")
        assert client.getreply()[0] == 250
        assert client.rcpt("support@example.test")[0] == 250
        code, _ = client.data(make_mail())
    assert code == 250

    [ack] = outbox.wait(1)
    assert ack["To"].addresses[0].addr_spec == ALICE
    assert tickets(daemon.services)[0]["subject"] == "Printer broken"


def test_a_return_path_with_a_nul_in_polled_mail_is_stored(services: Services) -> None:
    """Mail polled from a mailbox has no envelope of ours: its Return-Path names the
    sender's lane (inbound/lanes.py), and a NUL in it failed the store on PostgreSQL."""
    raw = b'Return-Path: <"mallory\x00"@evil.test>\r\n' + make_mail()

    spool_id = receive(services, raw, mail_from="", source="imap")

    assert inbound_row(services, spool_id).state == "done"
    assert "Printer broken" in _acknowledged(services)


# -- the search index -----------------------------------------------------------------


def test_a_mail_of_a_megabyte_of_distinct_words_is_a_ticket(services: Services) -> None:
    """9,000 distinct Hangul words: decomposed as the index folds them, 1.7 MB of distinct
    words, which PostgreSQL refused as a tsvector (it holds 1 MB). The mail is a ticket,
    found by its first words."""
    rnd = random.Random(1)
    syllables = [
        "".join(chr(0xAC00 + rnd.randrange(11172)) for _ in range(21)) for _ in range(9000)
    ]
    spool_id = receive(services, make_mail(body=" ".join(syllables)))

    assert inbound_row(services, spool_id).state == "done"
    assert "Printer broken" in _acknowledged(services)
    with services.db.transaction() as session:
        assert [hit.ticket.id for hit in search.search(session, syllables[0])] == [1]
