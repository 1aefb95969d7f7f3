"""The notifications of a new ticket, rendered alone: CPU and instructions per ticket.

Renders what the processor renders for each new ticket of `processing.py`'s
generated mail, `--rounds` times, through one Renderer on the shipped templates
and the system clock, as the daemon does: the customer's acknowledgement (its text
and HTML parts) and the agents' notice (text only: its HTML part is looked up and
found missing). Prints the CPU microseconds per round (`time.process_time`);
`--instructions` runs the script again under valgrind's callgrind and prints the
instructions per round, a figure the machine's drifting speed does not move
(`instructions.py`). What it isolates is the templates' own cost: their lookup
(`maildesk/template_files.py`) and Jinja's rendering, without the database.

    .venv/bin/python bench/rendering.py [--rounds 20000] [--instructions]

Nothing is asserted: the script prints figures.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import common
import instructions

from maildesk import config, templates_admin
from maildesk.config import PACKAGE_TEMPLATES
from maildesk.outbound.render import Renderer

# (template, language) as a new ticket of processing.py renders them, in that order.
RENDERS = (("acknowledgement", "en"), ("agent_notification", "en"))


def run(rounds: int) -> None:
    watch = common.CpuWatch()
    with tempfile.TemporaryDirectory(prefix="maildesk-rendering-") as folder:
        settings = config.from_mapping({}, base_dir=Path(folder))
    notifier = templates_admin.sample_notifier(settings)
    contexts = [
        (name, language, templates_admin.sample_context(notifier, name, language))
        for name, language in RENDERS
    ]
    renderer = Renderer(PACKAGE_TEMPLATES, settings.support.language)
    for name, language, context in contexts:  # compiled once, as in a running worker
        renderer.render(name, language, context)
    started = time.process_time()
    with instructions.counting():
        for _ in range(rounds):
            for name, language, context in contexts:
                renderer.render(name, language, context)
    cpu = time.process_time() - started
    instructions.record(rounds)
    print(f"machine: {common.machine(Path(tempfile.gettempdir()))}")
    print(f"templates: {PACKAGE_TEMPLATES.resolve()}")
    print(f"{watch.note()}; maildesk sources {common.code_fingerprint()}")
    under = " (under valgrind: about 50 times slower)" if instructions.inside() else ""
    print(f"{rounds} rounds of {len(RENDERS)} notifications: {cpu / rounds * 1e6:.1f} µs of CPU "
          f"a round{under}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20000)
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="count the instructions under valgrind (no drift; 50x slower)",
    )
    args = parser.parse_args()
    if args.instructions and not instructions.inside():
        out = Path(tempfile.mkdtemp(prefix="maildesk-callgrind-")) / "callgrind.out"
        counted, rounds = instructions.rerun(out)
        print(
            f"instructions (valgrind's callgrind, hash seed 0): {counted / rounds:,.0f} a round "
            f"({counted:,} for {rounds}); by C function: callgrind_annotate {out}"
        )
        return
    run(args.rounds)


if __name__ == "__main__":
    main()
