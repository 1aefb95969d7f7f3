"""SMTP and LMTP in, end to end: a real socket, the running daemon, the outbox Maildir."""

from __future__ import annotations

import smtplib
import socket
from typing import Any

import pytest

from maildesk.config import from_mapping
from tests.conftest import Outbox, RunningDaemon, make_mail, running_daemon, wait_for
from tests.helpers import ticket, tickets


def test_swaks_style_mail_opens_ticket_and_acknowledges(
    daemon: RunningDaemon, outbox: Outbox
) -> None:
    daemon.send(make_mail(subject="Printer broken", message_id="<p1@customer.test>"))

    [ack] = outbox.wait(1)
    assert ack["To"].addresses[0].addr_spec == "alice@customer.test"
    assert ack["In-Reply-To"] == "<p1@customer.test>"
    assert ack["Subject"] == "[#1] Printer broken"
    assert ack["From"].addresses[0].addr_spec == "support@example.test"
    assert "thank you for contacting Example Support" in ack.get_body(("plain",)).get_content()
    [only] = tickets(daemon.services)
    assert (only["number"], only["status"]) == (1, "new")


def test_reply_from_a_mail_client_joins_the_ticket(daemon: RunningDaemon, outbox: Outbox) -> None:
    daemon.send(make_mail(message_id="<p1@customer.test>"))
    [ack] = outbox.wait(1)

    daemon.send(
        make_mail(
            subject=f"Re: {ack['Subject']}",
            body="Still broken.",
            In_Reply_To=ack["Message-ID"],
            References=f"<p1@customer.test> {ack['Message-ID']}",
        )
    )

    wait_for(lambda: ticket(daemon.services, 1)["message_count"] == 3, what="the reply")
    assert len(tickets(daemon.services)) == 1
    assert len(outbox.files()) == 1  # a reply is not acknowledged again


def test_oversized_message_is_refused_with_552(
    config_values: dict[str, Any], tmp_path: Any, clock: Any
) -> None:
    config_values["smtp"]["max_message_size"] = 10_000
    big = make_mail(body="x" * 20_000)
    with running_daemon(from_mapping(config_values, base_dir=tmp_path), clock) as running:
        smtp = running.services.settings.smtp
        with smtplib.SMTP(smtp.host, smtp.port, timeout=10) as client:
            # A client that declares SIZE is refused at MAIL FROM ...
            with pytest.raises(smtplib.SMTPSenderRefused) as refused:
                client.sendmail("alice@customer.test", ["support@example.test"], big)
            assert refused.value.smtp_code == 552
            # ... one that does not is refused after DATA, before anything is stored.
            client.ehlo()
            client.mail("alice@customer.test")
            client.rcpt("support@example.test")
            code, _ = client.data(big)
        assert code == 552
        assert tickets(running.services) == []


def test_recipient_outside_our_domain_is_refused(daemon: RunningDaemon) -> None:
    smtp = daemon.services.settings.smtp
    with smtplib.SMTP(smtp.host, smtp.port, timeout=10) as client:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            client.sendmail("alice@customer.test", ["someone@elsewhere.test"], make_mail())
    assert refused.value.recipients["someone@elsewhere.test"][0] == 550


def test_lmtp_answers_once_per_recipient(
    config_values: dict[str, Any], tmp_path: Any, clock: Any, outbox: Outbox
) -> None:
    config_values["smtp"]["lmtp"] = True
    config_values["support"]["aliases"] = ["help@example.test"]
    with running_daemon(from_mapping(config_values, base_dir=tmp_path), clock) as running:
        smtp = running.services.settings.smtp
        with socket.create_connection((smtp.host, smtp.port), timeout=10) as sock:
            stream = sock.makefile("rwb")
            replies = _lmtp_session(
                stream,
                ["support@example.test", "help@example.test"],
                make_mail(message_id="<lmtp@customer.test>"),
            )
        assert replies[-2:] == [b"250", b"250"]
        outbox.wait(1)
        assert ticket(running.services, 1)["messages"][0]["message_id"] == "lmtp@customer.test"


def test_lmtp_refuses_data_once_per_recipient(
    config_values: dict[str, Any], tmp_path: Any, clock: Any
) -> None:
    """A refused DATA (a line over the limit) was answered once, not once per recipient:
    Postfix waits for the other answers until its timeout (600 s), then defers and
    tries again, and a client that pipelined RSET read its 250 in their place."""
    config_values["smtp"]["lmtp"] = True
    config_values["support"]["aliases"] = ["help@example.test", "info@example.test"]
    with running_daemon(from_mapping(config_values, base_dir=tmp_path), clock) as running:
        smtp = running.services.settings.smtp
        with socket.create_connection((smtp.host, smtp.port), timeout=10) as sock:
            stream = sock.makefile("rwb")

            def send(data: bytes) -> None:
                stream.write(data)
                stream.flush()

            def reply() -> bytes:
                while (line := stream.readline())[3:4] == b"-":
                    pass
                return bytes(line)

            reply()
            for line in (b"LHLO client.test", b"MAIL FROM:<alice@customer.test>",
                         b"RCPT TO:<support@example.test>", b"RCPT TO:<help@example.test>",
                         b"RCPT TO:<info@example.test>"):  # fmt: skip
                send(line + b"\r\n")
                assert reply()[:3] == b"250"
            send(b"DATA\r\n")
            assert reply()[:3] == b"354"
            send(b"Subject: long\r\n\r\n" + b"x" * 2000 + b"\r\n.\r\nRSET\r\n")
            assert [reply()[:3] for _ in range(3)] == [b"500"] * 3
            assert reply().startswith(b"250")  # RSET's own answer, in its place


