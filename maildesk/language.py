"""Which of our languages (cs, en) a customer wrote in, when no header says it.

The guess is py3langid's (a naive-Bayes model of byte n-grams, offline),
restricted to cs and en. It decides only on text long enough to tell: fewer than
`MIN_WORDS` words or `MIN_LETTERS` letters ("Thanks!", "OK díky") gives
None, and the caller falls back to `[support] language`; so does a guess
below `MIN_CONFIDENCE`. Only the first `MAX_CHARS` characters are read, so
the work per message is capped whatever a stranger sends.

A worker does not load py3langid's model (68 MB unpacked, most of it a byte
automaton and the weights of 140 other languages) but a small one derived from
it (`language_derive`, in a process of its own) that gives the same guess and
confidence, to the last bit: our two languages' weights of each feature, found
by a hash table instead of the automaton (`language_model`). It is derived once
per install and kept in the state folder (`_model`), and read on the first text
that needs it, not at start-up: most mail says its language in
`Content-Language` or is too short to judge. Without it no language is guessed,
and mail goes on.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from maildesk.config import LANGUAGES

if TYPE_CHECKING:
    from maildesk.language_model import TwoLanguages

log = logging.getLogger("maildesk.language")

MAX_CHARS = 4096
MIN_WORDS = 4
MIN_LETTERS = 20
# With two languages a guess is never below 0.5; "OK fine." scores 0.53, a
# real sentence 0.99 and more.
MIN_CONFIDENCE = 0.9

_WORD = re.compile(r"[^\W\d_]+")


@cache
def _model(folder: Path | None = None) -> TwoLanguages:
    """The small model, kept in `folder` (the state folder) under a name that
    py3langid's packed model decides, so that it is derived once per install and
    every worker reads the one file; derived anew when the kept one is unreadable
    (a full disk, a crash). Without a folder, or one that cannot be written, this
    process derives its own. One immutable model per process, shared by every
    detector."""
    from py3langid.langid import MODEL_DIR, MODEL_FILE

    from maildesk.language_model import FORMAT, TwoLanguages

    packed = Path(MODEL_DIR) / MODEL_FILE
    recipe = f"{packed.name}/{FORMAT}/{','.join(LANGUAGES)}".encode()
    name = f"language-{hashlib.sha256(packed.read_bytes() + recipe).hexdigest()[:16]}.npz"
    if folder is None:
        return _derived(packed, name)
    kept = folder / name
    try:
        return TwoLanguages.load(kept)
    except FileNotFoundError:
        pass
    except (zipfile.BadZipFile, ValueError, EOFError) as exc:
        log.warning("language model: the copy in %s is unusable (%s): derived again", folder, exc)
        kept.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("language model: cannot read it in %s (%s): a private copy", folder, exc)
        return _derived(packed, name)
    try:
        model = _derived(packed, name, folder)
    except (OSError, RuntimeError) as exc:  # e.g. its disk is full: the temp folder may not be
        log.warning("language model: cannot keep it in %s (%s): a private copy", folder, exc)
        return _derived(packed, name)
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".language-") as fresh:
            model.save(fresh)
            fresh.flush()
            os.fsync(fresh.fileno())  # renamed whole or not at all, even after a crash
            os.link(fresh.name, kept)  # two workers at once: the first link wins
    except FileExistsError:
        pass
    except OSError as exc:
        log.warning("language model: cannot keep it in %s (%s): a private copy", folder, exc)
        return _derived(packed, name)
    # An older py3langid's, and the whole unpacked model that earlier versions kept.
    for stale in [*folder.glob("language-*.npz"), *folder.glob("py3langid-*.npz")]:
        if stale != kept:
            stale.unlink(missing_ok=True)
    return model


# Derived in this process, by name: a process has one state folder, but the tests
# make hundreds, and deriving takes a second.
_derived_here: dict[str, TwoLanguages] = {}


def _derived(packed: Path, name: str, scratch: Path | None = None) -> TwoLanguages:
    """The small model, derived in a child process (`language_derive`), which reads
    the whole of py3langid's model: no long-running process should hold that. It
    unpacks it into `scratch` (the state folder, on disk; else the temp folder)."""
    from maildesk.language_model import TwoLanguages

    if name in _derived_here:
        return _derived_here[name]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=scratch, prefix=".language-") as folder:
        out = Path(folder) / name
        command = [sys.executable, "-m", "maildesk.language_derive", str(packed), str(out)]
        done = subprocess.run(
            [*command, ",".join(LANGUAGES)],
            capture_output=True,
            encoding="utf-8",
            errors="replace",
            timeout=600,
        )
        if done.returncode:
            reason = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
            raise RuntimeError(f"cannot derive the language model from {packed}: {reason}")
        model = _derived_here[name] = TwoLanguages.load(out)
    log.info("language model derived from %s in %.1f s", packed, time.monotonic() - started)
    return model


def warm(folder: Path | None = None) -> None:
    """Load the model now (derived first if it is not kept yet): for benchmarks that
    time the steady state."""
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

    `folder`: where the small model is kept for every process (`_model`)."""

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
