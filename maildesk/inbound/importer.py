"""`maildesk import`: old mail from an mbox file or a Maildir folder.

Messages are stored in batches through the same inbound store as live mail
and processed by the same pipeline. Exact byte strings already stored are
skipped, and the pipeline ignores Message-IDs it has, so a re-run imports
nothing twice. Notifications are off unless asked for: importing old mail
must not write to customers.
"""

from __future__ import annotations

import mailbox
from collections.abc import Iterator
from pathlib import Path

from maildesk.inbound.store import Envelope, InboundStore, digest

BATCH = 200


def count(path: Path) -> int:
    return len(_open(path))


def read_messages(path: Path) -> Iterator[bytes]:
    box = _open(path)
    try:
        for key in box.iterkeys():
            yield box.get_bytes(key)
    finally:
        box.close()


def _open(path: Path) -> mailbox.Mailbox:
    if path.is_dir():
        if not (path / "cur").is_dir() and not (path / "new").is_dir():
            raise ValueError(f"{path} is a folder but not a Maildir (no cur/ or new/)")
        return mailbox.Maildir(str(path), factory=None, create=False)
    if not path.exists():
        raise ValueError(f"{path} does not exist")
    return mailbox.mbox(str(path), factory=None, create=False)


def store_batch(store: InboundStore, raws: list[bytes], notify: bool) -> int:
    """Store the messages not stored before; returns how many were new."""
    known = store.known_digests([digest(raw) for raw in raws])
    fresh = list({digest(raw): raw for raw in raws if digest(raw) not in known}.values())
    if fresh:
        store.put_many(fresh, Envelope(source="import", notify=notify))
    return len(fresh)
