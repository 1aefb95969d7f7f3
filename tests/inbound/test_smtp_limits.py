"""What the SMTP listener refuses, over a real socket to the running daemon.

Bare LF at DATA, unknown local parts at RCPT, MAIL before STARTTLS when TLS is
required, sessions over the caps, and a client that trickles a line (slowloris).
"""

from __future__ import annotations

import os
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from maildesk.config import ConfigError, from_mapping
from maildesk.tickets.tokens import ReplyTokens
from tests.conftest import RunningDaemon, make_mail, running_daemon, wait_for
from tests.helpers import tickets
from tests.smtp_sink import self_signed_cert

# Most of a 700,000-byte message: whole lines, no final dot.
LINES = (b"y" * 76 + b"\r\n") * (560_000 // 78)


class RawSmtp:
    """An SMTP client that writes exactly the bytes it is given (smtplib fixes line ends)."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=10)
        self.stream = self.sock.makefile("rb")

    def reply(self) -> str:
        lines = []
        while True:
            line = self.stream.readline()
            if not line:
                raise ConnectionError("closed by the server")
            lines.append(line.decode().rstrip("\r\n"))
            if line[3:4] != b"-":
                return "\n".join(lines)

    def command(self, text: str) -> str:
        self.sock.sendall(text.encode() + b"\r\n")
        return self.reply()

    def closed_by_server(self) -> bool:
        """Wait (up to the socket timeout) for the server to hang up."""
        try:
            return self.sock.recv(1024) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.stream.close()
        self.sock.close()


def no_sessions(running: RunningDaemon) -> None:
    """Wait until the listener has seen every earlier client (e.g. the start-up probe) go.

    One whole session first: connections are accepted in order, so by its 220 every
    earlier one was counted in.
    """
    client = connect(running)
    client.reply()
    client.command("QUIT")
    client.close()
    registry = running.daemon.metrics.registry
    wait_for(lambda: registry.get_sample_value("maildesk_smtp_sessions") == 0, what="no sessions")


def connect(running: RunningDaemon) -> RawSmtp:
    smtp = running.services.settings.smtp
    return RawSmtp(smtp.host, smtp.port)


def test_bare_lf_inside_crlf_mail_is_refused_at_data(daemon: RunningDaemon) -> None:
    client = connect(daemon)
    try:
        assert client.reply().startswith("220")
        assert client.command("EHLO client.test").startswith("250")
        assert client.command("MAIL FROM:<alice@customer.test>").startswith("250")
        assert client.command("RCPT TO:<support@example.test>").startswith("250")
        assert client.command("DATA").startswith("354")
        smuggled = (
            b"From: alice@customer.test\r\nTo: support@example.test\r\nSubject: hi\r\n\r\n"
            b"first line\n.\nMAIL FROM:<ceo@example.test>\r\n"
        )
        client.sock.sendall(smuggled + b".\r\n")
        answer = client.reply()
        assert answer.startswith("554 5.6.0"), answer
        assert "bare LF" in answer
        # The session goes on, and a clean message is still accepted.
        assert client.command("MAIL FROM:<alice@customer.test>").startswith("250")
    finally:
        client.close()
    assert tickets(daemon.services) == []


def test_only_the_support_address_its_reply_addresses_and_aliases_are_accepted(
    config_values: dict[str, Any], tmp_path: Path, clock: Any
) -> None:
    config_values["support"]["aliases"] = ["help@example.test"]
    settings = from_mapping(config_values, base_dir=tmp_path)
    signed = ReplyTokens(settings.support.address, settings.secret_key()).address(7)
    forged = signed[: signed.index(".") + 1] + "a" * 10 + "@example.test"
    with running_daemon(settings, clock) as running:
        client = connect(running)
        try:
            client.reply()
            client.command("EHLO client.test")
            client.command("MAIL FROM:<alice@customer.test>")
            for refused in ("sales@example.test", "support+anything@example.test", forged):
                answer = client.command(f"RCPT TO:<{refused}>")
                assert answer.startswith("550 5.1.1"), (refused, answer)
            for accepted in ("support@example.test", "HELP@example.test", signed):
                answer = client.command(f"RCPT TO:<{accepted}>")
                assert answer.startswith("250"), (accepted, answer)
        finally:
            client.close()


def test_require_tls_refuses_mail_before_starttls(
    config_values: dict[str, Any], tmp_path: Path, clock: Any
) -> None:
    cert, key = self_signed_cert(tmp_path)
    config_values["smtp"].update(tls_cert=str(cert), tls_key=str(key), require_tls=True)
    with running_daemon(from_mapping(config_values, base_dir=tmp_path), clock) as running:
        smtp = running.services.settings.smtp
        with smtplib.SMTP(smtp.host, smtp.port, timeout=10) as client:
            client.ehlo()
            code, text = client.mail("alice@customer.test")
            assert (code, text[:5]) == (530, b"5.7.0")
            context = ssl.create_default_context(cafile=str(cert))
            client.starttls(context=context)
            client.ehlo()
            client.sendmail("alice@customer.test", ["support@example.test"], make_mail())
        wait_for(lambda: tickets(running.services), what="the ticket of the TLS mail")


def test_sessions_over_the_per_address_cap_get_421_and_a_slot_frees_on_quit(
    config_values: dict[str, Any], tmp_path: Path, clock: Any
) -> None:
    config_values["smtp"].update(max_sessions=10, max_sessions_per_ip=2)
    with running_daemon(from_mapping(config_values, base_dir=tmp_path), clock) as running:
        no_sessions(running)
        first, second = connect(running), connect(running)
        assert first.reply().startswith("220") and second.reply().startswith("220")
        third = connect(running)
        answer = third.reply()
        assert answer.startswith("421 4.7.0"), answer
        assert third.closed_by_server()
        third.close()
        assert first.command("QUIT").startswith("221")
        first.close()

        def admitted() -> bool:
            client = connect(running)
            try:
                return client.reply().startswith("220")
            finally:
                client.close()

        wait_for(admitted, what="a session once a slot is free")
        second.close()


def test_sessions_over_the_total_cap_get_421(
    config_values: dict[str, Any], tmp_path: Path, clock: Any
) -> None:
    config_values["smtp"].update(max_sessions=2, max_sessions_per_ip=5)
    with running_daemon(from_mapping(config_values, base_dir=tmp_path), clock) as running:
        no_sessions(running)
        held = [connect(running), connect(running)]
        assert all(c.reply().startswith("220") for c in held)
        over = connect(running)
        assert over.reply().startswith("421 4.7.0 Too many connections,")
        for client in (*held, over):
            client.close()


def test_a_client_trickling_a_line_is_hung_up_on(
    config_values: dict[str, Any], tmp_path: Path, clock: Any
) -> None:
    config_values["smtp"].update(timeout=0.5)
    with running_daemon(from_mapping(config_values, base_dir=tmp_path), clock) as running:
        # In the command phase: half a command, and no more.
        idle = connect(running)
        idle.reply()
        idle.sock.sendall(b"EHLO slow")
        assert idle.closed_by_server()
        idle.close()
        # In DATA: lines keep the session alive only if each arrives whole.
        client = connect(running)
        client.reply()
        client.command("EHLO client.test")
        client.command("MAIL FROM:<alice@customer.test>")
        client.command("RCPT TO:<support@example.test>")
        assert client.command("DATA").startswith("354")
        client.sock.sendall(b"Subject: a header that never ends")
        assert client.closed_by_server()
        client.close()
        # The listener itself keeps serving.
        running.send(make_mail())
        wait_for(lambda: tickets(running.services), what="a ticket after the slow clients")


def test_a_message_cut_off_before_its_final_dot_is_not_stored(daemon: RunningDaemon) -> None:
    client = connect(daemon)
    client.reply()
    client.command("EHLO client.test")
    client.command("MAIL FROM:<alice@customer.test>")
    client.command("RCPT TO:<support@example.test>")
    assert client.command("DATA").startswith("354")
    client.sock.sendall(make_mail(subject="Cut off"))  # whole lines, but no final dot
    client.close()
    no_sessions(daemon)  # the listener saw it hang up

    daemon.send(make_mail(subject="Whole"))
    wait_for(lambda: tickets(daemon.services), what="the whole message's ticket")
    assert sum(daemon.services.store.counts().by_state.values()) == 1


def test_recipients_over_the_cap_get_452_and_the_mail_is_taken_for_the_rest(
    config_values: dict[str, Any], tmp_path: Path, clock: Any
) -> None:
    """A million RCPTs pipelined in one session were all kept until DATA (serve grew
    by 90 MB) and stored as a 21 MB recipient list. Past `[smtp] max_recipients`,
    452 4.5.3: a client sends the rest in another transaction, as RFC 5321 says."""
    config_values["smtp"]["max_recipients"] = 3
    with running_daemon(from_mapping(config_values, base_dir=tmp_path), clock) as running:
        client = connect(running)
        client.reply()
        client.command("EHLO client.test")
        client.command("MAIL FROM:<alice@customer.test>")
        case_variants = ["support", "SUPPORT", "Support", "sUpport", "suPport"]
        answers = [client.command(f"RCPT TO:<{v}@example.test>") for v in case_variants]
        assert [a[:3] for a in answers] == ["250", "250", "250", "452", "452"]
        assert answers[3].startswith("452 4.5.3")
        assert client.command("DATA").startswith("354")
        client.sock.sendall(make_mail().replace(b"\r\n.", b"\r\n..") + b".\r\n")
        assert client.reply().startswith("250")
        client.command("QUIT")
        client.close()
        [found] = wait_for(lambda: tickets(running.services), what="the ticket")
        registry = running.daemon.metrics.registry
        refused = {"reason": "too_many_recipients"}
        assert registry.get_sample_value("maildesk_smtp_refused_total", refused) == 2


def test_unfinished_data_of_all_sessions_is_held_within_a_budget(
    config_values: dict[str, Any], tmp_path: Path, clock: Any
) -> None:
    """Each session's DATA is kept in memory until its final dot. Sessions that each sent
    most of `max_message_size`, then a line a minute (each line resets the timeout),
    held their sum in serve's memory for as long as they liked: 2.6 GB from 100 of
    them. Past `[smtp] data_memory_mb`, a message is read to its dot, nothing of it
    kept, and answered 452: its sender tries again later, and gets in."""
    config_values["smtp"].update(max_message_size=700_000, data_memory_mb=1)
    with running_daemon(from_mapping(config_values, base_dir=tmp_path), clock) as running:
        held = data_held(running)
        slow = _in_data(running, "slow@customer.test")
        slow.sock.sendall(
            b"From: slow@customer.test\r\nSubject: slow\r\n\r\n" + LINES
        )  # and no final dot, yet
        # All but its last line's end, which the reader keeps until more comes.
        wait_for(lambda: held() > len(LINES) - 1000, what="the slow session's lines held")

        fast = _in_data(running, "fast@customer.test")
        fast.sock.sendall(b"From: fast@customer.test\r\nSubject: fast\r\n\r\n" + LINES + b".\r\n")
        assert fast.reply().startswith("452 4.3.1")
        assert held() < len(LINES) + 100_000  # none of the refused message was kept

        slow.sock.sendall(b".\r\n")
        assert slow.reply().startswith("250")
        wait_for(lambda: held() == 0, what="the budget given back")
        assert fast.command("MAIL FROM:<fast@customer.test>").startswith("250")
        assert fast.command("RCPT TO:<support@example.test>").startswith("250")
        assert fast.command("DATA").startswith("354")
        fast.sock.sendall(b"From: fast@customer.test\r\nSubject: fast\r\n\r\n" + LINES + b".\r\n")
        assert fast.reply().startswith("250")
        for client in (slow, fast):
            client.close()
        wait_for(lambda: len(tickets(running.services)) == 2, what="both tickets")


def test_a_message_cut_off_mid_data_gives_its_budget_back(
    config_values: dict[str, Any], tmp_path: Path, clock: Any
) -> None:
    """A hang-up or a timeout cancels DATA's task: its bytes stayed counted, and after
    256 MB of them every message was answered 452 until serve restarted."""
    config_values["smtp"].update(max_message_size=700_000, data_memory_mb=1)
    with running_daemon(from_mapping(config_values, base_dir=tmp_path), clock) as running:
        held = data_held(running)
        cut = _in_data(running, "cut@customer.test")
        cut.sock.sendall(b"From: cut@customer.test\r\nSubject: cut\r\n\r\n" + LINES)
        wait_for(lambda: held() > len(LINES) - 1000, what="the lines held")
        cut.close()  # the connection goes away before the final dot
        no_sessions(running)
        # Nothing of the lost message is held any more ...
        wait_for(lambda: held() == 0, what="the budget given back")
        # ... and the next message of the same size is taken, not answered 452.
        ok = _in_data(running, "next@customer.test")
        ok.sock.sendall(b"From: next@customer.test\r\nSubject: next\r\n\r\n" + LINES + b".\r\n")
        assert ok.reply().startswith("250")
        ok.close()


def test_a_session_that_times_out_mid_data_gives_its_budget_back(
    config_values: dict[str, Any], tmp_path: Path, clock: Any
) -> None:
    config_values["smtp"].update(max_message_size=700_000, data_memory_mb=1, timeout=0.5)
    with running_daemon(from_mapping(config_values, base_dir=tmp_path), clock) as running:
        held = data_held(running)
        slow = _in_data(running, "slow@customer.test")
        slow.sock.sendall(b"From: slow@customer.test\r\nSubject: slow\r\n\r\n" + LINES)
        assert slow.closed_by_server()  # hung up on for its silence
        slow.close()
        no_sessions(running)
        wait_for(lambda: held() == 0, what="the budget given back")


def data_held(running: RunningDaemon) -> Callable[[], float]:
    """The bytes of unfinished DATA serve holds now, as /metrics tells them."""
    registry = running.daemon.metrics.registry
    return lambda: registry.get_sample_value("maildesk_smtp_data_held_bytes") or 0.0


def _in_data(running: RunningDaemon, sender: str) -> RawSmtp:
    client = connect(running)
    assert client.reply().startswith("220")
    assert client.command("EHLO client.test").startswith("250")
    assert client.command(f"MAIL FROM:<{sender}>").startswith("250")
    assert client.command("RCPT TO:<support@example.test>").startswith("250")
    assert client.command("DATA").startswith("354")
    return client


def test_a_data_budget_smaller_than_one_message_is_refused_when_the_config_loads(
    config_values: dict[str, Any], tmp_path: Path
) -> None:
    config_values["smtp"].update(max_message_size=30 * 1024 * 1024, data_memory_mb=16)
    with pytest.raises(ConfigError, match="data_memory_mb must hold at least one message"):
        from_mapping(config_values, base_dir=tmp_path)


def _in_network_namespace(module: str) -> subprocess.CompletedProcess[str]:
    """`python -m module` in a network namespace of its own, whose loopback also holds
    2001:db8::1-4 (one /64) and 2001:db8:1::2 (another)."""
    hosts = [f"2001:db8::{n}" for n in range(1, 5)] + ["2001:db8:1::2"]
    addresses = "; ".join(f"ip -6 addr add {host}/64 dev lo nodad" for host in hosts)
    script = f"ip link set lo up; {addresses}; exec {sys.executable} -m {module}"
    return subprocess.run(
        ["unshare", "--map-root-user", "--net", "sh", "-ec", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parent.parent.parent,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )


def _can_unshare_a_network() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    probe = ["unshare", "--map-root-user", "--net", "ip", "link", "set", "lo", "up"]
    return subprocess.run(probe, capture_output=True).returncode == 0


@pytest.mark.skipif(not _can_unshare_a_network(), reason="needs unshare -rn and ip")
def test_an_ipv6_clients_sessions_count_by_its_64() -> None:
    """A host with an IPv6 /64 (what a provider hands any server) has 2^64 addresses.
    Counted one address at a time, it opened `max_sessions` sessions from as many of
    them, each kept with a NOOP a minute, and every other sender got 421 for as long
    as it liked: the mail of the whole desk waited. Its /64 counts as one client now,
    as on the web listener; another /64 is another client."""
    ran = _in_network_namespace("tests.netns_sessions")
    assert ran.returncode == 0, ran.stderr[-3000:]
    codes = [line[:3] for line in ran.stdout.splitlines()]
    # Three clients of one /64 (the third refused), then one of another /64.
    assert codes == ["220", "220", "421", "220"], ran.stdout
