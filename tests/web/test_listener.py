"""The web listener against slowloris and connection floods (issue 7, #12).

Raw sockets, as an attacker would use them: a request whose headers trickle
in must be closed, and connections beyond `[web] max_connections` refused,
without the listener stopping to serve everyone else.
"""

from __future__ import annotations

import select
import socket
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from tests.conftest import RunningDaemon, wait_for

REQUEST = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


def connect(daemon: RunningDaemon) -> socket.socket:
    web = daemon.services.settings.web
    return socket.create_connection((web.host, web.port), timeout=10)


def hung_up(sock: socket.socket, within: float) -> bool:
    """Whether the server closed the connection (waiting at most `within` seconds)."""
    readable, _, _ = select.select([sock], [], [], within)
    if not readable:
        return False
    try:
        return sock.recv(4096) == b""
    except ConnectionResetError:
        return True


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
