"""py3langid's guess between two languages, without its automaton (`TwoLanguages`).

py3langid counts, at each byte of the UTF-8 text, the longest of its features
(byte strings of 2 to 6 bytes) that ends there, and scores
`priors + log(1 + counts) @ weights`, scaled by 1/sqrt(bytes) and normalized.
For two languages that needs each feature's bytes and its two weights, 3.5 MB
in all (`language_derive` derives them), instead of a 39 MB automaton and the
weights of 142 languages.

Imported only when a text needs a guess: it imports numpy.
"""

from __future__ import annotations

import math
import threading
import unicodedata
from pathlib import Path
from typing import IO, Any

import numpy as np

Array = np.ndarray[Any, Any]

FORMAT = 1  # the file's layout: a new one gives the kept file a new name
SLOT_BITS = 18  # 262,144 slots for py3langid 0.4's 100,053 features: two choices need < 50 %
LONGEST = 6  # bytes in a feature, at most

_ARRAYS = ("keys", "numbers", "weights", "priors", "names", "multipliers")
_LENGTHS = range(2, LONGEST + 1)
_LAST_BYTES = np.array([[(1 << (8 * length)) - 1] for length in _LENGTHS], np.uint64)
_TAGS = np.array([[length << 48] for length in _LENGTHS], np.uint64)
_UNSEEN = np.iinfo(np.intp).max
# Windows that would start before the text, at its first bytes.
_BEFORE_TEXT = np.array([[end < length - 1 for end in range(LONGEST - 1)] for length in _LENGTHS])


def code_tag(length: int) -> np.uint64:
    """A byte string's code is its bytes (big-endian) with its length above them,
    so that "ab" and "\\0ab" differ and a longer string has the larger code."""
    return np.uint64(length << 48)


def hashed(codes: Array, multiplier: np.uint64) -> Array:
    """The slots of `codes` (multiplicative hashing: the top bits of the product), as
    indices (they are far below 2**63: a view, not a copy)."""
    return ((codes * multiplier) >> np.uint64(64 - SLOT_BITS)).view(np.intp)


class TwoLanguages:
    """Every window of 2 to 6 bytes of a text is looked up at once in a hash table of
    the features (cuckoo hashing: a feature is in one of two slots, each slot's key
    is its feature's code and its number the feature's, -1 for none). Features are
    numbered in the order of their codes, so the largest number found at a byte is
    the longest feature ending there. The score is py3langid's own numpy operations
    on the same float16 weights and float32 priors, summed in the order it meets the
    features: guess and confidence are py3langid's, bit for bit."""

    def __init__(
        self,
        keys: Array,
        numbers: Array,
        weights: Array,
        priors: Array,
        names: list[str],
        multipliers: Array,
    ) -> None:
        self.keys = keys
        self.numbers = numbers
        self.weights = weights
        self.priors = priors
        self.names = names
        self.multipliers = multipliers
        # Where each feature was first met in the text being read (`_first_seen`), the
        # largest integer where it was not. Kept between texts and put back after each:
        # filling 100,000 slots anew would cost a third of a short text's guess.
        self._first = np.full(len(weights), _UNSEEN)
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: Path) -> TwoLanguages:
        """Raises ValueError (or zipfile.BadZipFile) for a file that is not a whole one."""
        with np.load(path, allow_pickle=False) as arrays:
            if set(arrays.files) != set(_ARRAYS):
                raise ValueError(f"arrays {sorted(arrays.files)}")
            keys, numbers, weights, priors, names, multipliers = (arrays[n] for n in _ARRAYS)
        slots = (1 << SLOT_BITS,)
        if not (
            (keys.dtype, keys.shape, numbers.dtype, numbers.shape)
            == (np.uint64, slots, np.int32, slots)
            and (weights.dtype, weights.shape) == (np.float16, (numbers.max() + 1, 2))
            and (priors.dtype, priors.shape, names.shape) == (np.float32, (2,), (2,))
            and (multipliers.dtype, multipliers.shape) == (np.uint64, (2,))
        ):
            raise ValueError("arrays of another type or shape")
        return cls(keys, numbers, weights, priors, names.tolist(), multipliers)

    def save(self, out: IO[bytes]) -> None:
        np.savez(
            out,
            keys=self.keys,
            numbers=self.numbers,
            weights=self.weights,
            priors=self.priors,
            names=np.array(self.names),
            multipliers=self.multipliers,
        )

    def classify(self, text: str) -> tuple[str, float]:
        """(language, confidence), as py3langid's `classify` with norm_probs."""
        if text.isupper():
            text = text.lower()
        data = unicodedata.normalize("NFC", text).encode("utf-8", "surrogatepass")
        found = self._features(data)
        if found.size:
            numbers, counts = self._first_seen(found)
            scores = np.log1p(counts.astype(np.float32)) @ self.weights[numbers] + self.priors
        else:
            scores = np.zeros(2, np.float32)
        scores *= 1.0 / math.sqrt(len(data) or 1)
        np.exp(scores - scores.max(), out=scores)
        scores /= scores.sum()
        best = int(scores.argmax())
        return self.names[best], float(scores[best])

    def _first_seen(self, found: Array) -> tuple[Array, Array]:
        """The distinct values of `found` in the order they first occur, and how often
        each does: the order of py3langid's Counter, which its float32 sum follows."""
        positions = np.arange(len(found))
        with self._lock:
            try:
                np.minimum.at(self._first, found, positions)
                seen = self._first[found]
            finally:
                self._first[found] = _UNSEEN
        new = seen == positions
        return found[new], np.bincount(seen, minlength=len(found))[new]

    def _features(self, data: bytes) -> Array:
        """The number of the longest feature ending at each byte, where one does."""
        # The 8 bytes ending at each byte (zeros before the text) as one big-endian
        # integer: a view with a stride of one byte, then one copy in native order.
        ending = np.ndarray((len(data),), ">u8", b"\0" * 7 + data, strides=(1,)).astype(np.uint64)
        # Row n: the code of the n + 2 bytes ending at each byte; 0 where the text is
        # shorter (py3langid starts with no bytes before the text).
        windows = (ending & _LAST_BYTES) | _TAGS
        head = windows[:, : LONGEST - 1]
        head[_BEFORE_TEXT[:, : head.shape[1]]] = 0
        codes = windows.ravel()
        first, second = (hashed(codes, multiplier) for multiplier in self.multipliers)
        # An empty slot holds key 0 and number -1: a code 0 finds nothing either.
        slot = np.where(self.keys.take(first) == codes, first, second)
        numbers = self.numbers.take(slot)
        numbers[self.keys.take(slot) != codes] = -1
        longest = numbers.reshape(windows.shape).max(axis=0)
        return longest[longest >= 0]
