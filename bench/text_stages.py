"""CPU time of each text stage on hostile input, 64 KB .. 16 MB: the figures in README.md.

Run by hand from the repository root:

    .venv/bin/python bench/text_stages.py                 # every stage, every shape
    .venv/bin/python bench/text_stages.py --stages parse --sizes 1M,16M
    .venv/bin/python bench/text_stages.py --stages html --memory --sizes 1M,4M,16M

Stages: `html` (html_to_text), `new_text`, `thanks` (is_only_thanks), `words` (has_word), and
`parse` (maildesk.message.parse of a whole mail whose only body is the shape as HTML, base64:
mail-parser, the HTML conversion and the rest). The shapes are the ones tests/test_linear_work.py
asserts linear growth on (for `html`, also the shapes it bounds the memory of). Each cell is
the best of --repeat runs, in seconds of CPU; with `--memory`, the most memory Python held at
once during a run (tracemalloc, which also slows the run), in MB.
"""

from __future__ import annotations

import argparse
import email.policy
import platform
import sys
import time
import tracemalloc
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from maildesk.html_text import html_to_text  # noqa: E402
from maildesk.message import parse  # noqa: E402
from maildesk.replies import has_word, is_only_thanks, new_text  # noqa: E402
from tests.test_linear_work import HTML_MEMORY_SHAPES, HTML_SHAPES, TEXT_SHAPES  # noqa: E402

SIZES = "64K,256K,1M,4M,16M"


def _mail(html: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = "mallory@customer.test"
    msg["To"] = "support@example.test"
    msg["Subject"] = "hostile"
    msg.set_content(html, subtype="html", cte="base64")
    return msg.as_bytes(policy=email.policy.SMTP)


STAGES: dict[str, tuple[dict[str, Callable[[int], str]], Callable[[str], object]]] = {
    "html": ({**HTML_SHAPES, **HTML_MEMORY_SHAPES}, html_to_text),
    "new_text": (TEXT_SHAPES, new_text),
    "thanks": (TEXT_SHAPES, is_only_thanks),
    "words": (TEXT_SHAPES, lambda text: has_word(text, ["SCHVALUJI", "APPROVE"])),
    "parse": ({**HTML_SHAPES, **TEXT_SHAPES}, lambda raw: parse(raw.encode("latin-1"))),
}


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20}
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


def _cpu(run: Callable[[str], object], text: str) -> float:
    started = time.process_time()
    run(text)
    return time.process_time() - started


def _peak_mb(run: Callable[[str], object], text: str) -> float:
    tracemalloc.start()
    try:
        run(text)
        return tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--sizes", default=SIZES)
    parser.add_argument("--shapes", default="", help="only shapes whose name contains this")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--memory", action="store_true", help="peak MB held, not CPU seconds")
    args = parser.parse_args()
    sizes = args.sizes.split(",")
    print(f"# {platform.python_version()} on {platform.machine()}, best of {args.repeat}")
    print(f"{'stage':9} {'shape':36} " + " ".join(f"{s:>7}" for s in sizes))
    for stage in args.stages.split(","):
        shapes, run = STAGES[stage]
        worst = 0.0
        for name, make in shapes.items():
            if args.shapes not in name:
                continue
            cells = []
            for size in sizes:
                text = make(_size(size))
                if stage == "parse":  # the mail's bytes, carried through as latin-1
                    text = _mail(text).decode("latin-1")
                best = float("inf")
                for _ in range(args.repeat):
                    best = min(best, (_peak_mb if args.memory else _cpu)(run, text))
                worst = max(worst, best)
                cells.append(f"{best:7.3f}")
            print(f"{stage:9} {name[:36]:36} " + " ".join(cells), flush=True)
        print(f"{stage:9} {'(worst)':36} {worst:7.3f}\n", flush=True)


if __name__ == "__main__":
    main()
