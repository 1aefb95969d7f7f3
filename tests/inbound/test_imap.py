"""The IMAP poller against a real Dovecot: nothing leaves the folder before it is stored."""

from __future__ import annotations

import imaplib
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from imapclient import SEEN, IMAPClient
from imapclient.exceptions import IMAPClientError

from maildesk.config import ImapSettings
from maildesk.inbound import imap
from maildesk.inbound.imap import FETCH_SLICE, ImapPoller
from tests.dovecot import Dovecot

# Generous: a loaded CI machine can take seconds to deliver an IDLE notification.
DEADLINE = 30.0


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    with Dovecot() as server:
        yield server


def message(n: int, newline: bytes = b"\r\n") -> bytes:
    """A small real-looking message with an 8-bit body, so byte fidelity is tested too."""
    lines = [
        f"From: Zákazník {n} <customer{n}@example.org>",
        "To: support@example.test",
        f"Subject: Help {n}",
        f"Message-ID: <m{n}@example.org>",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
        "",
        f"Dobrý den, message {n}.",
        "",
    ]
    return newline.join(line.encode() for line in lines)


class Recorder:
    """A store that keeps what it was given and signals each arrival."""

    def __init__(self, fail_on: bytes | None = None) -> None:
        self.stored: list[bytes] = []
        self.fail_on = fail_on
        self.arrived = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, raw: bytes) -> object:
        if raw == self.fail_on:
            raise RuntimeError("database is locked")
        with self._lock:
            self.stored.append(raw)
        self.arrived.set()
        return len(self.stored)

    def wait_for(self, count: int) -> list[bytes]:
        deadline = time.monotonic() + DEADLINE
        while len(self.stored) < count:
            assert time.monotonic() < deadline, f"only {len(self.stored)} of {count} stored"
            self.arrived.wait(0.05)
            self.arrived.clear()
        return self.stored


def flags(server: Dovecot, folder: str) -> list[tuple[bytes, ...]]:
    with server.client() as client:
        client.select_folder(folder, readonly=True)
        fetched = client.fetch(client.search("ALL"), ["FLAGS"])
        return [fetched[uid][b"FLAGS"] for uid in sorted(fetched)]


def start(poller: ImapPoller, stop: threading.Event) -> threading.Thread:
    thread = threading.Thread(target=poller.run, args=(stop,), daemon=True)
    thread.start()
    return thread


def joined(thread: threading.Thread) -> float:
    started = time.monotonic()
    thread.join(DEADLINE)
    assert not thread.is_alive(), "run() did not return after stop was set"
    return time.monotonic() - started


def test_poll_stores_exact_bytes_then_moves_unread(dovecot: Dovecot) -> None:
    sent = [message(n) for n in (1, 2, 3)]
    for raw in sent:
        dovecot.append("INBOX", raw)
    store = Recorder()
    poller = ImapPoller(dovecot.settings(), store)
    try:
        assert poller.poll_once() == 3
    finally:
        poller.close()
    # CRLF messages come back byte for byte, in arrival order.
    assert store.stored == sent
    assert dovecot.messages("INBOX") == []
    assert dovecot.messages("Processed") == sent
    # BODY.PEEK[]: fetching did not mark them read.
    assert [SEEN in f for f in flags(dovecot, "Processed")] == [False, False, False]


def test_bare_lf_message_arrives_with_crlf(dovecot: Dovecot) -> None:
    # Dovecot accepts bare-LF APPENDs and serves them back with CRLF line ends.
    raw = message(1, newline=b"\n")
    dovecot.append("INBOX", raw)
    store = Recorder()
    poller = ImapPoller(dovecot.settings(), store)
    try:
        assert poller.poll_once() == 1
    finally:
        poller.close()
    assert store.stored == [raw.replace(b"\n", b"\r\n")]


