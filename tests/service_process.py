"""`maildesk serve` as systemd runs it: a subprocess whose NOTIFY_SOCKET is a datagram
socket the test owns, so the test reads exactly what the service manager would."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

from tests.conftest import wait_for

MAILDESK = [sys.executable, "-m", "maildesk"]


class NotifySocket:
    """A datagram socket in the abstract namespace; collects every state line sent to it."""

    def __init__(self) -> None:
        self.name = f"@maildesk-test-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name[1:])
        self.sock.settimeout(0.1)
        self.messages: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            with self._lock:
                self.messages.append(fields)

    def seen(self, key: str, value: str | None = None) -> list[dict[str, str]]:
        with self._lock:
            return [m for m in self.messages if key in m and (value is None or m[key] == value)]

    def wait(self, key: str, value: str | None = None, count: int = 1) -> dict[str, str]:
        found = wait_for(
            lambda: len(self.seen(key, value)) >= count and self.seen(key, value),
            30,
            f"{count} x {key}={value or '*'} on NOTIFY_SOCKET",
        )
        return dict(found[count - 1])

    def close(self) -> None:
        self._closed = True
        self.sock.close()


class ServiceProcess:
    """One `maildesk serve`, its stderr in a file."""

    def __init__(self, config: Path, notify: NotifySocket | None, watchdog_usec: int = 0) -> None:
        self.config = config
        self.stderr_path = config.parent / f"stderr-{uuid.uuid4().hex[:6]}.log"
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
        if notify is not None:
            env["NOTIFY_SOCKET"] = notify.name
        if watchdog_usec:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        with self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [*MAILDESK, "--config", str(config), "serve"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=config.parent,
                env=env,
            )

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def signal(self, sig: signal.Signals) -> None:
        os.kill(self.proc.pid, sig)

    def wait(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
