"""Instructions counted by valgrind's callgrind: a figure the machine's speed does not move.

CPU time on these virtual machines drifts by up to 2x within minutes, so a change
worth a few per cent of a message shows only as alternating pairs, and often not
even then. Callgrind counts the instructions a program runs instead: the same
code on the same input gives the same count within about 1 % (the generated mail
differs a little from run to run), whatever else the machine is doing. It is no
clock (a cache miss or an fsync costs time and no instructions, and the kernel's
work is not counted), so the aims stay in milliseconds; the count says whether a
change made less work.

A benchmark calls `rerun` to run itself again, with the same arguments, under
callgrind with counting off, and wraps what it measures in `counting()`; or it
runs maildesk commands under callgrind, child processes included (`commands`),
and subtracts a command that does no work. Either way the hash seed is fixed, so
dictionaries and sets do the same work each time. Needs valgrind (Debian's
package `valgrind`); a run is about 50 times slower.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Set in the rerun: where callgrind writes its counts.
_OUT = "MAILDESK_BENCH_CALLGRIND_OUT"


def inside() -> bool:
    """Whether this process is the rerun under callgrind."""
    return _OUT in os.environ


def _valgrind() -> list[str]:
    if not shutil.which("valgrind"):
        raise RuntimeError("counting instructions needs valgrind (apt-get install valgrind)")
    return ["valgrind", "--tool=callgrind"]


def rerun(out: Path) -> tuple[int, int]:
    """Run this script again under callgrind, its output shown: (the instructions that
    ran inside `counting()`, the units of work it `recorded`)."""
    command = [
        *_valgrind(),
        "--instr-atstart=no",
        f"--callgrind-out-file={out}",
        sys.executable,
        sys.argv[0],
        *sys.argv[1:],
    ]
    env = {**os.environ, _OUT: str(out), "PYTHONHASHSEED": "0"}
    subprocess.run(command, env=env, check=True)
    return counted(out), int(_units(out).read_text())


def record(units: int) -> None:
    """In the rerun: how many units of work (messages) the counted instructions did."""
    if inside():
        _units(Path(os.environ[_OUT])).write_text(str(units))


def _units(out: Path) -> Path:
    return out.with_name(out.name + ".units")


@contextmanager
def counting() -> Iterator[None]:
    """Count the instructions run inside, in the rerun (elsewhere: nothing)."""
    if not inside():
        yield
        return
    _instrument("on")
    try:
        yield
    finally:
        _instrument("off")


def _instrument(state: str) -> None:
    subprocess.run(
        ["callgrind_control", f"--instr={state}", str(os.getpid())],
        check=True,
        capture_output=True,
    )


@contextmanager
def commands(out: Path, command: list[str]) -> Iterator[None]:
    """Inside, `common.maildesk_command()` runs `command` under callgrind, each process
    it starts too, counting everything; their counts go to `out`.<pid> (`counted_all`)."""
    saved = {name: os.environ.get(name) for name in ("MAILDESK_CMD", "PYTHONHASHSEED")}
    options = ["--trace-children=yes", f"--callgrind-out-file={out}.%p"]
    os.environ["MAILDESK_CMD"] = " ".join([*_valgrind(), *options, *command])
    os.environ["PYTHONHASHSEED"] = "0"
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def counted_all(out: Path) -> int:
    """The instructions of every process `commands` ran with this `out`."""
    return sum(counted(path) for path in out.parent.glob(out.name + ".*"))


def counted(out: Path) -> int:
    """The instructions a callgrind output file counted (its `totals:` line)."""
    for line in out.read_text().splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    raise RuntimeError(f"{out}: no totals line")
