"""Telling systemd how the daemon is doing: the sd_notify protocol (sd_notify(3)).

A datagram of `KEY=VALUE` lines to the Unix socket named by `NOTIFY_SOCKET`
(a leading `@` means the abstract namespace). Outside systemd the variable is
unset and every call does nothing, so the daemon runs the same on a laptop.

Why our own dozen lines and not a library: `sdnotify` (PyPI) is this same
sender, unreleased since 2017; `systemd-python` needs libsystemd headers and a
compiler to install. The protocol is one `sendto` and is stable since 2010.

The watchdog interval comes from `WATCHDOG_USEC` (set by `WatchdogSec=`), and is
only ours when `WATCHDOG_PID` is unset or is our own pid.
"""

from __future__ import annotations

import os
import socket


class Notifier:
    """Sends state lines to the service manager; a no-op when there is none."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_seconds = _watchdog_seconds(env)

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, **state: str) -> bool:
        """`send(READY="1", STATUS="…")`; False when nobody listens or the send failed."""
        if not self.address:
            return False
        payload = "\n".join(f"{key}={value}" for key, value in state.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(payload, self.address)
        except OSError:
            return False  # a missing manager must never stop mail
        return True

    def ready(self, status: str) -> None:
        self.send(READY="1", STATUS=status, MAINPID=str(os.getpid()))

    def status(self, status: str) -> None:
        self.send(STATUS=status)

    def watchdog(self) -> None:
        self.send(WATCHDOG="1")

    def reloading(self) -> None:
        self.send(RELOADING="1", STATUS="reloading the configuration")

    def stopping(self) -> None:
        self.send(STOPPING="1", STATUS="stopping: finishing messages in flight")


def _watchdog_seconds(env: os._Environ[str] | dict[str, str]) -> float | None:
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 1_000_000
