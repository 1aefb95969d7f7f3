"""`maildesk import`: old mail from an mbox file or a Maildir folder.

Messages are stored in batches through the same inbound store as live mail
and processed by the same pipeline, in thread order: an archive is in no
particular order, and a reply processed before its parent would open a ticket
of its own while the parent joins an older one (a split thread). So the
archive is read twice. The first pass reads only each message's ids and date
and sorts the whole batch as a graph (`thread_order`): every message comes
after each message of the archive it answers, and otherwise by date, then by
place in the file. The second pass stores and processes the messages in that
order, so each reply finds its parent's ticket by References. (Imported rows
have proof "import", so their Message-IDs are threading keys.)
One case stays split: a message that answers two conversations already in
different tickets joins the one its nearest reference names (we never merge
tickets on an import's word). Exact byte strings already stored are
skipped, and the pipeline ignores Message-IDs it has, so a re-run imports
nothing twice. Notifications are off unless asked for: importing old mail
must not write to customers.

Several processes (`import --processes N`) process the archive in waves
(`waves`): a message's wave is one more than the wave of every message of the
archive it answers, or of an earlier copy of its Message-ID. Messages of one
wave answer none of each other, so any number of processes may take them in
any order; the next wave is stored once the last one is processed. Each wave
costs the processes a turn each at the database, so small waves one after the
other (a long conversation's later mail) make one round for one process, which
takes them in their order (`rounds`).

The import holds a batch's bytes until it is stored, so a batch (`read_batches`)
ends at `BATCH` messages or before it would pass `BATCH_BYTES` of mail, a larger
message alone: 40 messages of 5 MB, one batch by count, took it to 272 MB. Where
a batch ends splits no thread: batches are cut from the one thread-ordered
stream, and each is processed before the next is stored (with processes, a batch
holds one wave, and each wave is processed before the next is stored).
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import mailbox
import os
import stat
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

from maildesk.inbound.store import Envelope, InboundStore, digest
from maildesk.message import HEADER_END, ThreadHeaders, thread_headers

log = logging.getLogger(__name__)

BATCH = 200
BATCH_BYTES = 16 * 1024 * 1024
# A wave of fewer messages goes to one process, with the small waves next to it: each
# wave costs every process a claim and a commit (about 12 ms a wave here), more than
# a second process saves on so few. A conversation of 300 mails, each answering the
# one before, was 300 waves: 63 messages a second.
SMALL_WAVE = 32


class Round(NamedTuple):
    """Messages processed before any message after them is stored: one wave, taken by
    every process, or small waves one after the other, taken by one (`alone`) in order.
    `size`: how many messages it holds."""

    number: int
    alone: bool
    size: int


def count(path: Path) -> int:
    with contextlib.closing(open_archive(path)) as box:
        return len(box)


def read_rounds(box: mailbox.Mailbox, by_wave: bool = True) -> Iterator[tuple[Round, bytes]]:
    """(round, message) of each message of the archive, round by round (`rounds`).

    In wave order, each wave in `thread_order`; with `by_wave` off, in `thread_order`
    throughout, one round for one process. `box` comes from `open_archive`: its table
    of contents (for an mbox, a read of the whole file) is made once, here or by a
    `len` before.
    """
    keys = list(box.iterkeys())
    headers = [thread_headers(_head(box, key)) for key in keys]
    order = thread_order(headers)
    if by_wave:
        wave = waves(headers, order)
        order.sort(key=wave.__getitem__)  # stable: thread order within a wave
        round_of = rounds(wave)
        turns = [round_of[wave[index]] for index in order]
    else:
        turns = [Round(0, alone=True, size=len(order))] * len(order)
    for turn, index in zip(turns, order, strict=True):
        yield turn, _whole(box, keys[index])


def rounds(wave: Sequence[int]) -> list[Round]:
    """The round of each wave number, given each message's wave: a wave of `SMALL_WAVE`
    messages or more is a round of its own for all processes; small waves one after
    the other make one round for one process (wave order keeps each message after
    the messages it answers)."""
    sizes = [0] * (max(wave, default=-1) + 1)
    for number in wave:
        sizes[number] += 1
    groups: list[list[int]] = []  # the wave numbers of each round
    for number, size in enumerate(sizes):
        if groups and size < SMALL_WAVE and sizes[groups[-1][-1]] < SMALL_WAVE:
            groups[-1].append(number)
        else:
            groups.append([number])
    result: list[Round] = []
    for count, group in enumerate(groups):
        size = sum(sizes[number] for number in group)
        turn = Round(count, alone=sizes[group[0]] < SMALL_WAVE, size=size)
        result.extend(turn for _ in group)
    return result


# Bytes the first pass reads of a message at a time, until its header block ends.
HEAD_CHUNK = 16 * 1024


def _head(box: mailbox.Mailbox, key: str) -> bytes:
    """A message's header block and the start of its body: all the first pass needs.
    Reading whole messages, it read the archive twice over, and a 25 MB message
    cost the import 50 MB (`get_bytes` copies what it read)."""
    with contextlib.closing(box.get_file(key)) as file:
        head = b""
        while chunk := file.read(HEAD_CHUNK):
            searched = max(len(head) - 3, 0)  # a blank line across the chunks' seam
            head += chunk
            if HEADER_END.search(head, searched):
                break
        return head


def _whole(box: mailbox.Mailbox, key: str) -> bytes:
    """A message's bytes, read once. `get_bytes` translates `os.linesep` to LF, which
    on POSIX changes nothing and costs a copy of the message."""
    with contextlib.closing(box.get_file(key)) as file:
        return file.read()


def read_batches(box: mailbox.Mailbox, by_wave: bool = True) -> Iterator[tuple[Round, list[bytes]]]:
    """(round, messages) to store at once, in `read_rounds`'s order, each batch of one
    round. Holds one batch and the message that begins the next: a batch's list is
    emptied when the next is asked for, so a caller's name for it keeps no bytes."""
    batch: list[bytes] = []
    size = 0
    current: Round | None = None
    for turn, raw in read_rounds(box, by_wave):
        ends = len(batch) >= BATCH or size + len(raw) > BATCH_BYTES or turn != current
        if batch and ends and current is not None:
            yield current, batch
            batch.clear()
            size = 0
        batch.append(raw)
        size += len(raw)
        current = turn
    if batch and current is not None:
        yield current, batch


