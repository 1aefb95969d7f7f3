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

No response may bring more than was asked for. imaplib reads a literal `{N}` whole,
N as the server says, before we see it: a server that announced 1,000 bytes and sent
a 200 MB literal made the poller allocate 650 MB. So a message's literal may exceed
the size the server announced by `allowed_size`'s slack only, and never `max_size`;
any other literal is at most `SMALL_LITERAL`, a line at most imaplib's 1 MB, and the
whole answer to a command at most its literals and `ANSWER_BYTES` more. Past that the
connection is dropped unread, with an error naming the message, if there is one; a
batch is then fetched one message at a time to find it, and that one goes to
`too_large_folder` unfetched at the next poll.

`run` loops: poll, then IDLE until the server reports a change (or the refresh
interval passes), or sleep `poll_interval` when IDLE is off or not offered.
Connection errors reconnect with exponential back-off, except after a poll cut
short by such a lie, which found out something and retries after the first. The password is never
logged (nor `ImapSettings`, whose repr holds it).
"""

from __future__ import annotations

import contextlib
import imaplib
import io
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

from imapclient import DELETED, IMAPClient, imap4, tls
from imapclient.exceptions import IMAPClientError

from maildesk.config import ImapSettings
from maildesk.inbound import groupcommit
from maildesk.inbound.room import NoRoom
from maildesk.outages import describe

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
# The largest literal in a response that carries no message: LIST's folder names are
# the only ones expected, and they are short.
SMALL_LITERAL = 64 * 1024
# What one command's answer may hold besides the literals it asked for: a SEARCH of
# `SEARCH_WINDOW` UIDs is 220 KB, the sizes of `SIZES_PER_FETCH` messages 50 KB, a LIST
# of ten thousand folders 1 MB. imaplib keeps every untagged line until its command
# ends, and a line costs the poller a Python object and some 40 µs however short it
# is: each counts as at least `LINE_COST` bytes. (A server looping on "* 1 RECENT" made
# the poller spend 68 s and 66 MB on one SEARCH.)
ANSWER_BYTES = 4 * 1024 * 1024
LINE_COST = 64
# imapclient raises IMAPClientError (and its abort subclass) for protocol trouble, OSError for
# the socket; either way the connection is no longer trusted.
CONNECTION_ERRORS: tuple[type[Exception], ...] = (IMAPClientError, OSError)


def allowed_size(size: int) -> int:
    """The most a message the server announced as `size` bytes may turn out to be. The
    slack is for a server that counts a bare LF where it sends CRLF (one byte a line:
    an eighth covers lines of 8 bytes or more); a lie of more is refused unread."""
    return size + size // 8 + 64 * 1024


class _Bounded(imaplib.IMAP4):
    """imaplib's reads, refusing a literal over `literal_limit` before reading (or
    allocating) it, and an answer to one command past `answer_limit` (the literals it
    allows and `ANSWER_BYTES` more), recording in `overrun` what the server broke.
    imaplib wraps the abort raised here in one of its own, so `overrun` is how the
    poller knows. An IDLE's responses count as the answer to the IDLE command."""

    literal_limit = SMALL_LITERAL
    answer_limit = ANSWER_BYTES
    answered = 0  # bytes (lines at `LINE_COST` at least) since the command was sent
    sent_before = 0  # of the message, in earlier slices: for the error's text
    overrun: str | None = None

    def _command(self, name: str, *args: Any) -> Any:
        self.answered = 0
        return super()._command(name, *args)  # type: ignore[misc]

    def read(self, size: int) -> bytes:
        if size > self.literal_limit:
            after = f" after {self.sent_before}" if self.sent_before else ""
            limit = self.literal_limit
            self._refuse(f"a literal of {size} bytes{after} (at most {limit} expected)")
        self._count(size)
        return super().read(size)

    def readline(self) -> bytes:
        try:
            line = super().readline()
        except self.error as exc:  # over imaplib's _MAXLINE; imapclient keeps its 1 MB
            self._refuse(f"a line too long ({exc})", exc)
        self._count(max(len(line), LINE_COST))
        return line

    def _count(self, size: int) -> None:
        self.answered += size
        if self.answered > self.answer_limit:
            self._refuse(f"more than {self.answer_limit} bytes in answer to one command")

    def _refuse(self, overrun: str, cause: Exception | None = None) -> NoReturn:
        self.overrun = overrun
        raise self.abort(f"refused {overrun}; connection dropped") from cause


class _PlainIMAP4(_Bounded, imap4.IMAP4WithTimeout):
    pass


class _TlsIMAP4(_Bounded, tls.IMAP4_TLS):
    pass


