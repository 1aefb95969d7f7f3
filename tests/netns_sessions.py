"""Run inside a network namespace of its own (`unshare -rn`, see
tests/inbound/test_smtp_limits.py), whose loopback holds `2001:db8::1-4/64` and
`2001:db8:1::2/64`: a daemon listening on `::` with at most two sessions per client,
and clients connecting from those addresses. Prints, one line per client in order,
the first reply it got."""

from __future__ import annotations

import socket
import sys
import tempfile
from pathlib import Path

from maildesk import config
from maildesk.clock import ManualClock
from tests.conftest import free_port, running_daemon

SOURCES = ("2001:db8::2", "2001:db8::3", "2001:db8::4", "2001:db8:1::2")


def main() -> None:
    folder = Path(tempfile.mkdtemp())
    port = free_port()
    values = {
        "support": {"address": "support@example.test", "base_url": "http://127.0.0.1:1"},
        "database": {"url": f"sqlite:///{folder / 'maildesk.db'}"},
        "smtp": {"host": "::", "port": port, "max_sessions": 20, "max_sessions_per_ip": 2},
        "web": {"enabled": False, "secret_key": "test-secret-key"},
        "outbound": {"url": f"maildir:{folder / 'outbox'}"},
        "limits": {"accept_min_free_mb": 0},
        "workers": {"count": 0},
    }
    settings = config.from_mapping(values, base_dir=folder)
    held = []
    with running_daemon(settings, ManualClock()):
        for source in SOURCES:
            client = socket.socket(socket.AF_INET6)
            client.settimeout(10)
            client.bind((source, 0))
            client.connect(("2001:db8::1", port))
            held.append(client)
            print(client.makefile("rb").readline().decode().strip(), flush=True)
        for client in held:
            client.close()
    sys.exit(0)


if __name__ == "__main__":
    main()
