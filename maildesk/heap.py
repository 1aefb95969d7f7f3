"""How this process's C heap treats large buffers: freed ones go back to the system.

glibc serves an allocation of 128 KiB or more with its own mmap, and returns it
to the kernel on free, but after the first such free it raises that threshold
to the freed size (up to 32 MB). From then on a large message's buffers (its
raw bytes, decoded parts, attachment data) come from the main heap, and freed
heap memory mostly stays with the process: a worker that once processed a
25 MB message kept about 50 MB more for good, and each later large message
started from there. A fixed threshold keeps every buffer of 1 MiB or more its
own mapping, so processing a large message costs memory only while it runs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)
LARGE = 1 << 20


def give_back_large_buffers() -> bool:
    """Fix glibc's mmap threshold at `LARGE`; False where that is not glibc (nothing done)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, LARGE))
