"""Shared pieces of the benchmarks in bench/: test mail, temp configs, the maildesk CLI.

Not a benchmark itself; `ingest.py` and `import_mbox.py` import it (they run as
`python bench/<script>.py`, so this folder is on sys.path).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import resource
import shutil
import signal
import smtplib
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, formataddr
from pathlib import Path
from typing import Any

SUPPORT = "support@example.test"
DOMAIN = "example.test"

_WORDS = (
    "the printer on floor two prints only blank pages since the update yesterday and "
    "nobody can send invoices to customers please check the driver or the toner we "
    "tried restarting it twice the error code on the display says E42 after about ten "
    "pages our accounting team needs this fixed before Friday because month end closing "
    "depends on it tiskárna ve druhém patře tiskne jen prázdné stránky od včerejší "
    "aktualizace prosím podívejte se na ovladač děkujeme za rychlou odpověď"
).split()

_NAMES = (
    ("Alice Nováková", "alice"),
    ("Bob Dvořák", "bob"),
    ("Carol Smith", "carol"),
    ("Dan Černý", "dan"),
    ("Eva Procházková", "eva"),
    ("Frank Miller", "frank"),
    ("Gita Horáková", "gita"),
    ("Hugo Svoboda", "hugo"),
)


def sender(i: int) -> tuple[str, str]:
    """(display name, address) of the i-th message's author: a handful of customers."""
    name, local = _NAMES[i % len(_NAMES)]
    return name, f"{local}@customer{i % 3}.test"


def message_id(i: int, run: str) -> str:
    return f"{run}.{i:06d}@mail.customer.test"


def first_subject(i: int, run: str) -> str:
    """The subject of message i when it starts a conversation."""
    words = random.Random(f"{run}-{i}-subject").sample(_WORDS[:40], 4)
    return f"Printer problem no. {i}: " + " ".join(words)


