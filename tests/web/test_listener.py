"""The web listener against slowloris and connection floods (issue 7, #12).

Raw sockets, as an attacker would use them: a request whose headers or body
trickle in (or never come) must be closed, and connections beyond
`[web] max_connections` refused, without the listener stopping to serve
everyone else.
"""

from __future__ import annotations

import selectors
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from tests.conftest import RunningDaemon, free_port, wait_for

REQUEST = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
# A login form promising 100 kB, of which only its first field comes.
SLOW_POST = (
    b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100000\r\n\r\nemail="
)


def connect(daemon: RunningDaemon) -> socket.socket:
    web = daemon.services.settings.web
    return socket.create_connection((web.host, web.port), timeout=10)


def readable(sock: socket.socket, within: float) -> bool:
    """Whether `sock` has something to read (or was closed) within `within` seconds.
    (By epoll: `select` refuses a descriptor past 1023, which a long test run reaches.)"""
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ)
        return bool(selector.select(within))


def hung_up(sock: socket.socket, within: float) -> bool:
    """Whether the server closed the connection (waiting at most `within` seconds)."""
    if not readable(sock, within):
        return False
    try:
        return sock.recv(4096) == b""
    except ConnectionResetError:
        return True


def answer(sock: socket.socket, within: float) -> bytes:
    """All the server sends before it hangs up; fails if it is still talking after `within` s."""
    sock.settimeout(within)
    received = b""
    while chunk := sock.recv(4096):
        received += chunk
    return received


def status_of(daemon: RunningDaemon) -> bytes:
    with connect(daemon) as sock:
        sock.sendall(REQUEST)
        return sock.recv(64).split(b"\r\n")[0]


class TestSlowHeaders:
    @pytest.fixture
    def config_values(self, config_values: dict[str, Any]) -> dict[str, Any]:
        config_values["web"]["header_timeout"] = 1.0
        return config_values

    def test_a_request_whose_headers_trickle_in_is_closed(self, daemon: RunningDaemon) -> None:
        lines = 150  # 30 s at one header line per 0.2 s: far beyond the 1 s allowed
        with connect(daemon) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            for sent in range(lines):
                try:
                    sock.sendall(b"X-Slow: %d\r\n" % sent)
                except (BrokenPipeError, ConnectionResetError):
                    break
                if hung_up(sock, within=0.2):  # the pace of the trickle, not a wait for us
                    break
            else:
                pytest.fail("the server kept a trickling request open for 30 s")
        assert status_of(daemon) == b"HTTP/1.1 200 OK"  # everyone else is served

    def test_a_connection_that_sends_nothing_is_closed(self, daemon: RunningDaemon) -> None:
        with connect(daemon) as sock:
            assert hung_up(sock, within=30)


class TestConnectionCap:
    @pytest.fixture
    def config_values(self, config_values: dict[str, Any]) -> dict[str, Any]:
        config_values["web"]["max_connections"] = 4
        config_values["web"]["header_timeout"] = 120.0
        return config_values

    @pytest.fixture
    def idle(self, daemon: RunningDaemon) -> Iterator[list[socket.socket]]:
        with ExitStack() as stack:
            yield [stack.enter_context(connect(daemon)) for _ in range(4)]

    def test_connections_beyond_the_cap_are_refused_until_one_closes(
        self, daemon: RunningDaemon, idle: list[socket.socket]
    ) -> None:
        assert status_of(daemon) == b"HTTP/1.1 503 Service Unavailable"
        idle.pop().close()
        wait_for(lambda: status_of(daemon) == b"HTTP/1.1 200 OK", what="a free slot")


def connect_from(daemon: RunningDaemon, source: str) -> socket.socket:
    """A connection from another loopback address (Linux routes all of 127/8 to lo)."""
    web = daemon.services.settings.web
    return socket.create_connection((web.host, web.port), timeout=10, source_address=(source, 0))


def status_from(daemon: RunningDaemon, source: str) -> bytes:
    with connect_from(daemon, source) as sock:
        sock.sendall(REQUEST)
        return sock.recv(64).split(b"\r\n")[0]


class TestConnectionsPerAddress:
    """One client's sockets, each held until its deadline and opened again, took every
    connection: the portal and /healthz answered 503 to everyone else."""

    @pytest.fixture
    def config_values(self, config_values: dict[str, Any]) -> dict[str, Any]:
        config_values["web"].update(
            max_connections=10,
            max_connections_per_ip=3,
            header_timeout=120.0,
            trusted_proxies=["127.0.0.3"],
        )
        return config_values

    def test_one_address_gets_its_share_and_everyone_else_is_served(
        self, daemon: RunningDaemon
    ) -> None:
        with ExitStack() as stack:
            for _ in range(3):
                stack.enter_context(connect_from(daemon, "127.0.0.2"))
            assert status_from(daemon, "127.0.0.2") == b"HTTP/1.1 503 Service Unavailable"
            assert status_from(daemon, "127.0.0.1") == b"HTTP/1.1 200 OK"
        wait_for(lambda: status_from(daemon, "127.0.0.2") == b"HTTP/1.1 200 OK", what="a slot")

    def test_a_trusted_proxy_speaks_for_many_clients(self, daemon: RunningDaemon) -> None:
        with ExitStack() as stack:
            for _ in range(5):
                stack.enter_context(connect_from(daemon, "127.0.0.3"))
            assert status_from(daemon, "127.0.0.3") == b"HTTP/1.1 200 OK"


