"""Room on disk for new mail: below a reserve, every door refuses new mail for now.

A flood (a spam wave, a bounce storm, a customer's mail loop) is accepted at
the speed of the disk, faster than it is processed. Unchecked, it fills the
disk, and then nothing works: no ticket is recorded, no mail is sent, and
SQLite cannot even checkpoint its WAL. So when the free space on the
database's disk, less the message, would fall below `[limits]
accept_min_free_mb`, new mail is refused as a temporary failure, as Postfix's
`queue_minfree` does: SMTP and LMTP answer 452 4.3.1 (at MAIL when nothing or
its SIZE does not fit, else at the end of DATA), `deliver` exits 75, the IMAP poller
leaves the mail on the server unread, an import stops where it was, and a
portal reply is not taken. Senders retry later; meanwhile processing and
sending work in the room the reserve keeps.

Only a disk this process can see is watched: the folder of an SQLite
database. A PostgreSQL server's disk is its administrator's to watch.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from maildesk.config import Settings

log = logging.getLogger("maildesk.inbound.room")

MB = 1024 * 1024


class NoRoom(Exception):
    """The message would leave less free disk than the reserve: refuse it for now."""


class Room:
    """The free space of the disk holding `folder`, against a reserve of `reserve_mb`."""

    def __init__(self, folder: Path, reserve_mb: int) -> None:
        self.folder = folder
        self.reserve_mb = reserve_mb
        # Logged when refusing starts and when it ends, not per message: under a flood a
        # line per refusal would itself fill the disk.
        self._refusing = False

    def free_bytes(self) -> int:
        return free_bytes(self.folder)

    def fits(self, size: int) -> bool:
        """Whether `size` more bytes leave at least the reserve free (one statvfs call,
        under 2 µs here, so every message is checked against the disk as it is now)."""
        if self.reserve_mb <= 0:
            return True
        reserve = self.reserve_mb * MB
        free = self.free_bytes()
        fits = free - max(size, 0) >= reserve
        if not fits and not self._refusing and free < reserve:  # full, not just too big
            self._refusing = True
            log.warning(
                "free disk %d MB is below the reserve of %d MB ([limits] accept_min_free_mb):"
                " new mail is refused for now",
                free // MB,
                self.reserve_mb,
            )
        elif fits and self._refusing:
            self._refusing = False
            log.info("free disk %d MB is above the reserve again: new mail is taken", free // MB)
        return fits

    def check(self, size: int) -> None:
        """Raise `NoRoom` unless `fits(size)`."""
        if not self.fits(size):
            free = self.free_bytes() // MB
            raise NoRoom(
                f"free disk {free} MB less {max(size, 0) // MB} MB of mail would be below"
                f" the reserve of {self.reserve_mb} MB ([limits] accept_min_free_mb)"
            )


def free_bytes(folder: Path) -> int:
    """Free bytes an unprivileged writer may use on the disk holding `folder`. A folder
    not made yet (before `init`) is measured at its nearest parent that exists, on
    the disk it will be on."""
    for candidate in (folder, *folder.parents):
        try:
            stat = os.statvfs(candidate)
        except FileNotFoundError:
            continue
        return stat.f_bavail * stat.f_frsize
    return 0


def for_settings(settings: Settings) -> Room | None:
    """The room to watch for the configured database: its folder's disk on SQLite, none
    elsewhere, and none when the reserve is off."""
    path, reserve_mb = settings.sqlite_path, settings.limits.accept_min_free_mb
    if path is None or reserve_mb <= 0:
        return None
    return Room(path.parent, reserve_mb)