def test_a_large_message_is_fetched_in_slices_byte_for_byte(dovecot: Dovecot) -> None:
    """Over `FETCH_SLICE` a message is fetched alone by partial FETCHes into one buffer;
    small ones around it still come in one FETCH. Sizes at a slice's edge included."""
    rng = random.Random(11)
    lines = b"\r\n".join(bytes(rng.choices(b"abcdef ", k=76)) for _ in range(45_000))
    large = message(9).replace(b"message 9.", lines)
    edge = message(8) + b"x" * (2 * FETCH_SLICE - len(message(8)) - 2) + b"\r\n"
    sent = [message(1), large, edge, message(2)]
    for raw in sent:
        dovecot.append("INBOX", raw)
    store = Recorder()
    poller = ImapPoller(dovecot.settings(), store)
    try:
        assert poller.poll_once() == 4
    finally:
        poller.close()
    assert len(large) > 3 * FETCH_SLICE and len(edge) == 2 * FETCH_SLICE
    assert [len(raw) for raw in store.stored] == [len(raw) for raw in sent]
    assert store.stored == sent
    assert dovecot.messages("INBOX") == []


def test_failed_store_leaves_only_that_message(
    dovecot: Dovecot, caplog: pytest.LogCaptureFixture
) -> None:
    sent = [message(n) for n in (1, 2, 3)]
    for raw in sent:
        dovecot.append("INBOX", raw)
    store = Recorder(fail_on=sent[1])
    poller = ImapPoller(dovecot.settings(processed_folder="Done"), store)
    try:
        assert poller.poll_once() == 2
        assert store.stored == [sent[0], sent[2]]
        assert dovecot.messages("INBOX") == [sent[1]]
        assert dovecot.messages("Done") == [sent[0], sent[2]]
        assert [SEEN in f for f in flags(dovecot, "INBOX")] == [False]
        assert "not stored" in caplog.text and "database is locked" in caplog.text

        store.fail_on = None  # the database is back
        assert poller.poll_once() == 1
    finally:
        poller.close()
    assert store.stored == [sent[0], sent[2], sent[1]]
    assert dovecot.messages("INBOX") == []
    assert sorted(dovecot.messages("Done")) == sorted(sent)


@pytest.mark.parametrize("hidden", [{"MOVE"}, {"MOVE", "UIDPLUS"}])
def test_move_falls_back_to_copy_delete_expunge(
    dovecot: Dovecot, monkeypatch: pytest.MonkeyPatch, hidden: set[str]
) -> None:
    real = IMAPClient.has_capability

    def has_capability(self: IMAPClient, capability: str) -> bool:
        return capability.upper() not in hidden and bool(real(self, capability))

    def no_move(self: IMAPClient, messages: object, folder: str) -> None:
        raise AssertionError("MOVE used although not advertised")

    monkeypatch.setattr(IMAPClient, "has_capability", has_capability)
    monkeypatch.setattr(IMAPClient, "move", no_move)
    sent = [message(n) for n in (1, 2)]
    for raw in sent:
        dovecot.append("INBOX", raw)
    poller = ImapPoller(dovecot.settings(), Recorder(fail_on=sent[0]))
    try:
        assert poller.poll_once() == 1
    finally:
        poller.close()
    assert dovecot.messages("INBOX") == [sent[0]]
    assert dovecot.messages("Processed") == [sent[1]]


def test_run_idles_until_mail_arrives_and_stops_promptly(dovecot: Dovecot) -> None:
    dovecot.append("INBOX", message(1))
    store = Recorder()
    stop = threading.Event()
    waits: list[float] = []

    def wait(seconds: float) -> bool:
        waits.append(seconds)
        return stop.wait(seconds)

    # An hour-long interval: within the deadline only IDLE can notice the second message.
    poller = ImapPoller(dovecot.settings(poll_interval=3600.0), store, wait=wait)
    thread = start(poller, stop)
    try:
        store.wait_for(1)
        dovecot.append("INBOX", message(2))
        assert store.wait_for(2) == [message(1), message(2)]
    finally:
        stop.set()
    assert joined(thread) < 3.0
    assert waits == []
    assert dovecot.messages("Processed") == [message(1), message(2)]