def waves(headers: Sequence[ThreadHeaders], order: Sequence[int]) -> list[int]:
    """The wave of each message, given a `thread_order` of them.

    0 for a message that answers no message of the batch; otherwise one more than
    the highest wave of the messages it answers that come before it in `order`
    (a broken cycle's later answer) and of earlier copies of its Message-ID (the
    duplicate check must see the first copy stored).
    """
    wave = [0] * len(headers)
    placed: dict[str, int] = {}  # Message-ID -> highest wave of a placed copy
    for index in order:
        found = headers[index]
        before = [placed[mid] for mid in found.answers if mid in placed]
        if found.message_id in placed:
            before.append(placed[found.message_id])
        wave[index] = max(before) + 1 if before else 0
        if found.message_id:
            placed[found.message_id] = max(wave[index], placed.get(found.message_id, 0))
    return wave


_NO_DATE = datetime.max.replace(tzinfo=UTC)


def thread_order(headers: Sequence[ThreadHeaders]) -> list[int]:
    """Indices of `headers`, each after every message of the batch it answers.

    Among messages free to go, the earliest date first, then file order. A
    cycle (two messages that claim to answer each other) is broken the same way.
    Linear in messages and references, plus a log factor for the date order.
    """
    first: dict[str, int] = {}
    for index, found in enumerate(headers):
        if found.message_id:
            first.setdefault(found.message_id, index)
    replies: list[list[int]] = [[] for _ in headers]
    waiting_on = [0] * len(headers)
    for index, found in enumerate(headers):
        parents = {first[mid] for mid in found.answers if mid in first} - {index}
        for parent in parents:
            replies[parent].append(index)
        waiting_on[index] = len(parents)

    def key(index: int) -> tuple[datetime, int]:
        return (headers[index].date or _NO_DATE, index)

    ready = [key(i) for i, n in enumerate(waiting_on) if n == 0]
    heapq.heapify(ready)
    order: list[int] = []
    placed = [False] * len(headers)
    pending = sorted(range(len(headers)), key=key)  # to break cycles, oldest first
    cursor = 0
    while len(order) < len(headers):
        if not ready:  # only cycles are left: release the oldest message still waiting
            while placed[pending[cursor]]:
                cursor += 1
            waiting_on[pending[cursor]] = 0
            heapq.heappush(ready, key(pending[cursor]))
        _date, index = heapq.heappop(ready)
        if placed[index]:
            continue
        placed[index] = True
        order.append(index)
        for reply in replies[index]:
            waiting_on[reply] -= 1
            if waiting_on[reply] == 0:
                heapq.heappush(ready, key(reply))
    return order


def open_archive(path: Path) -> mailbox.Mailbox:
    if path.is_dir():
        if not (path / "cur").is_dir() and not (path / "new").is_dir():
            raise ValueError(f"{path} is a folder but not a Maildir (no cur/ or new/)")
        return _OwnFiles(str(path), factory=None, create=False)
    if not path.exists():
        raise ValueError(f"{path} does not exist")
    return mailbox.mbox(str(path), factory=None, create=False)


class _OwnFiles(mailbox.Maildir):
    """A Maildir whose messages are its own regular files. `mailbox.Maildir` reads any
    entry of cur/ and new/ but a folder: a symlink in an archive imported another file
    of ours as a message (anything this user may read), one to /dev/zero grew the
    import until it ran out of memory, and a FIFO held it for good. Such an entry is
    skipped, and the log names it."""

    def _refresh(self) -> None:
        super()._refresh()  # type: ignore[misc]
        toc: dict[str, str] = self._toc  # type: ignore[attr-defined]
        for key, subpath in list(toc.items()):
            if not self._own_file(subpath):
                del toc[key]

    def _own_file(self, subpath: str) -> bool:
        try:
            mode = os.lstat(os.path.join(self._path, subpath)).st_mode
        except FileNotFoundError:  # moved since the listing: reading it looks it up again
            return True
        if not stat.S_ISREG(mode):
            log.warning("skipped %s: not a regular file of the Maildir", subpath)
            return False
        return True


def store_batch(store: InboundStore, raws: list[bytes], notify: bool) -> int:
    """Store the messages not stored before; returns how many were new."""
    if not raws:
        return 0
    known = store.known_digests([digest(raw) for raw in raws])
    fresh = list({digest(raw): raw for raw in raws if digest(raw) not in known}.values())
    if fresh:
        store.put_many(fresh, Envelope(source="import", notify=notify))
    return len(fresh)
