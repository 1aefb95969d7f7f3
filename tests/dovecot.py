"""A throwaway Dovecot IMAP server for tests, on a free loopback port.

`with Dovecot() as server:` starts a real Dovecot (Debian's dovecot-imapd) whose
config, mail and logs all live in one temp folder, with one user (`support`),
plain-text login and no TLS, and stops it on exit. See
/work/shared/notes/dovecot-for-tests.md for why each setting is there.
"""

from __future__ import annotations

import grp
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
from imapclient import IMAPClient

from maildesk.config import ImapSettings

START_DEADLINE = 15.0
STOP_DEADLINE = 10.0

_CONFIG = """\
base_dir = {base}/run
state_dir = {base}/state
log_path = {base}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
default_login_user = {login_user}
default_internal_user = {internal_user}
default_internal_group = {internal_group}
first_valid_uid = 1
mail_location = maildir:~/Maildir
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {base}/users
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {base}/users
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service anvil {{
  chroot =
}}
"""


def _dovecot_binary() -> str | None:
    # /usr/sbin is often not on a non-root PATH.
    return shutil.which("dovecot") or shutil.which("dovecot", path="/usr/sbin:/usr/local/sbin")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Dovecot:
    """A private Dovecot: `.host .port .username .password`, `append`, `messages`."""

    def __init__(self, username: str = "support", max_line_length: int | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = 0
        self.username = username
        # Unique per server, so a test can grep logs for it.
        self.password = "pw-" + secrets.token_hex(12)
        self._binary = _dovecot_binary()
        self._base: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._max_line = max_line_length

    def __enter__(self) -> Dovecot:
        if self._binary is None:
            pytest.skip("dovecot is not installed (Debian: apt-get install dovecot-imapd)")
        self._base = Path(tempfile.mkdtemp(prefix="maildesk-dovecot-"))
        # The login and mail processes run as other users and must reach their folders.
        self._base.chmod(0o755)
        self.port = _free_port()
        self._write_config()
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if self._base is not None:
            shutil.rmtree(self._base, ignore_errors=True)

    def _write_config(self) -> None:
        assert self._base is not None
        if os.geteuid() == 0:
            # imap-login refuses to run as root; these users come with the package.
            login_user, internal_user = "dovenull", "dovecot"
        else:
            login_user = internal_user = pwd.getpwuid(os.geteuid()).pw_name
        mail_user = pwd.getpwnam(internal_user)
        internal_group = grp.getgrgid(mail_user.pw_gid).gr_name
        home = self._base / "home" / self.username
        home.mkdir(parents=True)
        os.chown(home, mail_user.pw_uid, mail_user.pw_gid)
        (self._base / "users").write_text(
            f"{self.username}:{{PLAIN}}{self.password}:"
            f"{mail_user.pw_uid}:{mail_user.pw_gid}::{home}::\n"
        )
        # Dovecot's limit on one command (64 KB by default), lowered by tests that need
        # a command over it without thousands of messages.
        limit = "" if self._max_line is None else f"imap_max_line_length = {self._max_line}\n"
        (self._base / "dovecot.conf").write_text(
            _CONFIG.format(
                base=self._base,
                port=self.port,
                login_user=login_user,
                internal_user=internal_user,
                internal_group=internal_group,
            )
            + limit
        )

    def start(self) -> None:
        """Start (or restart after `stop`) on the same port, and wait for its greeting."""
        assert self._base is not None and self._binary is not None
        output = (self._base / "dovecot.out").open("ab")
        with output:
            # -F keeps the master in the foreground, so its pid is ours to stop; its own
            # session makes that pid also the id of a group holding every Dovecot process.
            self._process = subprocess.Popen(
                [self._binary, "-F", "-c", str(self._base / "dovecot.conf")],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_DEADLINE
        while not self._greets():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"dovecot did not start on port {self.port}:\n{self.log()}")
            time.sleep(0.05)

    def stop(self, *, hard: bool = False) -> None:
        """Stop every process of this Dovecot and wait until the port is closed.

        Signalling only the master is not enough: Dovecot 2.3's post-login `imap` processes
        outlive it and keep serving their connections. So the whole process group (the id of
        the master we started) gets SIGTERM, as a machine going down would drop every client;
        an IDLE client gets "* BYE" first. `hard=True` sends SIGKILL: connections just drop.
        """
        process, self._process = self._process, None
        if process is None:
            return
        group = process.pid
        self._signal_group(group, signal.SIGKILL if hard else signal.SIGTERM)
        try:
            process.wait(timeout=STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            self._signal_group(group, signal.SIGKILL)
            process.wait(timeout=STOP_DEADLINE)
        deadline = time.monotonic() + STOP_DEADLINE
        while self._group_alive(group) or self._accepts():
            if time.monotonic() > deadline:
                self._signal_group(group, signal.SIGKILL)
                raise RuntimeError(f"dovecot (group {group}, port {self.port}) still up after stop")
            time.sleep(0.02)

    @staticmethod
    def _signal_group(group: int, signum: int) -> None:
        try:
            os.killpg(group, signum)
        except ProcessLookupError:
            pass  # already gone

    @staticmethod
    def _group_alive(group: int) -> bool:
        """Whether a process of the group still runs (zombies waiting for init do not count)."""
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                # After the ")" closing the command name: state, ppid, pgrp, ...
                state, _ppid, pgrp = stat.read_text().rpartition(")")[2].split()[:3]
            except (OSError, ValueError):
                continue  # exited while we looked
            if int(pgrp) == group and state != "Z":
                return True
        return False

    @property
    def running(self) -> bool:
        return self._process is not None

    def _accepts(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def _greets(self) -> bool:
        """True once a connection gets the IMAP greeting (imap-login is really serving)."""
        try:
            with socket.create_connection((self.host, self.port), timeout=1.0) as sock:
                return sock.recv(64).startswith(b"* OK")
        except OSError:
            return False

    def log(self) -> str:
        assert self._base is not None
        parts = [self._base / "dovecot.out", self._base / "dovecot.log"]
        return "\n".join(p.read_text(errors="replace") for p in parts if p.exists())

    def config(self) -> dict[str, Any]:
        """The `[imap]` table of a config polling this server (plain IMAP, no TLS)."""
        return {
            "host": self.host,
            "port": self.port,
            "ssl": False,
            "username": self.username,
            "password": self.password,
        }

    def settings(self, **overrides: Any) -> ImapSettings:
        """`ImapSettings` pointing at this server (plain IMAP, no TLS)."""
        return ImapSettings(**{**self.config(), **overrides})

    def client(self) -> IMAPClient:
        """A logged-in client; use it as a context manager."""
        client = IMAPClient(self.host, port=self.port, ssl=False, timeout=10)
        client.login(self.username, self.password)
        return client

    def append(self, folder: str, raw: bytes) -> None:
        """Deliver `raw` into `folder` (created if missing) with IMAP APPEND."""
        with self.client() as client:
            if not client.folder_exists(folder):
                client.create_folder(folder)
            client.append(folder, raw)

    def deliver_many(self, raws: list[bytes]) -> None:
        """Put `raws` in INBOX as a local delivery agent does: a file each in the Maildir's
        new/ (thousands in seconds, where an APPEND each takes a round trip)."""
        assert self._base is not None
        home = self._base / "home" / self.username
        owner = home.stat()
        new = home / "Maildir" / "new"
        for folder in (new.parent, new, new.parent / "cur", new.parent / "tmp"):
            folder.mkdir(exist_ok=True)
            os.chown(folder, owner.st_uid, owner.st_gid)
        for n, raw in enumerate(raws):
            path = new / f"{1_700_000_000 + n}.M{n}P{os.getpid()}.maildesk-test"
            path.write_bytes(raw)
            os.chown(path, owner.st_uid, owner.st_gid)

    def messages(self, folder: str) -> list[bytes]:
        """The raw messages in `folder`, in UID order ([] if the folder does not exist)."""
        with self.client() as client:
            if not client.folder_exists(folder):
                return []
            client.select_folder(folder, readonly=True)
            uids = sorted(client.search("ALL"))
            fetched = client.fetch(uids, ["BODY.PEEK[]"]) if uids else {}
            return [fetched[uid][b"BODY[]"] for uid in uids]
