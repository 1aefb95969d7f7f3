"""How a task that fails again and again while something it needs is away logs it.

A database away for a minute failed every sweep of every worker loop and every
group commit, each with the same traceback: hundreds of them in a failover, the
one that says why lost among them. An `Outage` logs the first failure whole,
each one after it in a line with the count, and the first success after them.
"""

from __future__ import annotations

import logging


def describe(exc: BaseException) -> str:
    """`exc` in one line: its type and its message's first line."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


class Outage:
    """The failures in a row of one task (`what`: "processing"), each an attempt
    (`attempts`: what the count is of). Used by one thread."""

    def __init__(self, logger: logging.Logger, what: str, attempts: str = "tries") -> None:
        self.logger, self.what, self.attempts = logger, what, attempts
        self.failures = 0

    def failed(self, exc: BaseException, doing: str = "", then: str = "retrying shortly") -> None:
        """Log `exc`, a failure of `doing` (by default `what`), and what comes of it."""
        self.failures += 1
        doing = doing or self.what
        if self.failures == 1:
            self.logger.error("%s failed; %s", doing, then, exc_info=exc)
        else:
            self.logger.error("%s failed again (%d %s in a row): %s",
                              doing, self.failures, self.attempts, describe(exc))  # fmt: skip

    def succeeded(self) -> None:
        """The task worked: after failures, say so once."""
        if self.failures:
            self.logger.warning("%s works again, after %d failed %s",
                                self.what, self.failures, self.attempts)  # fmt: skip
            self.failures = 0
