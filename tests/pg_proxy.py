"""A TCP hop between a daemon and the real PostgreSQL, which a test can take away.

PostgreSQL restarting, or failing over, looks to its clients like this: every
connection is cut, and for a while a new one is refused (`down`); `up` lets
connections through again. Only the daemon whose URL names this hop's port is
affected; the rest of the test suite's PostgreSQL goes on.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from types import TracebackType

HOST = "127.0.0.1"
UP, DOWN = "up", "down"


class PgProxy:
    """Context manager: `with PgProxy(5432) as hop: url = hop.url(real_url)`."""

    def __init__(self, upstream_port: int, upstream_host: str = HOST) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((HOST, 0))
        self._listener.listen(128)
        self.port = int(self._listener.getsockname()[1])
        self._state = UP
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._closed = False
        self.refused = 0  # connections refused while down: someone asked for the database
        self._thread = threading.Thread(target=self._accept, name="pg-proxy", daemon=True)

    def url(self, url: str) -> str:
        """`url` (a SQLAlchemy URL of 127.0.0.1:port) through this hop."""
        host_port = f"{self.upstream[0]}:{self.upstream[1]}"
        assert host_port in url, url
        return url.replace(host_port, f"{HOST}:{self.port}")

    def down(self) -> None:
        """Cut every connection (as a server's restart does); refuse new ones until `up`."""
        with self._lock:
            self._state = DOWN
            pairs, self._pairs = self._pairs, []
        for client, server in pairs:
            _reset(client)
            server.close()

    def up(self) -> None:
        """Let connections through again."""
        with self._lock:
            self._state = UP

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                refuse = self._state == DOWN
                self.refused += refuse
            if refuse:
                _reset(client)
            else:
                self._connect(client)

    def _connect(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            _reset(client)
            return
        server.settimeout(None)
        with self._lock:
            self._pairs.append((client, server))
        threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        """Copy bytes both ways until either side closes, or the hop goes down."""
        peers = {client: server, server: client}
        with selectors.DefaultSelector() as selector:
            for sock in peers:
                selector.register(sock, selectors.EVENT_READ)
            while self._alive(client, server):
                for key, _ in selector.select(timeout=0.05):
                    ready = key.fileobj
                    assert isinstance(ready, socket.socket)
                    try:
                        data = ready.recv(65536)
                        if not data:
                            raise ConnectionError
                        peers[ready].sendall(data)
                    except OSError:
                        self._drop(client, server)
                        return

    def _alive(self, client: socket.socket, server: socket.socket) -> bool:
        with self._lock:
            return (client, server) in self._pairs

    def _drop(self, client: socket.socket, server: socket.socket) -> None:
        with self._lock:
            if (client, server) in self._pairs:
                self._pairs.remove((client, server))
        client.close()
        server.close()

    def __enter__(self) -> PgProxy:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._closed = True
        self._listener.close()
        self.down()


def _reset(sock: socket.socket) -> None:
    """Close with a RST, as a server process that died leaves its client."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()
