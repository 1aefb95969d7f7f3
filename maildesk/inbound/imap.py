"""IMAP intake: when a message on the server counts as accepted, and so may leave the folder.

`ImapPoller` fetches every message in the configured folder by UID, hands the raw
bytes to the store, and moves a message to the processed folder only after the
store returned for it. A store that raises means "not stored": the message stays
where it is and is fetched again on the next poll, while the rest of the batch
goes ahead. If the connection drops between store and move, the message is
stored twice; that is the price of never losing one, and the store dedupes.

A message over `max_size` (`[smtp] max_message_size`, the limit SMTP answers 552
to) is moved to `too_large_folder` without being fetched, with a warning: fetched,
a 200 MB message cost the poller 236 MB and was stored whole, to be quarantined.

`run` loops: poll, then IDLE until the server reports a change (or the refresh
interval passes), or sleep `poll_interval` when IDLE is off or not offered.
Connection errors reconnect with exponential back-off. The password is never
logged (nor `ImapSettings`, whose repr holds it).
"""

from __future__ import annotations

import contextlib
import io
import logging
import threading
import time
from collections.abc import Callable, Iterator

from imapclient import DELETED, IMAPClient
from imapclient.exceptions import IMAPClientError

from maildesk.config import ImapSettings
from maildesk.inbound.room import NoRoom

log = logging.getLogger(__name__)

FETCH_BATCH = 50
# Bounds memory when a batch holds several messages: imaplib and imapclient hold a
# FETCH response about four times over while they read and parse it.
FETCH_BATCH_BYTES = 4 * 1024 * 1024
# A message larger than this is fetched alone, a slice at a time (a partial FETCH,
# RFC 3501 6.4.5), into one buffer of its size: fetched whole, a 25 MB message cost
# the poller 100 MB more at its peak.
FETCH_SLICE = 1024 * 1024
# UIDs whose sizes one FETCH asks for. A command names each UID, and servers cap a
# command's length (Dovecot: 64 KB, some 12,000 UIDs): one FETCH for a folder of
# 13,000 messages was refused with BAD at every poll, and none was ever stored.
SIZES_PER_FETCH = 1000
# Message numbers one SEARCH looks at. Its answer names each UID found, and imaplib
# refuses a line over 1 MB: one SEARCH of a folder of 160,000 waiting messages failed
# every poll. 20,000 UIDs of ten digits are 220 KB.
SEARCH_WINDOW = 20_000
# RFC 2177: servers may drop an IDLE client after 30 minutes, so re-issue well before.
IDLE_REFRESH_SECONDS = 25 * 60
# How often an IDLE wait looks at `stop`.
IDLE_CHECK_SECONDS = 1.0
# Polls in a row, each storing mail, before the poller waits (IDLE or the interval).
MAX_REPOLLS = 20
SOCKET_TIMEOUT = 120.0
# imapclient raises IMAPClientError (and its abort subclass) for protocol trouble, OSError for
# the socket; either way the connection is no longer trusted.
CONNECTION_ERRORS: tuple[type[Exception], ...] = (IMAPClientError, OSError)