def test_mail_that_comes_while_a_poll_moves_mail_does_not_wait_for_idle_refresh(
    dovecot: Dovecot,
) -> None:
    """A message delivered between a poll's SEARCH and its MOVE is announced in the
    MOVE's responses, which IDLE never repeats: the poller must look again first."""
    dovecot.append("INBOX", message(1))
    store = Recorder()

    def store_while_more_arrives(raw: bytes) -> object:
        stored = store(raw)
        if raw == message(1):
            dovecot.append("INBOX", message(2))  # lands before message 1 is moved
        return stored

    stop = threading.Event()
    poller = ImapPoller(dovecot.settings(poll_interval=3600.0), store_while_more_arrives)
    thread = start(poller, stop)
    try:
        assert store.wait_for(2) == [message(1), message(2)]
    finally:
        stop.set()
    joined(thread)
    assert dovecot.messages("Processed") == [message(1), message(2)]


def test_run_without_idle_waits_poll_interval(dovecot: Dovecot) -> None:
    dovecot.append("INBOX", message(1))
    store = Recorder()
    stop = threading.Event()
    waits: list[float] = []

    def wait(seconds: float) -> bool:
        waits.append(seconds)
        if len(waits) == 1:
            dovecot.append("INBOX", message(2))
            return False
        stop.set()
        return True

    on_stored: list[int] = []
    settings = dovecot.settings(idle=False, poll_interval=42.0)
    poller = ImapPoller(settings, store, on_stored=lambda: on_stored.append(1), wait=wait)
    poller.run(stop)
    assert store.stored == [message(1), message(2)]
    assert waits == [42.0, 42.0]
    assert on_stored == [1, 1]


def test_failed_store_is_retried_after_poll_interval_not_idle(dovecot: Dovecot) -> None:
    # IDLE would only wake for new mail; a message the store refused must not wait for that.
    dovecot.append("INBOX", message(1))
    store = Recorder(fail_on=message(1))
    stop = threading.Event()
    waits: list[float] = []

    def wait(seconds: float) -> bool:
        waits.append(seconds)
        store.fail_on = None
        return False

    def stored_then_stop(raw: bytes) -> object:
        result = store(raw)
        stop.set()
        return result

    thread = start(
        ImapPoller(dovecot.settings(poll_interval=30.0), stored_then_stop, wait=wait), stop
    )
    try:
        store.wait_for(1)
    finally:
        stop.set()
    joined(thread)
    assert waits == [30.0]
    assert store.stored == [message(1)]
    assert dovecot.messages("Processed") == [message(1)]


