"""Which of our languages (cs, en) a customer wrote in, when no header says it.

The detector is py3langid (a naive-Bayes n-gram model, offline), restricted
to cs and en. It decides only on text long enough to tell: fewer than
`MIN_WORDS` words or `MIN_LETTERS` letters ("Thanks!", "OK díky") gives
None, and the caller falls back to `[support] language`; so does a guess
below `MIN_CONFIDENCE`. Only the first `MAX_CHARS` characters are read, so
the work per message is capped whatever a stranger sends.

The model is read once per process, on the first text that needs it, not at
start-up: most mail says its language in `Content-Language` or is too short to
judge. Its unpacked file is kept in the state folder for every process
(`_unpacked`); without it no language is guessed, and mail goes on.
"""

from __future__ import annotations

import hashlib
import io
import logging
import lzma
import os
import re
import shutil
import struct
import tempfile
import threading
import zipfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import IO, Any, BinaryIO, Protocol

from maildesk.config import LANGUAGES

log = logging.getLogger("maildesk.language")

MAX_CHARS = 4096
MIN_WORDS = 4
MIN_LETTERS = 20
# With two languages a guess is never below 0.5; "OK fine." scores 0.53, a
# real sentence 0.99 and more.
MIN_CONFIDENCE = 0.9

_WORD = re.compile(r"[^\W\d_]+")


class _Model(Protocol):
    def classify(self, text: str) -> tuple[str, float]: ...


@cache
def _model(folder: Path | None = None) -> _Model:
    """The model, its unpacked file kept in `folder` (see `_unpacked`). One immutable
    model per process, shared by every detector: loading it twice would only cost
    time and memory."""
    from py3langid.langid import MODEL_DIR, MODEL_FILE, LanguageIdentifier

    packed = Path(MODEL_DIR) / MODEL_FILE
    try:
        try:
            return _two_languages(packed, LanguageIdentifier, folder)
        except (zipfile.BadZipFile, ValueError, struct.error) as exc:
            if folder is None:
                raise
            # A kept copy cut short (a full disk, a crash of the disk's own): made again.
            log.warning(
                "language model: the copy in %s is unusable (%s): unpacked again", folder, exc
            )
            for damaged in folder.glob("py3langid-*.npz"):
                damaged.unlink(missing_ok=True)
            return _two_languages(packed, LanguageIdentifier, folder)
    except KeyError:  # another file layout than py3langid 0.4's: its own loader
        model = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
        model.set_languages(list(LANGUAGES))
        return model


def _unpacked(packed: Path, folder: Path | None) -> BinaryIO:
    """py3langid's model file unpacked (68 MB), open for reading.

    Kept in `folder` (the state folder) under a name its packed bytes decide, so
    that every worker maps the one copy, on disk: the page cache holds it once for
    all of them. Without a folder, or when it cannot be written there, in an
    unlinked temporary file of this process's own (which a tmpfs /tmp holds in
    memory).
    """
    if folder is not None:
        name = folder / f"py3langid-{hashlib.sha256(packed.read_bytes()).hexdigest()[:16]}.npz"
        try:
            return open(name, "rb")  # noqa: SIM115 (the caller closes it)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("language model: cannot read it in %s (%s): a private copy", folder, exc)
            return _private_copy(packed)
        try:
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".py3langid-") as fresh:
                _unpack(packed, fresh)
                os.fsync(fresh.fileno())  # renamed whole or not at all, even after a crash
                os.link(fresh.name, name)  # two workers at once: the first link wins
        except FileExistsError:
            pass
        except OSError as exc:
            log.warning("language model: cannot keep it in %s (%s): a private copy", folder, exc)
            return _private_copy(packed)
        for stale in folder.glob("py3langid-*.npz"):  # an older py3langid's
            if stale != name:
                stale.unlink(missing_ok=True)
        return open(name, "rb")  # noqa: SIM115
    return _private_copy(packed)


def _private_copy(packed: Path) -> BinaryIO:
    copy = tempfile.TemporaryFile(suffix=".npz")  # noqa: SIM115 (the caller closes it)
    _unpack(packed, copy)
    return copy


def _unpack(packed: Path, out: IO[bytes]) -> None:
    with lzma.open(packed) as source:
        shutil.copyfileobj(source, out, length=1 << 20)
    out.flush()