def _lmtp_session(stream: Any, recipients: list[str], raw: bytes) -> list[bytes]:
    """Speak LMTP by hand: smtplib.LMTP reads one DATA reply, LMTP sends one per recipient."""

    def reply() -> bytes:
        while True:
            line = stream.readline()
            if line[3:4] != b"-":
                return bytes(line[:3])

    def command(text: str) -> bytes:
        stream.write(text.encode() + b"\r\n")
        stream.flush()
        return reply()

    assert reply() == b"220"
    assert command("LHLO test.client") == b"250"
    assert command("MAIL FROM:<alice@customer.test>") == b"250"
    for rcpt in recipients:
        assert command(f"RCPT TO:<{rcpt}>") == b"250"
    assert command("DATA") == b"354"
    body = b"\r\n".join(
        b"." + line if line.startswith(b".") else line for line in raw.split(b"\r\n")
    )
    stream.write(body.rstrip(b"\r\n") + b"\r\n.\r\n")
    stream.flush()
    return [reply() for _ in recipients]


def _queued_id(reply: bytes) -> int:
    return int(reply.rsplit(b" ", 1)[1])


def test_a_large_message_is_stored_exactly_as_sent(daemon: RunningDaemon) -> None:
    # Lines of the longest length SMTP allows, lines a client dot-stuffs (a lone ".", "..",
    # ".x"), 3.5 MB in all: the stored bytes are the sent ones, dots and all.
    header = make_mail(subject="Logs", body="").split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
    lines = [bytes([48 + n % 10]) * 998 for n in range(3500)]
    for n in range(0, len(lines), 7):
        lines[n] = [b".", b"..", b".x" + lines[n][2:], b". "][n % 4]
    raw = header + b"\r\n".join(lines) + b"\r\n"
    smtp = daemon.services.settings.smtp
    with smtplib.SMTP(smtp.host, smtp.port, timeout=30) as client:
        client.ehlo()
        client.mail("alice@customer.test")
        client.rcpt("support@example.test")
        code, reply = client.data(raw)
    assert code == 250
    assert daemon.services.store.load(_queued_id(reply)).raw == raw


# Over the line limit, and over what the reader buffers during DATA (smtpdata.py).
@pytest.mark.parametrize("length", [1200, 200_000])
def test_a_line_over_the_smtp_limit_is_refused_and_the_session_goes_on(
    daemon: RunningDaemon, length: int
) -> None:
    smtp = daemon.services.settings.smtp
    with smtplib.SMTP(smtp.host, smtp.port, timeout=10) as client:
        client.ehlo()
        client.mail("alice@customer.test")
        client.rcpt("support@example.test")
        code, _ = client.data(make_mail(body="").rstrip(b"\r\n") + b"\r\n" + b"x" * length)
        assert code == 500  # RFC 5321 4.5.3.1.6: 1000 bytes a line, CRLF included
        client.mail("alice@customer.test")
        client.rcpt("support@example.test")
        code, reply = client.data(make_mail(body="fine"))
        assert code == 250
    assert b"fine" in daemon.services.store.load(_queued_id(reply)).raw


def _unstuffed(wire: bytes) -> bytes:
    """RFC 5321 4.5.2, one line at a time: what a message sent as `wire` (its dot line
    excluded) stores."""
    lines = wire.split(b"\r\n")
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)


# Dot lines where a reader could miss them: first, second, after lines that end in a
# dot, split across TCP sends, and a message over the reader's 64 KiB buffer.
WIRES = [
    b"",
    b"Subject: empty body\r\n",
    b"Subject: dots\r\n\r\nHello.\r\n..\r\n..x\r\n...\r\nBye.\r\n",
    b"Subject: big\r\n\r\n" + b"".join(b"%05d " % n + b"y" * 70 + b".\r\n" for n in range(1500)),
    b"Subject: big, no dot\r\n\r\n" + b"z" * 998 + b"\r\n" + (b"w" * 77 + b"\r\n") * 2000,
]


@pytest.mark.parametrize("wire", WIRES, ids=["empty", "one line", "dots", "big", "no dot"])
def test_data_ends_at_its_dot_line_however_it_arrives(daemon: RunningDaemon, wire: bytes) -> None:
    smtp = daemon.services.settings.smtp
    sent = wire + b".\r\n"
    with socket.create_connection((smtp.host, smtp.port), timeout=10) as client:
        replies = client.makefile("rb")
        replies.readline()
        client.sendall(b"HELO customer.test\r\nMAIL FROM:<a@customer.test>\r\n")
        replies.readline(), replies.readline()
        client.sendall(b"RCPT TO:<support@example.test>\r\nDATA\r\n")
        replies.readline()
        assert replies.readline().startswith(b"354")
        # In pieces of 1 to 7 bytes at first, cutting ".\r\n" and CRLFs anywhere.
        at = 0
        for step in [1, 2, 3, 5, 7] * 8:
            client.sendall(sent[at : at + step])
            at += step
        client.sendall(sent[at:])
        reply = replies.readline()
        assert reply.startswith(b"250"), reply
        client.sendall(b"QUIT\r\n")
    assert daemon.services.store.load(_queued_id(reply.rstrip())).raw == _unstuffed(wire)