class ImapPoller:
    """One IMAP account and folder; `poll_once` for a single pass, `run` for a thread."""

    def __init__(
        self,
        settings: ImapSettings,
        store: Callable[[bytes], object],
        *,
        on_stored: Callable[[], None] = lambda: None,
        on_poll: Callable[[bool], None] = lambda error: None,
        backoff_initial: float = 1.0,
        backoff_max: float = 300.0,
        wait: Callable[[float], bool] | None = None,
        fits: Callable[[int], bool] = lambda size: True,
        max_size: int = 0,
    ) -> None:
        self._settings = settings
        self._store = store
        self._max_size = max_size  # 0: no limit
        self._too_large: list[int] = []  # this poll's UIDs over it
        # Whether a message of this size leaves the disk's reserve (inbound/room.py): one
        # that does not is left on the server, not even fetched.
        self._fits = fits
        self._skipped = 0  # this poll's: left on the server unfetched, for want of room
        self._no_room = 0  # ... and those, with the ones fetched and then refused for it
        self._on_stored = on_stored
        # Told after every poll whether it failed (for /metrics).
        self._on_poll = on_poll
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._wait = wait
        self._client: IMAPClient | None = None
        # Messages the last poll could not store; they wait no longer than poll_interval.
        self._left = 0

    def poll_once(self) -> int:
        """Store and move every message now in the folder; return how many were stored.

        Raises a connection error (after dropping the connection) if the server is unreachable.
        """
        try:
            client = self._connected()
            uids = self._waiting(client)
            stored = failed = 0
            self._skipped = self._no_room = 0
            self._too_large = []
            for batch in self._batches(client, uids):
                ok, bad = self._process_batch(client, batch)
                stored, failed = stored + ok, failed + bad
            if self._too_large:
                self._move_aside(client, self._too_large)
            failed += self._skipped
        except CONNECTION_ERRORS:
            self._on_poll(True)
            self._drop()
            raise
        self._on_poll(failed > 0)
        self._left = failed
        # An empty poll every interval is routine; only polls that found mail are INFO.
        log.log(
            logging.INFO if uids else logging.DEBUG,
            "imap poll %s: %d found, %d stored, %d left for retry%s%s",
            self._settings.folder,
            len(uids),
            stored,
            failed,
            f" ({self._no_room} for want of disk room)" if self._no_room else "",
            f", {len(self._too_large)} too large" if self._too_large else "",
        )
        return stored

    def run(self, stop: threading.Event) -> None:
        """Poll until `stop` is set, waiting by IDLE or interval, reconnecting with back-off."""
        wait = self._wait or stop.wait
        delay = self._backoff_initial
        repolls = 0
        try:
            while not stop.is_set():
                try:
                    stored = self.poll_once()
                    delay = self._backoff_initial
                    if stored and repolls < MAX_REPOLLS:
                        # Mail that came while this poll fetched and moved was announced
                        # in those commands' responses, and IDLE does not announce it
                        # again: it would wait for the next refresh (25 min). Look first.
                        # (Bounded: a server whose MOVE silently fails must not make us
                        # store the same mail in a tight loop.)
                        repolls += 1
                        continue
                    repolls = 0
                    client = self._client
                    if client is not None and not self._left and self._can_idle(client):
                        self._idle(client, stop)
                    elif wait(self._settings.poll_interval):
                        return
                except Exception as exc:
                    # Whatever broke, intake must not die with this thread: drop, back off, retry.
                    self._drop()
                    if isinstance(exc, CONNECTION_ERRORS):
                        log.warning("imap connection error (%s); reconnecting in %.1fs", exc, delay)
                    else:
                        log.exception("imap poller failed; reconnecting in %.1fs", delay)
                    if wait(delay):
                        return
                    delay = min(delay * 2, self._backoff_max)
        finally:
            self.close()

    def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            client.logout()
        except Exception:
            # Logging out of a broken connection can fail in any way; just close the socket.
            with contextlib.suppress(OSError):
                client.shutdown()

    def _connected(self) -> IMAPClient:
        if self._client is not None:
            return self._client
        s = self._settings
        client = IMAPClient(s.host, port=s.port, ssl=s.ssl, use_uid=True, timeout=SOCKET_TIMEOUT)
        try:
            client.login(s.username, s.password)
            if not client.folder_exists(s.processed_folder):
                client.create_folder(s.processed_folder)
            client.select_folder(s.folder)
        except BaseException:
            with contextlib.suppress(OSError):
                client.shutdown()
            raise
        self._client = client
        log.info(
            "imap connected to %s:%d as %s (tls=%s), folder %s",
            s.host,
            s.port,
            s.username,
            s.ssl,
            s.folder,
        )
        return client

    def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(OSError):  # already gone
                client.shutdown()

    def _waiting(self, client: IMAPClient) -> list[int]:
        """The UIDs of the folder's messages, in order, searched a window at a time."""
        # Selecting again syncs (Dovecot shows new mail only after a command such as NOOP
        # or SELECT; SEARCH alone does not), tells how many messages there are, and
        # checks that a kept-open connection still answers.
        exists = int(client.select_folder(self._settings.folder).get(b"EXISTS", 0))
        uids: set[int] = set()
        for low in range(1, exists + 1, SEARCH_WINDOW):
            # A window past the end (someone expunged meanwhile) finds what is there.
            window = f"{low}:{min(low + SEARCH_WINDOW - 1, exists)}"
            # UNDELETED: a message we copied and flagged but failed to expunge is already
            # processed.
            uids.update(client.search([window, "UNDELETED"]))
        return sorted(uids)

    def _batches(self, client: IMAPClient, uids: list[int]) -> Iterator[dict[int, int]]:
        """The messages to fetch together, with their sizes: a large one alone."""
        batch: dict[int, int] = {}
        total = 0
        for uid, size in self._sizes(client, uids):
            if self._max_size and size > self._max_size:
                log.warning(
                    "imap uid %d is %d bytes, over [smtp] max_message_size (%d): moved to %s "
                    "unfetched",
                    uid,
                    size,
                    self._max_size,
                    self._settings.too_large_folder,
                )
                self._too_large.append(uid)
                continue
            if not self._fits(total + size):
                self._skipped += 1
                self._no_room += 1
                continue
            if batch and (
                len(batch) >= FETCH_BATCH or total + size > FETCH_BATCH_BYTES or size > FETCH_SLICE
            ):
                yield batch
                batch, total = {}, 0
            batch[uid] = size
            total += size
        if batch:
            yield batch

    @staticmethod
    def _sizes(client: IMAPClient, uids: list[int]) -> Iterator[tuple[int, int]]:
        """Each UID with its message's size (0 if expunged meanwhile), asked for a slice
        of `SIZES_PER_FETCH` UIDs at a time, so no command grows with the folder."""
        for start in range(0, len(uids), SIZES_PER_FETCH):
            chunk = uids[start : start + SIZES_PER_FETCH]
            sizes = client.fetch(chunk, ["RFC822.SIZE"])
            for uid in chunk:
                yield uid, int(sizes.get(uid, {}).get(b"RFC822.SIZE", 0))

    def _fetched(self, client: IMAPClient, batch: dict[int, int]) -> dict[int, bytes]:
        """The messages' bytes, by UID; one expunged by someone else meanwhile is missing.
        PEEK: nothing is marked \\Seen on the server before it is stored here."""
        if len(batch) > 1 or max(batch.values()) <= FETCH_SLICE:
            fetched = client.fetch(list(batch), ["BODY.PEEK[]"])
            found = {uid: data.get(b"BODY[]") for uid, data in fetched.items()}
            return {uid: raw for uid, raw in found.items() if raw is not None}
        [(uid, size)] = batch.items()
        buffer = io.BytesIO(bytes(size))  # getvalue() hands out this very object
        while True:
            offset = buffer.tell()
            part = f"BODY.PEEK[]<{offset}.{FETCH_SLICE}>"
            reply = client.fetch([uid], [part]).get(uid, {})
            piece = reply.get(f"BODY[]<{offset}>".encode())
            if piece is None:
                return {}
            buffer.write(piece)
            if len(piece) < FETCH_SLICE:
                break
        # RFC822.SIZE is the size of BODY[]; a server that counted otherwise costs a copy.
        raw = buffer.getvalue()
        return {uid: raw if buffer.tell() == len(raw) else raw[: buffer.tell()]}

    def _process_batch(self, client: IMAPClient, batch: dict[int, int]) -> tuple[int, int]:
        fetched = self._fetched(client, batch)
        stored: list[int] = []
        failed = 0
        for uid in batch:
            raw = fetched.get(uid)
            if raw is None:
                continue  # expunged by someone else meanwhile
            try:
                self._store(raw)
            except NoRoom:  # counted in the poll's line; the room logs when refusing starts
                failed += 1
                self._no_room += 1
                continue
            except Exception:
                failed += 1
                log.exception("imap uid %d not stored; left in %s", uid, self._settings.folder)
                continue
            stored.append(uid)
        if stored:
            self._notify()
            self._move(client, stored, self._settings.processed_folder)
        return len(stored), failed

    def _move_aside(self, client: IMAPClient, uids: list[int]) -> None:
        """Move messages too large to fetch into `too_large_folder`, made when first
        needed. A server that refuses it (one whose folders must be under `INBOX.`)
        leaves them where they are, with an error: the rest of the mail still comes in."""
        folder = self._settings.too_large_folder
        try:
            if not client.folder_exists(folder):
                client.create_folder(folder)
            self._move(client, uids, folder)
        except IMAPClientError as exc:
            log.error("imap: %d messages too large to fetch left in %s: cannot move them to "
                      "%s ([imap] too_large_folder): %s", len(uids), self._settings.folder,
                      folder, exc)  # fmt: skip

    def _move(self, client: IMAPClient, uids: list[int], target: str) -> None:
        if client.has_capability("MOVE"):
            client.move(uids, target)
            return
        client.copy(uids, target)
        client.add_flags(uids, [DELETED], silent=True)
        if client.has_capability("UIDPLUS"):
            client.uid_expunge(uids)
        else:
            # Without UIDPLUS this also expunges what others flagged \Deleted in this folder.
            client.expunge()

    def _notify(self) -> None:
        try:
            self._on_stored()
        except Exception:
            # The messages are stored; a failing listener must not stop them being moved.
            log.exception("imap on_stored callback failed")

    def _can_idle(self, client: IMAPClient) -> bool:
        return self._settings.idle and client.has_capability("IDLE")

    def _idle(self, client: IMAPClient, stop: threading.Event) -> None:
        """Return when the folder changes, `stop` is set, or the IDLE needs refreshing."""
        client.idle()
        try:
            refresh_at = time.monotonic() + IDLE_REFRESH_SECONDS
            while not stop.is_set() and time.monotonic() < refresh_at:
                started = time.monotonic()
                responses = client.idle_check(timeout=IDLE_CHECK_SECONDS)
                # Anything but an "OK still here" keepalive (EXISTS, EXPUNGE, BYE, ...) ends it.
                if any(response[0] != b"OK" for response in responses):
                    return
                if not responses and time.monotonic() - started < IDLE_CHECK_SECONDS / 2:
                    # Readable yet no line: imapclient swallows EOF here. Leave IDLE so the
                    # error surfaces in idle_done or the next poll instead of spinning.
                    return
        finally:
            client.idle_done()