def _two_languages(path: Path, identifier: Any, folder: Path | None = None) -> _Model:
    """py3langid's model with our languages' weights only, its automaton left in a file.

    The file is npz inside xz (py3langid's modelio), its arrays stored uncompressed.
    It is unpacked once (`_unpacked`) and the 39 MB automaton is read through a
    read-only mapping of it: page cache the kernel can drop and read again, shared
    by the workers, not private memory (a process that classified two texts held
    64 MB of private memory, now 30). Its RSS does not shrink: that counts
    mapped pages, and ext4's large folios map several MB per touched row (a sentence
    maps 27 MB). The two columns of weights we keep are read in slices, never the
    whole 28 MB table. Another layout than 0.4's raises KeyError, and the caller
    falls back to py3langid's own loader.
    """
    import mmap

    import numpy as np

    npy_headers = {
        (1, 0): np.lib.format.read_array_header_1_0,
        (2, 0): np.lib.format.read_array_header_2_0,
    }
    with _unpacked(path, folder) as unpacked:
        # The mapping outlives the file object: the kernel keeps the unlinked file.
        mapped = mmap.mmap(unpacked.fileno(), 0, access=mmap.ACCESS_READ)
        mapped.madvise(mmap.MADV_RANDOM)  # rows are visited at random: read no more ahead
        with zipfile.ZipFile(unpacked) as archive:
            members = {info.filename: info for info in archive.infolist()}

        def located(name: str) -> tuple[int, tuple[int, ...], np.dtype[Any]]:
            """Where array `name`'s bytes start in the file, its shape and type."""
            info = members[f"{name}.npy"]
            if info.compress_type != zipfile.ZIP_STORED:
                raise KeyError(name)
            name_length, extra_length = struct.unpack_from("<HH", mapped, info.header_offset + 26)
            start = info.header_offset + 30 + name_length + extra_length
            header = io.BytesIO(mapped[start : start + 4096])
            read_header = npy_headers.get(np.lib.format.read_magic(header))
            if read_header is None:
                raise KeyError(name)
            shape, fortran, dtype = read_header(header)
            if fortran:
                raise KeyError(name)
            return start + header.tell(), shape, dtype

        def small(name: str) -> np.ndarray[Any, Any]:
            offset, shape, dtype = located(name)
            return np.ndarray(shape, dtype, buffer=mapped, offset=offset).copy()

        classes = small("classes").tolist()
        keep = [classes.index(language) for language in LANGUAGES]
        priors = np.ascontiguousarray(small("pc")[keep])
        rows = small("nextmove_row").tolist()  # Python ints: py3langid shifts them
        features = small("out_feat").tolist()

        offset, (features_count, classes_count), dtype = located("ptc")
        row_bytes = classes_count * dtype.itemsize
        columns = []
        unpacked.seek(offset)
        for first in range(0, features_count, 4096):
            chunk = unpacked.read(row_bytes * min(4096, features_count - first))
            rows_read = np.frombuffer(chunk, dtype).reshape(-1, classes_count)
            columns.append(rows_read[:, keep].copy())  # not a view that keeps the chunk
        weights = np.ascontiguousarray(np.concatenate(columns))

        offset, (transitions,), dtype = located("nextmove")
        if dtype != np.dtype("<u4"):
            raise KeyError("nextmove")
        automaton = memoryview(mapped)[offset : offset + 4 * transitions].cast("I")
    model: _Model = identifier(
        weights, priors, list(LANGUAGES), automaton, features, norm_probs=True, tk_row=rows
    )
    return model


def warm(folder: Path | None = None) -> None:
    """Load the model now (0.5 s of CPU, once per process): for benchmarks that time
    the steady state."""
    _model(folder)


@dataclass(frozen=True)
class Guess:
    language: str | None  # None: too short or unsure
    confidence: float = 0.0


def judgeable(text: str) -> bool:
    """Enough words and letters to tell Czech from English."""
    words = _WORD.findall(text[:MAX_CHARS])
    return len(words) >= MIN_WORDS and sum(map(len, words)) >= MIN_LETTERS


class Detector:
    """Guesses cs or en from a customer's own text; thread-safe, loads the model lazily.

    `folder`: where the unpacked model is kept for every process (`_unpacked`)."""

    def __init__(self, folder: Path | None = None) -> None:
        self._lock = threading.Lock()
        self._folder = folder
        self._unavailable = False  # it failed to load once: not tried for every mail

    def guess(self, text: str) -> Guess:
        head = text[:MAX_CHARS]
        if not judgeable(head):
            return Guess(None)
        if self._unavailable:
            return Guess(None)
        try:
            with self._lock:
                model = _model(self._folder)
        except Exception:
            # A guess is a nicety: without the model the desk's language is used, and
            # the mail is processed all the same (never held for this).
            log.exception("language model unavailable: no guesses until a restart")
            self._unavailable = True
            return Guess(None)
        language, confidence = model.classify(head)
        if language not in LANGUAGES or confidence < MIN_CONFIDENCE:
            return Guess(None, confidence)
        return Guess(language, confidence)

    def detect(self, text: str) -> str | None:
        """cs or en, or None when the text cannot tell."""
        return self.guess(text).language
