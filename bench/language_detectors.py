"""Load time, memory and accuracy of the offline language detectors weighed for cs/en.

Run each in a fresh process (RSS is the process's peak):
    .venv/bin/python bench/language_detectors.py py3langid
    python -m venv /tmp/lingua && /tmp/lingua/bin/pip install lingua-language-detector
    /tmp/lingua/bin/python bench/language_detectors.py lingua
"""

from __future__ import annotations

import resource
import sys
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


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else "py3langid"
    started = time.perf_counter()
    detect = {"py3langid": py3langid, "lingua": lingua}[name]()
    detect("warm up")
    loaded = time.perf_counter() - started
    started = time.perf_counter()
    right = sum(detect(text) == lang for lang, text in SAMPLES)
    each = (time.perf_counter() - started) / len(SAMPLES)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{name}: load {loaded * 1000:.0f} ms, {right}/{len(SAMPLES)} right, "
        f"{each * 1e6:.0f} us/text, peak RSS {rss:.0f} MB"
    )


if __name__ == "__main__":
    main()
