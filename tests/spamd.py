"""A throwaway SpamAssassin spamd for tests, on a free loopback port.

`with SpamdServer() as server:` starts Debian's real spamd (package `spamd`) as a
child process with its home, pid file and log in one temp folder: network tests
off (`-L`), no user configs (`-x`), Bayes and auto-learning off, so a score
depends on the message alone. It is ready when it answers PING, and is stopped
(with its children, which share its process group) on exit. Compiling the rules
makes the start slow, so tests share one per session.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from tests.conftest import free_port

SPAMD = shutil.which("spamd") or ("/usr/sbin/spamd" if Path("/usr/sbin/spamd").exists() else None)
START_DEADLINE = 120.0  # rule compilation on a busy 2-core machine
STOP_DEADLINE = 15.0
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


class SpamdServer:
    def __init__(self) -> None:
        self.host = "127.0.0.1"
        self.port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix="maildesk-spamd-"))
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> SpamdServer:
        assert SPAMD is not None, "spamd is not installed"
        # spamd's children may run as nobody: they must be able to use the home.
        os.chmod(self.base, 0o755)
        log = (self.base / "spamd.log").open("wb")
        self.process = subprocess.Popen(
            [
                SPAMD,
                "--local",
                "--nouser-config",
                f"--listen={self.host}:{self.port}",
                f"--pidfile={self.base / 'spamd.pid'}",
                f"--helper-home-dir={self.base}",
                "--syslog=stderr",
                "--cf=use_bayes 0",
                "--cf=bayes_auto_learn 0",
                "--max-children=2",
                "--min-children=1",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: stopped with its children
        )
        log.close()
        deadline = time.monotonic() + START_DEADLINE
        while not self._pong():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise RuntimeError(f"spamd did not start:\n{self.log()[-3000:]}")
            time.sleep(0.1)
        return self

    def _pong(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=2) as sock:
                sock.sendall(b"PING SPAMC/1.5\r\n\r\n")
                return b"PONG" in sock.recv(100)
        except OSError:
            return False

    def log(self) -> str:
        return (self.base / "spamd.log").read_text(errors="replace")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.process is not None:
            self._signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.process.wait()
        shutil.rmtree(self.base, ignore_errors=True)

    def _signal(self, signum: int) -> None:
        """spamd and its children: the process group it was started in."""
        assert self.process is not None
        try:
            os.killpg(self.process.pid, signum)
        except ProcessLookupError:
            pass
