"""`python -m maildesk` is the `maildesk` command."""

from maildesk.cli import main

main()
