"""Parsing real mail: odd shapes, Czech charsets, attachments, mail without a Message-ID."""

from __future__ import annotations

import base64
import binascii
import email
import email.policy
import hashlib
import random
import tracemalloc
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import mailparser
import pytest
from sqlalchemy import func, select

from maildesk import base64runs, config
from maildesk.clock import ManualClock
from maildesk.message import ParsedAttachment, UnparseableMessage, parse
from maildesk.models import Attachment, Blob, Inbound, Message
from maildesk.services import Services, build
from tests.conftest import DATA, eml
from tests.helpers import inbound_row, outbox_rows, receive, ticket, tickets

# CPython's own email test corpus: decades of odd real-world and hand-made shapes.
CORPUS = Path("/root/.pyenv/versions/3.11.7/lib/python3.11/test/test_email/data")

# The corpus files maildesk cannot turn into a ticket, and why.
CORPUS_QUARANTINED = {
    "msg_05.txt": "From is not a valid address",  # From: foo (a DSN from a test rig)
    "msg_11.txt": "no From header",
    "msg_16.txt": "bounce for no message maildesk sent",  # a DSN from postmaster@ucla.edu
    "msg_18.txt": "no From header",
    "msg_19.txt": "no From header",
    "msg_25.txt": "bounce for no message maildesk sent",  # a Postfix DSN
    "msg_37.txt": "no From header",
    "msg_38.txt": "no From header",
    "msg_39.txt": "no From header",
    "msg_40.txt": "no From header",
    "msg_43.txt": "From is not a valid address",  # From: MAILER DAEMON <> (a virus scanner)
}
# Variants of an earlier file with its Message-ID, sender and text (or, without a
# Message-ID, the same sender, date, subject and text): the same message again, stored
# once. msg_14 and msg_44 reuse an earlier file's Message-ID and sender with another
# text: kept, each under an id of its own.
CORPUS_DUPLICATES = {
    "msg_03.txt": "msg_01.txt",
    "msg_09.txt": "msg_08.txt",
    "msg_12.txt": "msg_08.txt",
    "msg_12a.txt": "msg_08.txt",
    "msg_20.txt": "msg_01.txt",
    "msg_29.txt": "msg_01.txt",
    "msg_30.txt": "msg_28.txt",
}

CZECH = "Dobrý den, tiskárna nefunguje"


def stdlib_parts(raw: bytes) -> list[EmailMessage]:
    """Attachments as the stdlib's strict parser reads them: the reference to compare with."""
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return list(msg.iter_attachments())


def count(services: Services, model: type) -> int:
    with services.db.transaction() as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


def blob(services: Services, sha256: str) -> bytes:
    with services.db.transaction() as session:
        found = session.get(Blob, sha256)
        assert found is not None
        return found.data


# -- the CPython corpus --------------------------------------------------------------------------


def test_cpython_email_corpus_goes_through_without_an_escaping_exception(
    services: Services,
) -> None:
    files = sorted(CORPUS.glob("msg_*.txt"))
    assert len(files) == 48
    spool = {path.name: receive(services, path.read_bytes()) for path in files}

    rows = {name: inbound_row(services, spool_id) for name, spool_id in spool.items()}
    # No message crashed the pipeline: none is waiting for a retry or carries a traceback.
    assert {name for name, row in rows.items() if row.state == "pending" or row.error} == set()
    quarantined = {name: row.reason for name, row in rows.items() if row.state == "quarantined"}
    assert quarantined == CORPUS_QUARANTINED
    duplicates = {name for name, row in rows.items() if row.state == "duplicate"}
    assert duplicates == set(CORPUS_DUPLICATES)
    done = {name for name, row in rows.items() if row.state == "done"}
    assert (len(done), len(duplicates), len(quarantined)) == (30, 7, 11)

    with services.db.transaction() as session:
        filed = dict(
            session.execute(
                select(Inbound.id, Message.message_id).join(
                    Message, Message.inbound_id == Inbound.id
                )
            ).all()
        )
    # Every processed file is a message in a ticket; every duplicate names one that is.
    assert {name for name in done if spool[name] in filed} == done
    assert set(CORPUS_DUPLICATES.values()) <= done
    with services.db.transaction() as session:
        inbound = session.scalar(
            select(func.count()).select_from(Message).where(Message.direction == "in")
        )
    assert inbound == len(done)


# -- charsets ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["czech-iso-8859-2-8bit.eml", "html-only-windows-1250.eml"])
def test_czech_mail_in_legacy_charsets_reads_as_czech(services: Services, fixture: str) -> None:
    receive(services, eml(fixture), mail_from="jiri.stastny@customer.test")

    [only] = tickets(services)
    assert only["subject"] == "Tiskárna ve 2. patře"
    assert only["requester_name"] == "Jiří Šťastný"
    messages = ticket(services, 1)["messages"]
    [customer] = [m for m in messages if m["direction"] == "in"]
    assert CZECH in customer["body_text"]
    assert "Jiří Šťastný" in customer["body_text"]
    [ack] = [m for m in messages if m["kind"] == "acknowledgement"]
    assert ack["to"] == ["jiri.stastny@customer.test"]