def test_unexpected_error_backs_off_instead_of_ending_run(
    dovecot: Dovecot, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_search = IMAPClient.search
    calls: list[int] = []

    def search(self: IMAPClient, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("a bug")
        return real_search(self, *args, **kwargs)

    monkeypatch.setattr(IMAPClient, "search", search)
    dovecot.append("INBOX", message(1))
    store = Recorder()
    stop = threading.Event()
    waits: list[float] = []

    def wait(seconds: float) -> bool:
        waits.append(seconds)
        return len(waits) > 1

    ImapPoller(dovecot.settings(idle=False, poll_interval=9.0), store, wait=wait).run(stop)
    assert waits == [1.0, 9.0]
    assert store.stored == [message(1)]
    assert "imap poller failed" in caplog.text and "ValueError: a bug" in caplog.text


def nothing_listening() -> ImapSettings:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return ImapSettings(host="127.0.0.1", port=port, ssl=False, username="u", password="p")


def test_backoff_doubles_to_the_cap_without_sleeping() -> None:
    settings = nothing_listening()
    with pytest.raises(ConnectionRefusedError):
        ImapPoller(settings, Recorder()).poll_once()

    stop = threading.Event()
    waits: list[float] = []

    def wait(seconds: float) -> bool:
        waits.append(seconds)
        return len(waits) >= 7

    poller = ImapPoller(settings, Recorder(), backoff_initial=1.0, backoff_max=10.0, wait=wait)
    started = time.monotonic()
    poller.run(stop)
    assert time.monotonic() - started < 2.0
    assert waits == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]


def test_reconnects_after_server_restart_and_resets_backoff(dovecot: Dovecot) -> None:
    dovecot.append("INBOX", message(1))
    store = Recorder()
    stop = threading.Event()
    waits: list[float] = []

    def restart() -> None:
        dovecot.start()
        dovecot.append("INBOX", message(2))

    steps: list[Callable[[], object]] = [
        dovecot.stop,  # after the first poll: the live connection breaks
        lambda: None,  # back-off 1: still down
        restart,  # back-off 2
        dovecot.stop,  # after the poll that stored message 2
        stop.set,  # back-off restarted at 1
    ]

    def wait(seconds: float) -> bool:
        waits.append(seconds)
        steps[len(waits) - 1]()
        return stop.is_set()

    settings = dovecot.settings(idle=False, poll_interval=60.0)
    ImapPoller(settings, store, backoff_initial=1.0, wait=wait).run(stop)
    assert waits == [60.0, 1.0, 2.0, 60.0, 1.0]
    assert store.stored == [message(1), message(2)]


@pytest.mark.parametrize("hard", [False, True], ids=["bye", "dropped"])
def test_idle_survives_server_restart(
    dovecot: Dovecot, monkeypatch: pytest.MonkeyPatch, hard: bool
) -> None:
    idling = threading.Event()
    real_idle_check = IMAPClient.idle_check

    def idle_check(self: IMAPClient, timeout: float | None = None) -> list[Any]:
        idling.set()
        return list(real_idle_check(self, timeout))

    monkeypatch.setattr(IMAPClient, "idle_check", idle_check)
    dovecot.append("INBOX", message(1))
    store = Recorder()
    stop = threading.Event()
    waits: list[float] = []
    stopped = threading.Event()

    def wait(seconds: float) -> bool:
        waits.append(seconds)
        # The poller notices the drop while the test thread is still inside stop().
        assert stopped.wait(DEADLINE)
        dovecot.start()
        dovecot.append("INBOX", message(2))
        return stop.is_set()

    thread = start(ImapPoller(dovecot.settings(), store, wait=wait), stop)
    try:
        assert idling.wait(DEADLINE)
        # In IDLE, the poller gets BYE (or, hard, a bare EOF) and must reconnect.
        dovecot.stop(hard=hard)
        stopped.set()
        assert store.wait_for(2) == [message(1), message(2)]
    finally:
        stop.set()
    joined(thread)
    assert waits == [1.0]
    assert dovecot.messages("Processed") == [message(1), message(2)]


def test_connection_lost_before_move_stores_again(dovecot: Dovecot) -> None:
    """At least once: stored but not moved means stored again; the store dedupes."""
    dovecot.append("INBOX", message(1))
    stop = threading.Event()
    stored: list[bytes] = []

    def store(raw: bytes) -> object:
        stored.append(raw)
        if len(stored) == 1:
            dovecot.stop(hard=True)  # the MOVE that follows cannot happen
        return None

    def wait(seconds: float) -> bool:
        if not dovecot.running:
            dovecot.start()
            return False
        stop.set()
        return True

    settings = dovecot.settings(idle=False)
    ImapPoller(settings, store, wait=wait).run(stop)
    assert stored == [message(1), message(1)]
    assert dovecot.messages("INBOX") == []
    assert dovecot.messages("Processed") == [message(1)]


def test_password_never_logged(dovecot: Dovecot, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # imapclient's protocol trace included
    sent = [message(n) for n in (1, 2)]
    for raw in sent:
        dovecot.append("INBOX", raw)
    poller = ImapPoller(dovecot.settings(), Recorder(fail_on=sent[0]))
    try:
        poller.poll_once()
    finally:
        poller.close()
    wrong = "wrong-" + dovecot.password
    with pytest.raises(IMAPClient.Error):
        ImapPoller(dovecot.settings(password=wrong), Recorder()).poll_once()

    ours = [r.getMessage() for r in caplog.records if r.name == "maildesk.inbound.imap"]
    assert any(line.startswith("imap connected to") for line in ours)
    assert any(line.startswith("imap poll INBOX: 2 found, 1 stored, 1 left") for line in ours)
    assert "LOGIN" in caplog.text  # the trace was really captured
    assert dovecot.password not in caplog.text
    assert wrong not in caplog.text


def test_a_folder_of_thousands_is_polled_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """Limits that grew with the folder, met here by 2,500 messages under limits cut
    to 8 KB, a tenth of the time:
    - 13,000 waiting messages (maildesk down for a day behind a busy address): the
      UIDs of one FETCH of their sizes made a command over Dovecot's 64 KB line limit;
    - about 160,000: one SEARCH answered with a line of their UIDs over imaplib's 1 MB;
    either way every poll failed and none was ever stored. Searched here 500 message
    numbers at a time."""
    monkeypatch.setattr(imaplib, "_MAXLINE", 8192)
    monkeypatch.setattr(imap, "SEARCH_WINDOW", 500)
    sent = [
        b"Subject: m%d\r\nMessage-ID: <m%d@example.org>\r\n\r\nbody\r\n" % (n, n)
        for n in range(2_500)
    ]
    store = Recorder()
    with Dovecot(max_line_length=8192) as dovecot:
        dovecot.deliver_many(sent)
        poller = ImapPoller(dovecot.settings(), store)
        try:
            assert poller.poll_once() == len(sent)
        finally:
            poller.close()
        assert dovecot.messages("INBOX") == []
    assert store.stored == sent  # in the order they came


def test_a_message_over_the_size_limit_is_moved_aside_unfetched(dovecot: Dovecot) -> None:
    """SMTP answers 552 to a message over `[smtp] max_message_size`; IMAP fetched it whole
    (a 200 MB one cost the poller 236 MB), stored it, and it was quarantined later."""
    large = message(2) + b"x" * 76 * 2000
    sent = [message(1), large, message(3)]
    for raw in sent:
        dovecot.append("INBOX", raw)
    store = Recorder()
    poller = ImapPoller(dovecot.settings(), store, max_size=100_000)
    try:
        assert poller.poll_once() == 2
    finally:
        poller.close()
    assert len(large) > 100_000
    assert store.stored == [message(1), message(3)]
    assert dovecot.messages("INBOX") == []
    assert dovecot.messages("Too-large") == [large]  # nothing lost: ops find it there
    assert [SEEN in f for f in flags(dovecot, "Too-large")] == [False]


# Courier-style: every folder lives under INBOX. (a common hosting setup). An existing
# install has processed_folder = "INBOX.Processed"; the new default too_large_folder
# "Too-large" cannot be created there.
_NAMESPACE = """
namespace inbox {
  prefix = INBOX.
  separator = .
  inbox = yes
}
"""


class PrefixedDovecot(Dovecot):
    def _write_config(self) -> None:
        super()._write_config()
        assert self._base is not None
        conf = self._base / "dovecot.conf"
        conf.write_text(conf.read_text() + _NAMESPACE)


@pytest.fixture
def prefixed() -> Iterator[PrefixedDovecot]:
    with PrefixedDovecot() as server:
        yield server


def test_a_too_large_folder_the_server_will_not_create_does_not_stop_all_intake(
    prefixed: PrefixedDovecot,
) -> None:
    """The folder was made at every connect, mail or no mail too large: where the server
    refuses it, the poller never connected, and no mail came in after an upgrade."""
    with prefixed.client() as client:
        with pytest.raises(IMAPClientError):
            client.create_folder("Too-large")  # the server's rule, not ours
    sent = [message(1), message(2)]
    for raw in sent:
        prefixed.append("INBOX", raw)
    store = Recorder()
    poller = ImapPoller(
        prefixed.settings(processed_folder="INBOX.Processed"), store, max_size=25 * 1024 * 1024
    )
    try:
        stored = poller.poll_once()
    finally:
        poller.close()
    # Nothing is too large: ordinary mail must still come in.
    assert stored == 2
    assert store.stored == sent

    # One too large is left where it is, said in the log, and the rest still comes in.
    large = message(3) + b"x" * 76 * 2000
    prefixed.append("INBOX", large)
    prefixed.append("INBOX", message(4))
    poller = ImapPoller(
        prefixed.settings(processed_folder="INBOX.Processed"), store, max_size=100_000
    )
    try:
        assert poller.poll_once() == 1
    finally:
        poller.close()
    assert store.stored == [*sent, message(4)]
    assert prefixed.messages("INBOX") == [large]
