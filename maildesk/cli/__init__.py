"""The `maildesk` command: parse options, call a service, print. No business rules here.

One module per group of commands, imported only when one of its commands runs
(see `LAZY_COMMANDS` in main.py): a new group goes there.
"""

from maildesk.cli.base import EX_DATAERR, EX_TEMPFAIL
from maildesk.cli.main import main

__all__ = ["EX_DATAERR", "EX_TEMPFAIL", "main"]