def test_html_only_mail_gets_a_readable_text_body(services: Services) -> None:
    receive(services, eml("html-only-windows-1250.eml"), mail_from="jiri.stastny@customer.test")

    text = ticket(services, 1)["messages"][0]["body_text"]
    # One line per paragraph (&nbsp; read as a space), no markup, no style sheet.
    lines = [" ".join(line.split()) for line in text.splitlines() if line.strip()]
    assert lines == [
        "Dobrý den, tiskárna nefunguje.",
        "Po zapnutí hlásí chybu č. 49 a papír zůstane uvnitř.",
        "S pozdravem",
        "Jiří Šťastný",
    ]
    for markup in ("<", ">", "&nbsp;", "&", "MsoNormal", "Calibri", "margin"):
        assert markup not in text


# -- attachments ---------------------------------------------------------------------------------

ATTACHMENTS = {
    # Thunderbird: base64 PDF, RFC 2231 filename in two UTF-8 continuations.
    "attachment-pdf-czech-filename.eml": ("faktura č. 2025-118 říjen.pdf", "application/pdf"),
    # Outlook: quoted-printable windows-1250 log, RFC 2047 filename.
    "attachment-text-windows-1250-qp.eml": ("chybový záznam.txt", "text/plain"),
}


@pytest.mark.parametrize("fixture", sorted(ATTACHMENTS))
def test_attachment_comes_back_byte_identical_with_its_czech_name(
    services: Services, fixture: str
) -> None:
    raw = eml(fixture)
    [reference] = stdlib_parts(raw)
    data = reference.get_payload(decode=True)
    assert isinstance(data, bytes) and len(data) > 100
    filename, content_type = ATTACHMENTS[fixture]
    assert reference.get_filename() == filename  # the fixture says what we think it says

    receive(services, raw)

    [attachment] = ticket(services, 1)["messages"][0]["attachments"]
    assert attachment == {
        "filename": filename,
        "content_type": content_type,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    assert blob(services, attachment["sha256"]) == data


def test_a_file_name_turned_around_by_bidi_controls_shows_its_real_extension() -> None:
    """A right-to-left override in a file's name showed `invoice<U+202E>fdp.exe` to an
    agent as `invoiceexe.pdf`: a program dressed as a PDF. Names and subjects could be
    turned around the same way. The controls are dropped; the letters stay in order."""
    mail = EmailMessage()
    mail["From"] = "\u202eecilA <alice@customer.test>"
    mail["Subject"] = "Invoice \u2067overdue\u2069 \u202dnow"
    mail.set_content("The invoice.")
    mail.add_attachment(b"MZ\x90\x00", maintype="application", subtype="octet-stream",
                        filename="invoice\u202efdp.exe")  # fmt: skip

    parsed = parse(mail.as_bytes())

    assert [a.filename for a in parsed.attachments] == ["invoicefdp.exe"]
    assert (parsed.from_name, parsed.subject) == ("ecilA", "Invoice overdue now")


def test_the_same_attachment_in_two_messages_is_stored_once(services: Services) -> None:
    first = eml("attachment-pdf-czech-filename.eml")
    # Alice sends the invoice again a day later, as a new mail.
    again = first.replace(
        b"Message-ID: <8a2c4e6f-1b3d-4f5a-9c7e-2d4f6a8b0c1e@customer.test>",
        b"Message-ID: <3f9e1d7b-5a2c-4e8f-b6d4-0c2a4e6f8b1d@customer.test>",
    ).replace(b"Date: Mon, 5 Jan 2026 15:30:40 +0100", b"Date: Tue, 6 Jan 2026 09:02:13 +0100")
    assert again != first

    receive(services, first)
    receive(services, again)

    assert len(tickets(services)) == 2
    shas = {ticket(services, n)["messages"][0]["attachments"][0]["sha256"] for n in (1, 2)}
    assert len(shas) == 1
    assert count(services, Attachment) == 2
    assert count(services, Blob) == 1


# -- mail without a Message-ID -------------------------------------------------------------------


def test_mail_without_message_id_delivered_twice_is_stored_once(services: Services) -> None:
    raw = eml("no-message-id.eml")
    first = receive(services, raw, source="imap")
    # The same mail by a second route: one more Received line on top.
    second = receive(
        services,
        b"Received: from mx2.example.test (mx2.example.test [192.0.2.26])\n"
        b"\tby mail.example.test (Postfix) with ESMTP id 4dK9C3n1Bz4eH2\n"
        b"\tfor <support@example.test>; Mon,  5 Jan 2026 13:45:14 +0100 (CET)\n" + raw,
        mail_from="www-data@web1.customer.test",
    )

    assert (inbound_row(services, first).state, inbound_row(services, second).state) == (
        "done",
        "duplicate",
    )
    [only] = tickets(services)
    assert only["requester"] == "jan.dvorak@customer.test"
    messages = ticket(services, 1)["messages"]
    assert [m["direction"] for m in messages].count("in") == 1
    assert [row.kind for row in outbox_rows(services)].count("acknowledgement") == 1


def test_scans_without_message_id_that_differ_only_in_the_attachment_are_both_kept(
    services: Services,
) -> None:
    """A scanner sending one mail per page, same second, same text: two documents."""
    page1 = receive(services, eml("scan-to-email-no-message-id-page1.eml"))
    page2 = receive(services, eml("scan-to-email-no-message-id-page2.eml"))

    assert (inbound_row(services, page1).state, inbound_row(services, page2).state) == (
        "done",
        "done",
    )
    names = [
        a["filename"]
        for t in tickets(services)
        for m in ticket(services, t["number"])["messages"]
        for a in m["attachments"]
    ]
    assert names == ["scan_20260105_154011_001.pdf", "scan_20260105_154011_002.pdf"]
    assert count(services, Blob) == 2


def test_language_hints_content_language_then_accept_language() -> None:
    from maildesk.message import parse

    def mail(headers: str) -> bytes:
        return (
            f"From: a@customer.test\r\nTo: support@example.test\r\n{headers}"
            "Subject: x\r\n\r\nbody\r\n"
        ).encode()

    assert parse(mail("Content-Language: cs-CZ\r\nAccept-Language: en-US\r\n")).language == "cs"
    assert parse(mail("Accept-Language: en-US, cs;q=0.8\r\n")).language == "en"
    assert parse(mail("Content-Language: de\r\n")).language is None


# -- large messages ------------------------------------------------------------------------------
# A long base64 body reaches the stdlib parser as one marker line and is decoded from the raw
# bytes (maildesk/base64runs.py, bench/memory.py): what a reader gets must not change.

LOG_LINE = "2026-01-05 15:30:40 tiskárna nefunguje, chyba 0x1f na řádku {}\n"


def large_mail(data: bytes, forwarded: bool = False) -> bytes:
    mail = EmailMessage()
    mail["From"] = "alice@customer.test"
    mail["To"] = "support@example.test"
    mail["Subject"] = "Logy z tiskárny"
    mail["Message-ID"] = "<large-logs@customer.test>"
    mail.set_content("Dobrý den, posílám logy z tiskárny.")
    if forwarded:
        inner = EmailMessage()
        inner["From"] = "printer@customer.test"
        inner["Subject"] = "Nightly logs"
        inner.set_content("Attached.")
        inner.add_attachment(data, "application", "octet-stream", filename="logs.bin")
        mail.add_attachment(inner)
    else:
        mail.add_attachment(data, "application", "octet-stream", filename="logs.bin")
    return mail.as_bytes().replace(b"\n", b"\r\n")


AGENT = "agent@example.test"


def logs_arrived(services: Services, data: bytes) -> None:
    """The mail of `large_mail` is in ticket 1 with `data` as logs.bin, intact, and the
    agent's notice carries the file."""
    [message] = [m for m in ticket(services, 1)["messages"] if m["direction"] == "in"]
    assert message["body_text"].startswith("Dobrý den, posílám logy")
    [attachment] = message["attachments"]
    assert attachment == {
        "filename": "logs.bin",
        "content_type": "application/octet-stream",
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    assert blob(services, attachment["sha256"]) == data
    [notice] = [row for row in outbox_rows(services) if row.recipients == [AGENT]]
    [forwarded] = stdlib_parts(notice.raw)
    assert forwarded.get_filename() == "logs.bin"
    assert forwarded.get_payload(decode=True) == data


@pytest.fixture
def with_agent(
    config_values: dict[str, Any], tmp_path: Path, clock: ManualClock
) -> Iterator[Services]:
    """`services` with one agent, who is notified of new tickets with their attachments."""
    values = {**config_values, "agents": {"addresses": [AGENT]}, "workers": {"count": 0}}
    built = build(config.from_mapping(values, base_dir=tmp_path), clock)
    built.prepare()
    yield built
    built.db.dispose()


def test_a_large_attachment_arrives_byte_identical_and_reaches_the_agent(
    with_agent: Services,
) -> None:
    services = with_agent
    # Random bytes do not compress: 4 MB of base64, four times the length at which
    # the body is decoded from the raw bytes.
    data = hashlib.shake_256(b"printer logs").digest(3 * 1024 * 1024)
    receive(services, large_mail(data))

    logs_arrived(services, data)


def test_a_large_text_body_in_base64_reads_as_text() -> None:
    from maildesk.message import parse

    text = "".join(LOG_LINE.format(n) for n in range(30_000))  # 2 MB, 2.7 MB as base64
    mail = EmailMessage()
    mail["From"] = "alice@customer.test"
    mail["Subject"] = "Logy"
    mail.set_content(text, cte="base64")

    parsed = parse(mail.as_bytes().replace(b"\n", b"\r\n"))

    # Past a million characters the text is its head, and the whole is kept as a file.
    assert parsed.text == text[:1_000_000]
    assert parsed.attachments == (ParsedAttachment("message.txt", "text/plain", text.encode()),)


def test_a_forwarded_mail_with_a_large_attachment_keeps_both() -> None:
    """The forwarded mail is an attachment itself (flattened to text), and so is its file."""
    from maildesk.message import parse

    data = hashlib.shake_256(b"nightly logs").digest(2 * 1024 * 1024)
    raw = large_mail(data, forwarded=True)
    [reference] = stdlib_parts(raw)

    parsed = parse(raw)

    rfc822, logs = parsed.attachments
    assert rfc822.content_type == "message/rfc822"
    # The flattened mail carries the base64 text as it came (compat32 writes \n line ends).
    inner = reference.get_content().as_bytes().replace(b"\r\n", b"\n")
    assert inner.split(b"\n\n", 1)[1] in rfc822.data.replace(b"\r\n", b"\n")
    assert (logs.filename, logs.data) == ("logs.bin", data)


def uuencoded(data: bytes, name: bytes = b"logs.bin") -> bytes:
    """`data` as uuencode writes a file: a begin line, 45 bytes a line, an end line."""
    lines = (binascii.b2a_uu(data[at : at + 45], backtick=True) for at in range(0, len(data), 45))
    return b"begin 644 " + name + b"\n" + b"".join(lines) + b"`\nend\n"


def uuencoded_mail(data: bytes) -> bytes:
    """A mail with a file attached uuencoded, as some older mail clients attach one."""
    return (
        b"From: alice@customer.test\nTo: support@example.test\nSubject: Logy z tiskarny\n"
        b"Message-ID: <uuencoded-logs@customer.test>\nMIME-Version: 1.0\n"
        b"Content-Type: multipart/mixed; boundary=B\n\n--B\n"
        b"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
        + "Dobrý den, posílám logy z tiskárny.\n".encode()
        + b"--B\nContent-Type: application/octet-stream; name=logs.bin\n"
        b"Content-Transfer-Encoding: x-uuencode\n\n" + uuencoded(data) + b"--B--\n"
    ).replace(b"\n", b"\r\n")


def test_a_large_uuencoded_attachment_reaches_the_agent_and_costs_the_file_once(
    with_agent: Services,
) -> None:
    """The stdlib decodes a uuencoded body as a list of lines, each decoded to an object of
    its own, then joined; mail-parser encoded the result in base64 again for maildesk to
    decode: a 24 MB mail held 163 MB at once while it was parsed, its worker 266 MB
    (`bench/memory.py --uuencode`). It is decoded from the raw bytes a line at a time now."""
    services = with_agent
    data = hashlib.shake_256(b"uuencoded logs").digest(3 * 1024 * 1024)
    raw = uuencoded_mail(data)

    # The file once and a little: it was 9.8 times the file.
    assert _peak_bytes_of_parse(raw) < 1.5 * len(data)

    receive(services, raw)
    logs_arrived(services, data)


def test_a_large_text_file_in_8_bits_reaches_the_agent_as_it_came_and_costs_it_once(
    with_agent: Services,
) -> None:
    """A log file attached as text in 8-bit UTF-8 (as mail clients attach text): the stdlib
    kept it as a str per line, joined them, encoded that, and mail-parser made base64 of
    the bytes for maildesk to decode: 5 times the file while parsed, a worker 213 MB for a
    23 MB file (`bench/memory.py --eightbit`). Its bytes are read from the raw mail now."""
    services = with_agent
    lines = (f"10:00:{n % 60:02d} tiskárna: stránka {n} prázdná\r\n" for n in range(70_000))
    data = "".join(lines).encode()
    raw = (
        b"From: alice@customer.test\r\nTo: support@example.test\r\nSubject: Logy\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        + "Dobrý den, posílám logy z tiskárny.\r\n".encode()
        + b"--B\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit"
        b"\r\nContent-Disposition: attachment; filename=logs.txt\r\n\r\n" + data + b"\r\n--B--\r\n"
    )
    assert len(data) > 2 * base64runs.MIN_RUN

    # The file once and a little: it was 5.2 times the file.
    assert _peak_bytes_of_parse(raw) < 1.5 * len(data)

    receive(services, raw)
    [message] = [m for m in ticket(services, 1)["messages"] if m["direction"] == "in"]
    assert message["body_text"].startswith("Dobrý den, posílám logy")
    [attachment] = message["attachments"]
    assert (attachment["filename"], attachment["size"]) == ("logs.txt", len(data))
    assert blob(services, attachment["sha256"]) == data  # its CRLF line ends and all
    [notice] = [row for row in outbox_rows(services) if row.recipients == [AGENT]]
    [sent] = stdlib_parts(notice.raw)
    assert (sent.get_filename(), sent.get_payload(decode=True)) == ("logs.txt", data)


def forwarded_large_mail(data: bytes, times: int) -> bytes:
    """`large_mail(data)` forwarded as an attachment `times` times over, each forward
    attaching the one before."""
    raw = large_mail(data).replace(b"\r\n", b"\n")
    for n in range(times):
        raw = (
            (
                b"From: bob@customer.test\nTo: support@example.test\nSubject: Fwd: Logy\n"
                b"Message-ID: <forward%d@customer.test>\nMIME-Version: 1.0\n"
                b"Content-Type: multipart/mixed; boundary=F%d\n\n--F%d\n"
                b"Content-Type: text/plain\n\nThe logs, see below.\n--F%d\n"
                b"Content-Type: message/rfc822\nContent-Disposition: attachment; filename=fwd%d.eml"
                b"\n\n" % (n, n, n, n, n)
            )
            + raw
            + b"\n--F%d--\n" % n
        )
    return raw.replace(b"\n", b"\r\n")


def test_a_mail_forwarded_inside_a_forward_costs_little_more_than_its_files(
    with_agent: Services,
) -> None:
    """mail-parser flattens each forwarded mail marked as an attachment to text, the ones
    inside it too (the guard lets two such levels through: MAX_FLATTENED), and the file's
    long base64 was put back as text in each first: a 24 MB mail forwarded inside another
    held 140 MB at once while it was parsed, its worker 242 MB (`bench/memory.py
    --forwarded 2`). The flattened text holds the file's marker now, and only the copy
    kept is put back together, as bytes, from the raw bytes."""
    services = with_agent
    data = hashlib.shake_256(b"forwarded logs").digest(3 * 1024 * 1024)
    raw = forwarded_large_mail(data, 2)

    parsed = parse(raw)
    outer, logs = parsed.attachments
    assert (outer.filename, outer.content_type) == ("fwd1.eml", "message/rfc822")
    # The forwarded mail byte for byte as the stdlib writes it out (compat32: \n line ends).
    attached = email.message_from_bytes(raw).get_payload()[1].get_payload(0)
    assert outer.data == attached.as_string().encode("utf-8", "surrogateescape")
    assert (logs.filename, logs.data) == ("logs.bin", data)
    # About the files it keeps: it was 3.5 times as much.
    assert _peak_bytes_of_parse(raw) < 1.25 * (len(outer.data) + len(logs.data))

    receive(services, raw)
    [message] = [m for m in ticket(services, 1)["messages"] if m["direction"] == "in"]
    assert [(a["filename"], a["size"]) for a in message["attachments"]] == [
        ("fwd1.eml", len(outer.data)),
        ("logs.bin", len(data)),
    ]
    assert blob(services, message["attachments"][1]["sha256"]) == data
    [notice] = [row for row in outbox_rows(services) if row.recipients == [AGENT]]
    files = {part.get_filename(): part for part in stdlib_parts(notice.raw)}
    assert files["logs.bin"].get_payload(decode=True) == data
    assert "fwd1.eml" in files


def _mixed(*parts: bytes, boundary: bytes = b"B") -> bytes:
    body = b"".join(b"--" + boundary + b"\n" + part for part in parts)
    return (
        b"From: alice@customer.test\nSubject: logs\nMIME-Version: 1.0\n"
        b"Content-Type: multipart/mixed; boundary=" + boundary + b"\n\n" + body
        + b"--" + boundary + b"--\n"
    )  # fmt: skip


def _attached(mail: bytes, n: int = 0) -> bytes:
    return _mixed(
        b"Content-Type: text/plain\n\nsee\n",
        b"Content-Type: message/rfc822\nContent-Disposition: attachment; filename=f.eml\n\n"
        + mail + b"\n",
        boundary=b"F%d" % n,
    )  # fmt: skip


_FILE = hashlib.shake_256(b"run shapes").digest(3000)
_UU = (
    b"Content-Type: application/octet-stream; name=a.bin\nContent-Transfer-Encoding: x-uuencode\n\n"
)
_BASE64 = (
    b"Content-Type: application/pdf\nContent-Disposition: attachment; filename=a.pdf\n"
    b"Content-Transfer-Encoding: base64\n\n" + base64.encodebytes(_FILE)
)
_TEXT = b"Content-Type: text/plain; charset=utf-8\n\nP\xc5\x99\xc3\xadloha\n"
_LOG = "".join(f"Tiskárna hlásí chybu 0x{b:02x} na řádku {n}.\n" for n, b in enumerate(_FILE[:150]))
# Text lines of every kind a run of any text meets: blank ones, 8-bit ones, one that
# starts `From `, a field, an indented one, a rule of dashes and a lone CR (which the
# parser reads as a line end: no run goes past it).
_NOTES = "\n".join(
    [_LOG[:2000], "", "From the printer's log:", "Status: jammed", "  indented", "",
     _LOG[2000:4000], "-- cut here --", _LOG[4000:], "a lone\rCR", _LOG[:3000]]
).encode()  # fmt: skip


# A log whose every line reads as a header field (`10:00: …`).
_FIELDS = "".join(f"10:00:{n % 60:02d} tiskárna: řádek {n}\n" for n in range(80)).encode()


def _text_file(headers: bytes, body: bytes = _NOTES) -> bytes:
    return b"Content-Type: text/plain; charset=utf-8\n" + headers + b"\n" + body


_NAMED_TEXT = (
    b"Content-Disposition: attachment; filename=notes.txt\nContent-Transfer-Encoding: 8bit\n"
)
# Each shape's runs are far above the lowered MIN_RUN; the stdlib path is the reference.
RUN_SHAPES = {
    "a text file in 8 bits": _mixed(_TEXT, _text_file(_NAMED_TEXT)),
    "a text file named only, in no transfer encoding": _mixed(
        b"Content-Type: text/x-log; name=notes.log\n\n" + _NOTES
    ),
    "a text file whose name decodes to nothing": _mixed(
        _text_file(b"Content-Disposition: foo; filename==?utf-8?q??=\n")
    ),
    "a text file inline, read as text too": _mixed(
        _text_file(b"Content-Disposition: inline; filename=notes.txt\n")
    ),
    "a text file in latin-2, in binary": _mixed(
        _text_file(
            _NAMED_TEXT.replace(b"8bit", b"binary"),
            _NOTES.decode().encode("iso-8859-2", "replace"),
        ).replace(b"utf-8", b"iso-8859-2")
    ),
    "a text file that is no UTF-8": _mixed(
        _text_file(_NAMED_TEXT, _NOTES.replace(b"\xc5", b"\xff"))
    ),
    "a text file in quoted-printable": _mixed(
        _text_file(_NAMED_TEXT.replace(b"8bit", b"quoted-printable"))
    ),
    "a text file ending in blank lines": _mixed(_text_file(_NAMED_TEXT, _NOTES + b"\n\n\n")),
    "a text file right after its fields": _mixed(_text_file(_NAMED_TEXT[:-1] + b"\n", _NOTES)),
    "an HTML file and a text file": _mixed(
        b"Content-Type: text/html\nContent-Disposition: attachment; filename=a.html\n\n<p>"
        + _NOTES
        + b"</p>\n",
        _text_file(_NAMED_TEXT),
    ),
    "a log whose every line reads as a field": _mixed(_text_file(_NAMED_TEXT, _FIELDS)),
    "such a log in a forwarded mail": _attached(_mixed(_text_file(_NAMED_TEXT, _FIELDS))),
    "such a log right after its part's fields, then a file": _mixed(
        _text_file(_NAMED_TEXT[:-1], _FIELDS), _text_file(_NAMED_TEXT)
    ),
    "such a log as a mail's fields": _mixed(b"Content-Type: message/rfc822\n\n" + _FIELDS),
    "a long text body in 8 bits": (
        b"From: alice@customer.test\nSubject: logs\nMIME-Version: 1.0\n"
        b"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n" + _NOTES
    ),
    "a long text body in latin-2": (
        b"From: alice@customer.test\nSubject: logs\nMIME-Version: 1.0\n"
        b"Content-Type: text/plain; charset=iso-8859-2\nContent-Transfer-Encoding: 8bit\n\n"
        + _NOTES.decode().encode("iso-8859-2", "replace")
    ),
    "a long text body that is no UTF-8": (
        b"From: alice@customer.test\nSubject: logs\nMIME-Version: 1.0\n"
        b"Content-Type: text/plain; charset=utf-8\n\n" + _NOTES.replace(b"\xc5", b"\xff")
    ),
    "a long text body in a charset nobody knows, and in UTF-16": _mixed(
        b"Content-Type: text/plain; charset=x-unknown\nContent-Transfer-Encoding: 8bit\n\n"
        + _NOTES,
        b"Content-Type: text/plain; charset=utf-16\nContent-Transfer-Encoding: 8bit\n\n" + _NOTES,
    ),
    "long text bodies labelled with codecs that are no text encodings": _mixed(
        *(
            b"Content-Type: text/plain; charset=%s\nContent-Transfer-Encoding: 8bit\n\n" % codec
            + body
            for codec, body in ((b"zlib_codec", _NOTES), (b"hex", _NOTES), (b"rot13", _NOTES))
        )
    ),
    "a long text body in 7bit ASCII, and a long HTML body": _mixed(
        b"Content-Type: text/plain\nContent-Transfer-Encoding: 7bit\n\n"
        + _NOTES.decode().encode("ascii", "replace"),
        b"Content-Type: text/html; charset=utf-8\n\n<p>" + _NOTES + b"</p>\n",
    ),
    "a text body and a preamble of text": (
        b"From: alice@customer.test\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=B"
        + b"\n\n"
        + _NOTES
        + b"\n--B\n"
        + _text_file(b"")
        + b"--B--\n"
        + _NOTES
    ),
    "a text file in a forwarded mail": _attached(_mixed(_TEXT, _text_file(_NAMED_TEXT))),
    "a text file before a base64 file": _mixed(_text_file(_NAMED_TEXT), _BASE64),
    "text and base64 in one body": _mixed(
        b"Content-Type: application/octet-stream; name=a.bin\nContent-Transfer-Encoding: base64\n\n"
        + _NOTES
        + b"\n"
        + base64.encodebytes(_FILE)
    ),
    "a delivery report with long text": _mixed(
        _TEXT,
        b"Content-Type: message/delivery-status\n\nReporting-MTA: dns; mx.test\n\n"
        + _NOTES
        + b"\n\nFinal-Recipient: rfc822; bob@customer.test\nAction: failed\n\n"
        + _NOTES,
        boundary=b"R",
    ).replace(b"multipart/mixed", b"multipart/report; report-type=delivery-status"),
    "a uuencoded file": _mixed(_TEXT, _UU + uuencoded(_FILE)),
    "a uuencoded text body": _mixed(
        b"Content-Type: text/plain\nContent-Transfer-Encoding: x-uuencode\n\n"
        + uuencoded(_LOG.encode())
    ),
    "uuencode with spaces for zero, a name in 8 bits": _mixed(
        _UU + uuencoded(_FILE, "l\u00f3gs.bin".encode()).replace(b"`", b" ")
    ),
    "uuencode without a begin line": _mixed(_UU + uuencoded(_FILE).split(b"\n", 1)[1]),
    "uuencode without an end line": _mixed(_UU + uuencoded(_FILE)[: -len(b"`\nend\n")]),
    "uuencode with a blank line": _mixed(_UU + uuencoded(_FILE).replace(b"\nM", b"\n\nM", 1)),
    "uuencode with broken lines": _mixed(_UU + uuencoded(_FILE).replace(b"\nM", b"\nMXXXX", 3)),
    "uuencode as X-UUE, and as x-uuencode with a space": _mixed(
        _UU.replace(b"x-uuencode", b"X-UUE") + uuencoded(_FILE),
        _UU.replace(b"x-uuencode", b"x-uuencode ") + uuencoded(_FILE),
    ),
    "uuencode after headers with no blank line": _mixed(
        _UU[:-1] + b"M:not a header\n" + uuencoded(_FILE)
    ),
    "a uuencoded file in a forwarded mail": _attached(_mixed(_TEXT, _UU + uuencoded(_FILE))),
    "a file in a forward in a forward": _attached(_attached(_mixed(_TEXT, _BASE64), 1)),
    "a file in 8 bits in a forward": _attached(_mixed(_BASE64.replace(b"\n\n", b"\n\n\xc3\xa1\n"))),
    "a file in a multipart marked as an attachment": _mixed(
        b"Content-Type: multipart/mixed; boundary=Z\nContent-Disposition: attachment\n\n"
        + b"--Z\n"
        + _BASE64
        + b"--Z\n"
        + _UU
        + uuencoded(_FILE)
        + b"--Z--\n"
    ),
    "uuencoded lines in a preamble and an epilogue": (
        b"From: alice@customer.test\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=B"
        + b"\n\n"
        + uuencoded(_FILE)
        + b"--B\n"
        + _TEXT
        + b"--B--\n"
        + uuencoded(_FILE)
    ),
}


@pytest.mark.parametrize("name", sorted(RUN_SHAPES))
@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
@pytest.mark.parametrize("cut", [False, True])
def test_long_runs_read_as_the_stdlib_parser_reads_them(
    monkeypatch: pytest.MonkeyPatch, name: str, newline: bytes, cut: bool
) -> None:
    """Markers for long runs of base64 or uuencoded lines (`base64runs.py`) change nothing a
    reader gets: with runs of 200 bytes and more read from the raw bytes, each shape parses
    to what the stdlib's own parse and decoding make of it. `cut`: with texts cut at 500
    characters, a held text body decoded 7 bytes at a time (multi-byte characters split)."""
    from maildesk import message

    raw = RUN_SHAPES[name].replace(b"\n", newline)
    monkeypatch.setattr(base64runs, "MIN_RUN", 200)
    if cut:
        monkeypatch.setattr(message, "MAX_TEXT_CHARS", 500)
        monkeypatch.setattr(message, "_DECODE_SLICE", 7)
    assert list(base64runs.Runs(raw).find())

    def parsed(min_run: int) -> object:
        monkeypatch.setattr(base64runs, "MIN_RUN", min_run)
        random.seed(0)  # mail-parser names an unnamed file at random
        try:
            return parse(raw)
        except UnparseableMessage as exc:
            return str(exc)

    with_runs = parsed(200)
    assert with_runs == parsed(1 << 40)
    assert not isinstance(with_runs, str)


def test_a_marker_written_by_the_sender_stays_their_text() -> None:
    """Markers stand for long base64 runs only with the parse's own random nonce: a
    sender who writes one (any nonce, index 0) gets their text back, not a run."""
    from maildesk.message import parse

    data = hashlib.shake_256(b"forged marker").digest(2 * 1024 * 1024)
    forged = f"MaildeskRun{'0' * 32}N0"
    mail = EmailMessage()
    mail["From"] = "alice@customer.test"
    mail["Subject"] = "Logs"
    mail.set_content(f"The logs.\n{forged}\n", cte="7bit")
    mail.add_attachment(data, "application", "octet-stream", filename="logs.bin")

    parsed = parse(mail.as_bytes().replace(b"\n", b"\r\n"))

    assert parsed.text.split() == ["The", "logs.", forged]
    [attachment] = parsed.attachments
    assert attachment.data == data


@pytest.mark.parametrize("name", sorted(path.name for path in DATA.glob("*.eml")))
def test_mail_parser_reads_the_same_bodies_without_its_summary(name: str) -> None:
    """maildesk lets mail-parser skip the summary of every header and part it builds
    at the end of a parse (`_BodiesOnly`), which maildesk never reads: the bodies and
    attachments must be mail-parser's own, and the summary must really be skipped (a
    mail-parser that renamed the step would build it again, unnoticed otherwise)."""
    from maildesk import message

    msg, _runs, _bodies = message._message(eml(name))
    ours = message._BodiesOnly(message._mime_view(msg))
    theirs = mailparser.MailParser(message._mime_view(msg))

    assert (ours.text_plain, ours.text_html) == (theirs.text_plain, theirs.text_html)
    # mail-parser names an unnamed part at random: compare all but that name.
    assert [_without_name(a) for a in ours.attachments] == [
        _without_name(a) for a in theirs.attachments
    ]
    assert ours.mail == {} and theirs.mail


def _without_name(attachment: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attachment.items() if k not in ("filename", "safe_filename")}


def test_an_address_header_of_thousands_of_parentheses_is_read_at_once() -> None:
    """The stdlib parses comments recursively: a Cc of 7,000 "(" raised RecursionError,
    so the message was retried three times before its quarantine. The Cc is left out
    now; a From like that is unparseable at once (quarantined on the first attempt)."""
    nested = "(" * 7000 + "x@customer.test"

    def mail(sender: str, cc: str) -> bytes:
        return (f"From: {sender}\r\nTo: support@example.test\r\nCc: {cc}\r\n"
                "Subject: hi\r\n\r\nStill readable.\r\n").encode()  # fmt: skip

    parsed = parse(mail("alice@customer.test", nested))
    assert parsed.cc == ()
    assert parsed.text.startswith("Still readable.")
    with pytest.raises(UnparseableMessage, match="nested too deep"):
        parse(mail(nested, "bob@customer.test"))


# -- containers marked as attachments --------------------------------------------------


def _nested_multiparts(depth: int) -> bytes:
    """One 40 KB text file inside `depth` multiparts, each marked as an attachment."""
    part = b"Content-Type: text/plain\nContent-Disposition: attachment; filename=a.txt\n\n"
    part += b"x" * 76 * 500 + b"\n"
    for i in range(depth):
        boundary = b"B%d" % i
        part = (b"Content-Type: multipart/mixed; boundary=" + boundary
                + b"\nContent-Disposition: attachment; filename=c%d.zip\n\n" % i
                + b"--" + boundary + b"\n" + part + b"\n--" + boundary + b"--\n")  # fmt: skip
    return b"From: mallory@evil.test\nSubject: nested\nMIME-Version: 1.0\n" + part


def _forwarded(depth: int) -> bytes:
    """A mail with a PDF, forwarded as an attachment `depth` times over."""
    mail = (b"From: a@customer.test\nSubject: leaf\nMIME-Version: 1.0\n"
            b"Content-Type: multipart/mixed; boundary=L\n\n--L\nContent-Type: text/plain\n\nhi\n"
            b"--L\nContent-Type: application/pdf\nContent-Disposition: attachment; filename=x.pdf"
            b"\n\n" + b"y" * 76 * 500 + b"\n--L--\n")  # fmt: skip
    for i in range(depth):
        b = b"M%d" % i
        mail = (b"From: a@customer.test\nSubject: fwd\nMIME-Version: 1.0\n"
                b"Content-Type: multipart/mixed; boundary=" + b + b"\n\n--" + b
                + b"\nContent-Type: text/plain\n\nsee attached\n--" + b
                + b"\nContent-Type: message/rfc822\nContent-Disposition: attachment; "
                + b"filename=f%d.eml\n\n" % i + mail + b"\n--" + b + b"--\n")  # fmt: skip
    return mail


def test_multiparts_marked_as_attachments_are_not_stored_as_files() -> None:
    """mail-parser gives each such container as a file of text beside the parts in it:
    19 nested made a 4 MB mail store 80 MB. The file inside is the one file."""
    raw = _nested_multiparts(19)
    files = parse(raw).attachments
    assert [(f.filename, f.content_type) for f in files] == [("a.txt", "text/plain")]


def test_a_forwarded_mail_is_kept_with_its_files_but_not_copied_once_per_forward() -> None:
    once = parse(_forwarded(1)).attachments
    assert [(f.filename, f.content_type) for f in once] == [
        ("f0.eml", "message/rfc822"),
        ("x.pdf", "application/pdf"),
    ]
    raw = _forwarded(6)
    files = parse(raw).attachments
    assert [f.filename for f in files] == ["f5.eml", "x.pdf"]  # the outermost, and the file
    assert sum(len(f.data) for f in files) < 2.1 * len(raw)


def test_a_forwarded_mail_of_czech_text_is_kept() -> None:
    """Read back, a forwarded mail in 8-bit UTF-8 is larger than it was in the mail: a
    cap on copies at the mail's own size dropped the one forward a customer sent."""
    text = "Příliš žluťoučký kůň úpěl ďábelské ódy.\n".encode() * 600
    inner = (b"From: a@customer.test\nSubject: p\xc5\x99\xc3\xadloha\nMIME-Version: 1.0\n"
             b"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
             + text)  # fmt: skip
    raw = (b"From: b@customer.test\nSubject: fwd\nMIME-Version: 1.0\n"
           b"Content-Type: multipart/mixed; boundary=M\n\n--M\nContent-Type: text/plain\n\nsee\n"
           b"--M\nContent-Type: message/rfc822\nContent-Disposition: attachment; filename=o.eml"
           b"\n\n" + inner + b"\n--M--\n")  # fmt: skip
    assert [f.filename for f in parse(raw).attachments] == ["o.eml"]


def _peak_bytes_of_parse(raw: bytes) -> int:
    """The most memory Python held at once while parsing `raw`: the allocations, counted the
    same on any machine."""
    tracemalloc.start()
    try:
        parse(raw)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_message_id_lines_in_a_body_cost_no_more_memory_than_text() -> None:
    """Only 20 Message-IDs quoted in a body are kept: all of them were collected first, a
    million ids for a 23 MB body of such lines (182 MB of a worker's RSS, 111 for text)."""
    head = "From: alice@customer.test\nTo: support@example.test\nSubject: x\n\n"
    lines = "".join(f"Message-ID: <{i:07d}@x>\n" for i in range(200_000))
    text = "".join(f"Nothing to see, {i:07d}\n" for i in range(200_000))
    assert len(lines) == len(text)
    ratio = _peak_bytes_of_parse((head + lines).encode()) / _peak_bytes_of_parse(
        (head + text).encode()
    )
    assert ratio < 1.25, f"parsing the ids held {ratio:.2f} times the memory of text"
    ids = parse((head + lines).encode()).quoted_message_ids
    assert ids == tuple(f"{i:07d}@x" for i in range(20))
