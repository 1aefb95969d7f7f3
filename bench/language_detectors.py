"""Load time, memory, accuracy and CPU per text of the offline language detectors
weighed for cs/en, and of maildesk's own (py3langid's guess from a small model).

Run each in a fresh process (RSS is the process's peak):
    .venv/bin/python bench/language_detectors.py maildesk
    .venv/bin/python bench/language_detectors.py py3langid
    python -m venv /tmp/lingua && /tmp/lingua/bin/pip install lingua-language-detector
    /tmp/lingua/bin/python bench/language_detectors.py lingua
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from collections.abc import Callable

SAMPLES = [
    ("en", "The printer on the second floor stopped working this morning."),
    ("en", "Hello, I cannot log in to the portal since yesterday."),
    ("en", "Could you please send me the invoice again?"),
    ("en", "It still does not work after the update."),
    ("en", "Please close the ticket, all good now."),
    ("en", "Where can I download the new version"),
    ("en", "The export to PDF crashes when the table is large."),
    ("en", "We need a new user account for our colleague."),
    ("cs", "Tiskárna ve druhém patře dnes ráno přestala fungovat."),
    ("cs", "Dobrý den, od včerejška se nemohu přihlásit do portálu."),
    ("cs", "Mohli byste mi prosím znovu poslat fakturu?"),
    ("cs", "Po aktualizaci to pořád nefunguje."),
    ("cs", "Prosím uzavřete požadavek, už je vše v pořádku."),
    ("cs", "Kde si mohu stáhnout novou verzi"),
    ("cs", "Export do PDF spadne, když je tabulka velká."),
    ("cs", "Potrebujeme novy uzivatelsky ucet pro kolegu."),
    ("cs", "Dobry den, nefunguje mi prihlaseni do systemu."),
    ("cs", "Diky, uz to jde."),
]


# A long mail: only the first language.MAX_CHARS characters are read.
LONG = " ".join(text for _, text in SAMPLES * 10)[:4096]


def maildesk() -> Callable[[str], str]:
    """What a worker does: the model derived (in a child process, not timed as load
    here when it is kept already) and read from the state folder."""
    from pathlib import Path

    from maildesk.language import _model, warm

    folder = Path(tempfile.mkdtemp(prefix="maildesk-language-bench-"))
    warm(folder)  # derived and kept: what follows is a worker's load
    _model.cache_clear()
    started = time.perf_counter()
    model = _model(folder)
    print(f"maildesk: the kept model read in {(time.perf_counter() - started) * 1000:.0f} ms")
    return lambda text: str(model.classify(text)[0])


def py3langid() -> Callable[[str], str]:
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    model = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    model.set_languages(["cs", "en"])
    return lambda text: str(model.classify(text)[0])


def lingua() -> Callable[[str], str]:
    from lingua import Language, LanguageDetectorBuilder  # type: ignore[import-not-found]

    detector = (
        LanguageDetectorBuilder.from_languages(Language.CZECH, Language.ENGLISH)
        .with_preloaded_language_models()
        .build()
    )
    names = {Language.CZECH: "cs", Language.ENGLISH: "en"}
    return lambda text: names.get(detector.detect_language_of(text), "?")


def cpu_us(detect: Callable[[str], str], texts: list[str]) -> float:
    """CPU microseconds per text, the best of five rounds (other processes vary it)."""
    rounds = []
    for _ in range(5):
        started = time.process_time()
        for _ in range(20):
            for text in texts:
                detect(text)
        rounds.append((time.process_time() - started) / (20 * len(texts)))
    return min(rounds) * 1e6


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else "py3langid"
    started = time.perf_counter()
    detect = {"maildesk": maildesk, "py3langid": py3langid, "lingua": lingua}[name]()
    detect("warm up")
    loaded = time.perf_counter() - started
    right = sum(detect(text) == lang for lang, text in SAMPLES)
    each = cpu_us(detect, [text for _, text in SAMPLES])
    long = cpu_us(detect, [LONG])
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{name}: load {loaded * 1000:.0f} ms, {right}/{len(SAMPLES)} right, "
        f"{each:.0f} us/text (CPU), {long:.0f} us for {len(LONG)} characters, "
        f"peak RSS {rss:.0f} MB"
    )


if __name__ == "__main__":
    main()