def customer_message(
    i: int,
    *,
    run: str,
    size: int,
    date: datetime,
    subject: str | None = None,
    reply_to: int | None = None,
    references: Sequence[int] = (),
    author: int | None = None,
    newline: bytes = b"\r\n",
    writer: tuple[str, str] | None = None,
) -> bytes:
    """One plain-text customer message of about `size` bytes with realistic headers.

    `reply_to` (an earlier index) adds In-Reply-To and References, as a mail client
    answering that message would; `author` (an index) makes that message's sender write;
    `writer` (display name, address) is who writes instead of them.
    """
    rng = random.Random(f"{run}-{i}")
    name, addr = writer or sender(i if author is None else author)
    subject = subject or first_subject(i, run)
    headers = [
        f"Return-Path: <{addr}>",
        f"Received: from mail.customer.test (mail.customer.test [192.0.2.{i % 250 + 1}])\n"
        f"\tby mx.{DOMAIN} (Postfix) with ESMTPS id {i:08X}\n"
        f"\tfor <{SUPPORT}>; {format_datetime(date)}",
        f"Received: from [10.0.0.{i % 250 + 1}] (unknown [10.0.0.{i % 250 + 1}])\n"
        f"\tby mail.customer.test (Postfix) with ESMTPSA id {i * 7919:08X};\n"
        f"\t{format_datetime(date)}",
        f"Date: {format_datetime(date)}",
        # Clients send non-ASCII names as RFC 2047 encoded words.
        f"From: {formataddr((name, addr), charset='utf-8')}",
        f"To: Example Support <{SUPPORT}>",
        f"Subject: {subject}",
        f"Message-ID: <{message_id(i, run)}>",
    ]
    if reply_to is not None:
        chain = [*references, reply_to]
        headers.append(f"In-Reply-To: <{message_id(reply_to, run)}>")
        headers.append("References: " + "\n ".join(f"<{message_id(r, run)}>" for r in chain[-10:]))
    headers += [
        "MIME-Version: 1.0",
        "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Thunderbird/128.5.0",
        "Content-Language: en-US",
        "Content-Type: text/plain; charset=UTF-8; format=flowed",
        "Content-Transfer-Encoding: 8bit",
    ]
    head = "\n".join(headers).encode()
    lines = ["Hello,", ""]
    used = len(head) + 40
    line: list[str] = []
    while used < size - 60:
        word = rng.choice(_WORDS)
        if sum(len(w) + 1 for w in line) + len(word) > 72:
            lines.append(" ".join(line))
            used += len(lines[-1].encode()) + 1
            line = []
            if rng.random() < 0.12:
                lines.append("")
        line.append(word)
    lines += [" ".join(line), "", "Best regards,", name]
    body = "\n".join(lines).encode()
    return (head + b"\n\n" + body + b"\n").replace(b"\n", newline)


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so that `finally` blocks stop what we started."""
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(128 + signal.SIGTERM))


def send_session(
    port: int, mails: Sequence[tuple[str, bytes]], interval: float = 0.0, timeout: float = 120
) -> tuple[float, float]:
    """Send `mails` ((envelope sender, bytes) each) to the support address in one
    persistent SMTP session, message k no earlier than k * `interval` after the start
    when pacing; returns when it started and when the last 250 came (`time.time()`)."""
    started = time.time()
    client = smtplib.SMTP("127.0.0.1", port, local_hostname="client.localhost", timeout=timeout)
    with client as smtp:
        for k, (mail_from, raw) in enumerate(mails):
            if interval and (delay := started + k * interval - time.time()) > 0:
                time.sleep(delay)
            if refused := smtp.sendmail(mail_from, [SUPPORT], raw):
                raise RuntimeError(f"refused: {refused}")
        return started, time.time()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for(
    predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.02
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := predicate():
            return result
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


HEALTH_TOKEN = "bench-health-token"


def healthz(web_port: int) -> dict[str, Any]:
    """serve's /healthz with its figures (the bearer of `write_config`'s token)."""
    request = urllib.request.Request(f"http://127.0.0.1:{web_port}/healthz")
    request.add_header("Authorization", f"Bearer {HEALTH_TOKEN}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return dict(json.loads(response.read()))
    except urllib.error.HTTPError as answer:  # 503: degraded, with the same body
        return dict(json.loads(answer.read()))


def write_config(
    folder: Path,
    smtp_port: int,
    web_port: int,
    workers: dict[str, Any] | None = None,
    sign: bool = False,
    extra: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """A self-contained config in `folder`: SQLite, Maildir outbox, no caps in the way;
    `workers`, the `[workers]` keys to set (e.g. `nice`); `sign`: our mail DKIM-signed;
    `extra`: more keys by section (e.g. agents), over the ones here."""
    values: dict[str, dict[str, Any]] = {
        "support": {
            "address": SUPPORT,
            "name": "Example Support",
            "base_url": f"http://127.0.0.1:{web_port}",
            "language": "en",
        },
        "database": {"url": f"sqlite:///{folder / 'maildesk.db'}"},
        "smtp": {"host": "127.0.0.1", "port": smtp_port},
        "web": {"host": "127.0.0.1", "port": web_port, "secret_key": "bench-" + "k" * 40},
        "outbound": {"url": f"maildir:{folder / 'outbox'}"},
        # The RFC 3834 caps would stop acknowledging a sender after 5 in an hour, and
        # everyone after 200: the benchmark wants one acknowledgement per new ticket
        # (with the global cap, only the first 200 messages of a run were acknowledged).
        "limits": {"auto_replies_per_hour": 10_000_000, "auto_replies_per_hour_total": 10_000_000},
        # No DNS: what is measured is our own work, not a resolver's answers (with the
        # default, each message asked the machine's resolver for a DMARC record).
        "trust": {"verify_dkim": False},
        # /healthz gives its queue counts, which the benchmarks wait on, with it only.
        "metrics": {"bearer_token": HEALTH_TOKEN},
    }
    if workers:
        values["workers"] = dict(workers)
    for section, keys in (extra or {}).items():
        values[section] = values.get(section, {}) | keys
    if sign:  # as a production desk's mail is
        key = str(signing_key(folder))
        values["outbound"] |= {"dkim_selector": "desk", "dkim_key": key}
    text = "".join(
        f"[{section}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in table.items()) + "\n"
        for section, table in values.items()
    )
    path = folder / "maildesk.toml"
    path.write_text(text)
    return path


def maildesk_command() -> list[str]:
    """The maildesk console script of the interpreter running the benchmark.

    $MAILDESK_CMD (split on spaces) replaces it, e.g. to run a patched copy for an
    experiment or the daemon under a profiler.
    """
    if override := os.environ.get("MAILDESK_CMD"):
        return override.split()
    script = Path(sys.executable).parent / "maildesk"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from maildesk.cli import main; sys.exit(main())"]


def run_maildesk(config: Path, *args: str, log: Path | None = None) -> float:
    """Run one maildesk command to completion; returns its wall time in seconds."""
    out = log.open("ab") if log else subprocess.DEVNULL
    started = time.perf_counter()
    try:
        result = subprocess.run(
            [*maildesk_command(), "--config", str(config), *args],
            stdout=out,
            stderr=out,
            check=False,
            timeout=3600,
        )
    finally:
        if log:
            out.close()  # type: ignore[union-attr]
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:] if log else ""
        raise RuntimeError(f"maildesk {' '.join(args)} exited {result.returncode}\n{tail}")
    return elapsed


def stop_process(proc: subprocess.Popen[bytes], grace: float = 15.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds. Only for processes we started."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def db_rows(path: Path, query: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return conn.execute(query).fetchall()


def timestamp(value: str | None) -> datetime | None:
    """A datetime column as SQLAlchemy stores it in SQLite (UTC, no offset)."""
    if value is None:
        return None
    moment = datetime.fromisoformat(value)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def seconds(delta: timedelta) -> float:
    return delta.total_seconds()


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (pct in 0..100)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def machine(folder: Path) -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    fs = "?"
    try:
        fs = subprocess.run(
            ["df", "--output=fstype", str(folder)], capture_output=True, text=True, check=True
        ).stdout.split()[-1]
    except (OSError, subprocess.CalledProcessError, IndexError):
        pass
    nproc = len(os.sched_getaffinity(0))
    return (
        f"{nproc} CPUs ({cpu}), Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}, temp dir on {fs}"
    )


def _cpu_jiffies() -> tuple[int, int]:
    """(all, busy) jiffies of all CPUs since boot, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields), sum(fields) - idle


