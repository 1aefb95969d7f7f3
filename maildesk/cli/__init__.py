"""The `maildesk` command: parse options, call a service, print. No business rules here.

One module per group of commands; importing them registers them on `main`.
"""

from maildesk.cli import ops, people, queues, tickets
from maildesk.cli.base import EX_DATAERR, EX_TEMPFAIL
from maildesk.cli.main import main
from maildesk.cli.templates import templates

main.add_command(templates)

__all__ = ["EX_DATAERR", "EX_TEMPFAIL", "main", "ops", "people", "queues", "tickets"]
