"""Which of our languages (cs, en) a customer wrote in, when no header says it.

The detector is py3langid (a naive-Bayes n-gram model, offline), restricted
to cs and en. It decides only on text long enough to tell: fewer than
`MIN_WORDS` words or `MIN_LETTERS` letters ("Thanks!", "OK díky") gives
None, and the caller falls back to `[support] language`; so does a guess
below `MIN_CONFIDENCE`. Only the first `MAX_CHARS` characters are read, so
the work per message is capped whatever a stranger sends.

The model (about 1.6 s to decompress) is read once per process, on the first
text that needs it, not at start-up: most mail says its language in
`Content-Language` or is too short to judge.
"""

from __future__ import annotations

import io
import re
import struct
import threading
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Protocol

from maildesk.config import LANGUAGES

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
def _model() -> _Model:
    # One immutable model per process, shared by every detector: loading it
    # twice would only cost time and memory.
    from py3langid.langid import MODEL_DIR, MODEL_FILE, LanguageIdentifier

    try:
        return _two_languages(Path(MODEL_DIR) / MODEL_FILE, LanguageIdentifier)
    except KeyError:  # another file layout than py3langid 0.4's: its own loader
        model = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
        model.set_languages(list(LANGUAGES))
        return model


def _two_languages(path: Path, identifier: Any) -> _Model:
    """py3langid's model with our languages' weights only, its automaton left in a file.

    The file is npz inside xz (py3langid's modelio), its arrays stored uncompressed.
    It is unpacked into an unlinked temporary file (68 MB of disk while the process
    lives) and the 39 MB automaton is read through a read-only mapping of it: page
    cache the kernel can drop and read again, not private memory (a process that
    classified two texts held 64 MB of private memory, now 30). Its RSS does not shrink: that counts
    mapped pages, and ext4's large folios map several MB per touched row (a sentence
    maps 27 MB). The two columns of weights we keep are read in slices, never the
    whole 28 MB table. Another layout than 0.4's raises KeyError, and the caller
    falls back to py3langid's own loader.
    """
    import lzma
    import mmap
    import shutil
    import tempfile
    import zipfile

    import numpy as np

    _NPY_HEADERS = {
        (1, 0): np.lib.format.read_array_header_1_0,
        (2, 0): np.lib.format.read_array_header_2_0,
    }
    with tempfile.TemporaryFile(suffix=".npz") as unpacked:
        with lzma.open(path) as packed:
            shutil.copyfileobj(packed, unpacked, length=1 << 20)
        unpacked.flush()
        # The mapping outlives the file object: the kernel keeps the unlinked file.
        mapped = mmap.mmap(unpacked.fileno(), 0, access=mmap.ACCESS_READ)
        mapped.madvise(mmap.MADV_RANDOM)
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
            read_header = _NPY_HEADERS.get(np.lib.format.read_magic(header))
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


def warm() -> None:
    """Load the model now (0.5 s of CPU, once per process): for benchmarks that time
    the steady state."""
    _model()


@dataclass(frozen=True)
class Guess:
    language: str | None  # None: too short or unsure
    confidence: float = 0.0


def judgeable(text: str) -> bool:
    """Enough words and letters to tell Czech from English."""
    words = _WORD.findall(text[:MAX_CHARS])
    return len(words) >= MIN_WORDS and sum(map(len, words)) >= MIN_LETTERS


class Detector:
    """Guesses cs or en from a customer's own text; thread-safe, loads the model lazily."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def guess(self, text: str) -> Guess:
        head = text[:MAX_CHARS]
        if not judgeable(head):
            return Guess(None)
        with self._lock:
            model = _model()
        language, confidence = model.classify(head)
        if language not in LANGUAGES or confidence < MIN_CONFIDENCE:
            return Guess(None, confidence)
        return Guess(language, confidence)

    def detect(self, text: str) -> str | None:
        """cs or en, or None when the text cannot tell."""
        return self.guess(text).language