def _own_cpu() -> float:
    """CPU seconds of this process and of the children it has waited for."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class CpuWatch:
    """How much of the machine other processes used while the benchmark ran."""

    def __init__(self) -> None:
        self._start = _cpu_jiffies()
        self._own = _own_cpu()

    def others(self) -> float:
        """Share of all CPUs busy with other work since start (0..1)."""
        hz = os.sysconf("SC_CLK_TCK")
        total, busy = _cpu_jiffies()
        total -= self._start[0]
        busy -= self._start[1]
        own = (_own_cpu() - self._own) * hz
        return max(busy - own, 0) / max(total, 1)

    def note(self) -> str:
        share = self.others()
        note = f"other processes kept {share:.0%} of the CPUs busy during the run"
        if share > 0.05:
            note += " -- figures are noisy, run again on a quiet machine"
        return note


def code_fingerprint() -> str:
    """A short hash of the maildesk sources measured (the tree may have uncommitted changes)."""
    import maildesk  # the package measured: PYTHONPATH may name another tree than this one

    package = Path(maildesk.__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table (pastes into README.md)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def run_in_workdir(prefix: str, name: str, args: argparse.Namespace, run: Any) -> None:
    """Run one benchmark in a fresh temp dir: kept (and named) on failure or with --keep."""
    exit_on_sigterm()
    args.cpu_watch = CpuWatch()
    if args.profile:
        args.profile = args.profile.resolve()
    workdir = Path(tempfile.mkdtemp(prefix=f"maildesk-{prefix}-", dir=args.workdir))
    try:
        run(args, workdir)
    except (RuntimeError, TimeoutError, OSError, subprocess.SubprocessError) as exc:
        sys.exit(f"{name}: {exc}\n(logs and data kept in {workdir})")
    except BaseException:  # interrupted: nothing to look at
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        raise
    if args.keep:
        print(f"kept {workdir}", file=sys.stderr)
    else:
        shutil.rmtree(workdir, ignore_errors=True)


def signing_key(folder: Path) -> Path:
    """A DKIM private key for the desk's own mail (made once per folder)."""
    key = folder / "desk-dkim.pem"
    if not key.exists():
        subprocess.run(
            ["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True
        )
    return key


def every_notice() -> dict[str, int]:
    """`[limits]` under which every new ticket is acknowledged and told to each agent,
    however many tickets one sender opens: the work a benchmark means to measure. Only
    the keys the measured tree knows (an older tree, run through PYTHONPATH, refuses
    an unknown key)."""
    from dataclasses import fields

    from maildesk.config import LimitSettings

    uncapped = {
        "auto_replies_per_hour": 10_000_000,
        "auto_replies_per_hour_total": 10_000_000,
        "new_ticket_notices_per_hour": 0,
    }
    known = {field.name for field in fields(LimitSettings)}
    return {key: value for key, value in uncapped.items() if key in known}