class _Client(IMAPClient):
    """An IMAPClient on a `_Bounded` imaplib connection."""

    def _create_IMAP4(self) -> _Bounded:  # noqa: N802 (imapclient's name)
        timeout = self._timeout.connect
        if self.ssl:
            # imapclient has no type hints: mypy sees imaplib.IMAP4's __init__ here.
            return _TlsIMAP4(self.host, self.port, self.ssl_context, timeout)  # type: ignore[call-arg]
        return _PlainIMAP4(self.host, self.port, timeout)

    @property
    def overrun(self) -> str | None:
        """What the server sent past a limit since the last `allowing`, if it did."""
        bounded: _Bounded = self._imap
        return bounded.overrun

    @contextlib.contextmanager
    def allowing(self, limit: int, sent_before: int = 0, count: int = 1) -> Iterator[None]:
        """Literals up to `limit` bytes for the commands within, `count` of them in an
        answer; `SMALL_LITERAL` after."""
        bounded: _Bounded = self._imap
        bounded.literal_limit, bounded.sent_before, bounded.overrun = limit, sent_before, None
        bounded.answer_limit = ANSWER_BYTES + limit * count
        try:
            yield
        finally:
            bounded.literal_limit, bounded.sent_before = SMALL_LITERAL, 0
            bounded.answer_limit = ANSWER_BYTES


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
        self._client: _Client | None = None
        # Messages the last poll could not store; they wait no longer than poll_interval.
        self._left = 0
        # UIDs of messages the server sent more of than it announced: moved aside
        # unfetched. And UIDs fetched together when that happened: fetched alone to find
        # which it was. Both only of UIDs still in the folder, under this UIDVALIDITY.
        self._liars: set[int] = set()
        self._suspects: set[int] = set()
        self._uidvalidity: object = None
        # Whether this poll failed on such a message, now marked: progress, no back-off.
        self._caught = False

    def poll_once(self) -> int:
        """Store and move every message now in the folder; return how many were stored.

        Raises a connection error (after dropping the connection) if the server is unreachable.
        """
        self._caught = False
        try:
            client = self._connected()
            uids = self._waiting(client)
            self._liars.intersection_update(uids)
            self._suspects.intersection_update(uids)
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
                    if not self._caught:
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

    def _connected(self) -> _Client:
        if self._client is not None:
            return self._client
        s = self._settings
        client = _Client(s.host, port=s.port, ssl=s.ssl, use_uid=True, timeout=SOCKET_TIMEOUT)
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
        selected = client.select_folder(self._settings.folder)
        if selected.get(b"UIDVALIDITY") != self._uidvalidity:
            # The folder's UIDs were renumbered: the ones we marked name other messages.
            self._uidvalidity = selected.get(b"UIDVALIDITY")
            self._liars.clear()
            self._suspects.clear()
        exists = int(selected.get(b"EXISTS", 0))
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
            if uid in self._liars:
                log.warning("imap uid %d moved to %s unfetched: the server sent more of it "
                            "than it announced", uid, self._settings.too_large_folder)  # fmt: skip
                self._too_large.append(uid)
                continue
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
                len(batch) >= FETCH_BATCH
                or total + size > FETCH_BATCH_BYTES
                or size > FETCH_SLICE
                or uid in self._suspects
            ):
                yield batch
                batch, total = {}, 0
            if uid in self._suspects:
                yield {uid: size}
                continue
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

    def _fetched(self, client: _Client, batch: dict[int, int]) -> dict[int, bytes]:
        """The messages' bytes, by UID; one expunged by someone else meanwhile is missing.
        PEEK: nothing is marked \\Seen on the server before it is stored here."""
        limit = allowed_size(max(batch.values()))
        if self._max_size:
            # More than this is refused at SMTP with 552, and moved aside when announced.
            limit = min(limit, self._max_size)
        if len(batch) > 1 or max(batch.values()) <= FETCH_SLICE:
            with client.allowing(limit, count=len(batch)):
                fetched = client.fetch(list(batch), ["BODY.PEEK[]"])
            found = {uid: data.get(b"BODY[]") for uid, data in fetched.items()}
            return {uid: raw for uid, raw in found.items() if raw is not None}
        [(uid, size)] = batch.items()
        buffer = io.BytesIO(bytes(size))  # getvalue() hands out this very object
        while True:
            offset = buffer.tell()
            part = f"BODY.PEEK[]<{offset}.{FETCH_SLICE}>"
            # Each slice is of its size, and all of them together within the limit: a
            # server that sends full slices past it would otherwise never be done.
            with client.allowing(min(FETCH_SLICE, limit - offset), sent_before=offset):
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

    def _process_batch(self, client: _Client, batch: dict[int, int]) -> tuple[int, int]:
        try:
            fetched = self._fetched(client, batch)
        except CONNECTION_ERRORS:
            if client.overrun is not None:
                self._caught_lying(batch, client.overrun)
            raise
        self._suspects.difference_update(batch)
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
            except Exception as exc:
                failed += 1
                if groupcommit.logged(exc):  # a failed commit, whose traceback is logged once
                    log.warning("imap uid %d not stored (%s); left in %s", uid,
                                describe(exc), self._settings.folder)  # fmt: skip
                else:
                    log.exception("imap uid %d not stored; left in %s", uid, self._settings.folder)
                continue
            stored.append(uid)
        if stored:
            self._notify()
            self._move(client, stored, self._settings.processed_folder)
        return len(stored), failed

    def _caught_lying(self, batch: dict[int, int], overrun: str) -> None:
        """The server sent more for `batch` than it announced; the poll ends on it."""
        self._caught = True
        if len(batch) == 1:
            [(uid, size)] = batch.items()
            self._liars.add(uid)
            log.error("imap uid %d announced %d bytes (RFC822.SIZE) but the server sent %s: "
                      "connection dropped unread; it goes to %s unfetched", uid, size, overrun,
                      self._settings.too_large_folder)  # fmt: skip
            return
        self._suspects.update(batch)
        log.error("imap uids %s, announced at most %d bytes each (RFC822.SIZE): the server "
                  "sent %s: connection dropped unread; fetching them one at a time to find "
                  "which", ",".join(map(str, batch)), max(batch.values()), overrun)  # fmt: skip

    def _move_aside(self, client: IMAPClient, uids: list[int]) -> None:
        """Move messages too large to fetch into `too_large_folder`, made when first
        needed. A server that refuses it (one whose folders must be under `INBOX.`)
        leaves them where they are, with an error: the rest of the mail still comes in."""
        folder = self._settings.too_large_folder
        try:
            if not client.folder_exists(folder):
                client.create_folder(folder)
            self._move(client, uids, folder)
            self._liars.difference_update(uids)
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
