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

import re
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
    """py3langid's model with our languages' weights only, its tables shared, not copied.

    Its own loader keeps every language's weights (27 MB, for restoring them later)
    and copies the 39 MB automaton into a second array while the first is alive: a
    worker's peak went from 60 to 173 MB, whatever the message. Here the automaton's
    rows stay in the array the file was read into (a memoryview indexes it as fast),
    and only two columns of weights are kept: about 45 MB resident, 70 MB at the peak.
    The file is npz inside LZMA (py3langid's modelio); a missing key is a KeyError.
    """
    import lzma
    import shutil
    import tempfile

    import numpy as np

    with tempfile.TemporaryFile(suffix=".npz") as unpacked:
        with lzma.open(path) as packed:
            shutil.copyfileobj(packed, unpacked, length=1 << 20)
        unpacked.seek(0)
        with np.load(unpacked, allow_pickle=False) as data:
            classes = data["classes"].tolist()
            keep = [classes.index(language) for language in LANGUAGES]
            weights = np.ascontiguousarray(data["ptc"][:, keep])
            priors = np.ascontiguousarray(data["pc"][keep])
            automaton = np.ascontiguousarray(data["nextmove"]).data
            rows = np.ascontiguousarray(data["nextmove_row"]).data
            features = data["out_feat"].tolist()
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
