"""The one-click confirmation page for an agent's console commands (pipeline/console.py).

The link in the confirmation mail names the confirmation and its signature.
GET only shows what would run (mail scanners follow links); the POST from the
page's button runs it, once, before it expires. The same confirmation can be
used by replying to the mail instead; whichever comes first wins.
"""

from __future__ import annotations

import asyncio
import html
from typing import TYPE_CHECKING

from aiohttp import web

from maildesk.web.keys import SERVICES
from maildesk.web.paid import page

if TYPE_CHECKING:
    from maildesk.services import Services

_INVALID = ("Link not valid", "<p>This link is broken, used or expired. Nothing was done.</p>", 400)
_OUTCOMES = {
    "done": ("Done", "<p>Confirmed: the commands ran. You will also get a mail.</p>", 200),
    "cancelled": (
        "Cancelled",
        "<p>You cancelled this by answering its mail. Nothing was done.</p>",
        409,
    ),
    "used": ("Already used", "<p>This confirmation was already used. Nothing was done.</p>", 409),
    "expired": ("Expired", "<p>This confirmation expired. Nothing was done.</p>", 410),
    "failed": ("Not done", "<p>The commands could not run; you got a mail saying why.</p>", 409),
    "unknown": _INVALID,
}


def _read(request_values: dict[str, str], services: Services) -> int | None:
    number, signature = request_values.get("c", ""), request_values.get("s", "")
    if not (number.isascii() and number.isdigit()) or len(number) > 12:
        return None
    confirmation = int(number)
    return confirmation if services.processor.console.check(confirmation, signature) else None


async def show(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    values = {k: str(v) for k, v in request.query.items()}
    confirmation = _read(values, services)
    if confirmation is None:
        return page(*_INVALID)

    def lines() -> list[str] | None:
        with services.db.reading() as session:
            row = services.processor.console.pending(session, confirmation, services.clock.now())
            return row.commands.splitlines() if row is not None else None

    commands = await asyncio.get_running_loop().run_in_executor(None, lines)
    if commands is None:
        return page(*_INVALID)
    listed = "".join(f"<li><code>{html.escape(line)}</code></li>" for line in commands)
    form = (
        f"<ul>{listed}</ul>"
        '<form method="post" action="/confirm">'
        f'<input type="hidden" name="c" value="{confirmation}">'
        f'<input type="hidden" name="s" value="{html.escape(values.get("s", ""))}">'
        '<button type="submit">Confirm / Potvrdit</button></form>'
    )
    return page("Confirm your commands", form)


async def confirm(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    form = await request.post()
    values = {k: str(v) for k, v in form.items()}
    confirmation = _read(values, services)
    if confirmation is None:
        return page(*_INVALID)

    def run() -> str:
        console = services.processor.console
        with services.db.transaction() as session:
            outcome = console.confirm(session, confirmation, services.clock.now(), "web")
            if outcome.agent is not None and outcome.state in ("done", "failed"):
                console.tell(session, outcome, None)
            return outcome.state

    state = await asyncio.get_running_loop().run_in_executor(None, run)
    return page(*_OUTCOMES.get(state, _INVALID))