class TestTheMetricsListener:
    """`[metrics] port`'s listener had none of these guards: a client that could reach it
    held each connection for aiohttp's 75 s, as many as it opened (file descriptors of
    serve, which takes the mail too). It has the web listener's deadline for headers
    and caps, counted on its own."""

    @pytest.fixture
    def config_values(self, config_values: dict[str, Any]) -> dict[str, Any]:
        config_values["metrics"]["port"] = free_port()
        config_values["web"].update(max_connections_per_ip=3, header_timeout=1.0)
        return config_values

    def test_it_closes_idle_connections_and_caps_them_per_address(
        self, daemon: RunningDaemon
    ) -> None:
        metrics = daemon.services.settings.metrics
        wait_for(lambda: _answers(metrics.port, "127.0.0.1"), what="the metrics listener")
        with socket.create_connection((metrics.host, metrics.port), timeout=10) as sock:
            assert hung_up(sock, within=10)  # sent nothing: closed after the 1 s deadline
        with ExitStack() as stack:
            for _ in range(3):
                stack.enter_context(
                    socket.create_connection(
                        (metrics.host, metrics.port), timeout=10, source_address=("127.0.0.2", 0)
                    )
                )
            assert _status(metrics.port, "127.0.0.2") == b"HTTP/1.1 503 Service Unavailable"
            assert _status(metrics.port, "127.0.0.1") == b"HTTP/1.1 200 OK"


def _status(port: int, source: str) -> bytes:
    address = ("127.0.0.1", port)
    with socket.create_connection(address, timeout=10, source_address=(source, 0)) as sock:
        sock.sendall(REQUEST)
        return sock.recv(64).split(b"\r\n")[0]


def _answers(port: int, source: str) -> bool:
    try:
        return _status(port, source) == b"HTTP/1.1 200 OK"
    except OSError:
        return False


class TestSlowBodies:
    @pytest.fixture
    def config_values(self, config_values: dict[str, Any]) -> dict[str, Any]:
        config_values["web"]["body_timeout"] = 1.0
        config_values["web"]["header_timeout"] = 120.0  # only the body's deadline ends these
        config_values["web"]["max_connections"] = 4
        return config_values

    def test_bodies_that_never_come_are_answered_408_and_closed(
        self, daemon: RunningDaemon
    ) -> None:
        with ExitStack() as stack:
            every_slot = [stack.enter_context(connect(daemon)) for _ in range(4)]
            for sock in every_slot:
                sock.sendall(SLOW_POST)
            for sock in every_slot:
                assert answer(sock, within=30).startswith(b"HTTP/1.1 408 ")
        wait_for(lambda: status_of(daemon) == b"HTTP/1.1 200 OK", what="the slots back")

    def test_a_body_that_trickles_in_is_answered_408_and_closed(
        self, daemon: RunningDaemon
    ) -> None:
        with connect(daemon) as sock:
            sock.sendall(SLOW_POST)
            for _ in range(150):  # 30 s at a byte per 0.2 s: far beyond the 1 s allowed
                if readable(sock, 0.2):  # the trickle's pace
                    break
                sock.sendall(b"a")
            else:
                pytest.fail("the server kept a trickling body open for 30 s")
            assert answer(sock, within=30).startswith(b"HTTP/1.1 408 ")


class TestUnreadAnswers:
    @pytest.fixture
    def config_values(self, config_values: dict[str, Any]) -> dict[str, Any]:
        config_values["web"].update(
            body_timeout=1.0, header_timeout=120.0, max_connections=6, max_connections_per_ip=2
        )
        return config_values

    def test_clients_that_never_read_their_answers_lose_their_connections(
        self, daemon: RunningDaemon
    ) -> None:
        """Three addresses each ask for 3,000 pages at once on both of their connections
        and read none: every slot is theirs, while our answers wait. Once they have read
        nothing for `body_timeout`, the slots come back to everyone else."""
        with ExitStack() as stack:
            for attacker in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
                for _ in range(2):
                    sock = stack.enter_context(unread(daemon, attacker))
                    sock.sendall(KEEP_ALIVE * 3000)
            wait_for(lambda: status_of(daemon) == b"HTTP/1.1 200 OK", 30, "a slot back")

    def test_a_client_that_reads_slowly_keeps_its_connection(self, daemon: RunningDaemon) -> None:
        """Reading a little at a time, for longer than `body_timeout` in all, is reading."""
        with connect(daemon) as sock:
            sock.sendall(KEEP_ALIVE * 100)
            received = b""
            started = time.monotonic()
            while received.count(b"HTTP/1.1 200 OK") < 100:
                chunk = sock.recv(16384)
                assert chunk, "the server dropped a client that was reading"
                received += chunk
                time.sleep(0.05)  # the client's pace: about 300 kB a second at most
            assert time.monotonic() - started > 1.0  # longer than the deadline in all


# A request that keeps its connection open for the next one (pipelined).
KEEP_ALIVE = b"GET /login HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def unread(daemon: RunningDaemon, source: str) -> socket.socket:
    """A connection from `source` whose receive buffer is small: it fills at once."""
    web = daemon.services.settings.web
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.bind((source, 0))
    sock.connect((web.host, web.port))
    return sock
