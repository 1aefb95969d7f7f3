"""The approve/decline page for paid work, reached from a signed link in the notice.

GET only shows the question, with the price of its round (mail scanners
follow links; they must not approve anything); the POST from the page's
button records the answer. A link works once and for its own round only:
after an answer the ticket is no longer pending, and a newer `#paid` makes
every older link a dead one.
"""

from __future__ import annotations

import asyncio
import html
from typing import TYPE_CHECKING

from aiohttp import web

from maildesk.models import Ticket
from maildesk.tickets.lifecycle import Lifecycle, paid_question
from maildesk.web.keys import SERVICES
from maildesk.web.links import PaidAnswer

if TYPE_CHECKING:
    from maildesk.services import Services

_HEADERS = {"Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}
_TEXT = {
    "approve": ("Approve the paid work", "Approve / Schválit"),
    "decline": ("Decline the paid work", "Decline / Odmítnout"),
}


def page(title: str, body: str, status: int = 200) -> web.Response:
    document = (
        '<!DOCTYPE html><html><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title></head><body><h1>{html.escape(title)}</h1>"
        f"{body}</body></html>"
    )
    return web.Response(text=document, content_type="text/html", status=status, headers=_HEADERS)


def _question(services: Services, answer: PaidAnswer) -> tuple[str, str]:
    """(state, price) of the link's round: open, answered, or superseded by a newer one."""
    with services.db.reading() as session:
        ticket = session.get(Ticket, answer.ticket)
        if ticket is None:
            return "superseded", ""
        state = paid_question(ticket, answer.round)
        return state, ticket.paid_note if state == "open" else ""


_INVALID = ("Link not valid", "<p>This link is broken or has expired.</p>", 400)
_SUPERSEDED = (
    "Link no longer valid",
    "<p>This link belongs to an earlier request for paid work. Use the newest mail.</p>",
    410,
)
_ANSWERED = ("Already answered", "<p>This question has already been answered.</p>", 409)


async def show(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    token = request.query.get("token", "")
    answer = services.links.read(token)
    if answer is None:
        return page(*_INVALID)
    state, price = await asyncio.get_running_loop().run_in_executor(
        None, _question, services, answer
    )
    if state != "open":
        return page(*(_SUPERSEDED if state == "superseded" else _ANSWERED))
    title, button = _TEXT[answer.answer]
    form = (
        f"<p>{html.escape(price)}</p>"
        f'<form method="post" action="/paid"><input type="hidden" name="token" '
        f'value="{html.escape(token)}"><button type="submit">{html.escape(button)}</button></form>'
    )
    return page(f"{title} — #{answer.ticket}", form)


async def answer(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    form = await request.post()
    answer = services.links.read(str(form.get("token", "")))
    if answer is None:
        return page(*_INVALID)

    def record() -> str:
        with services.db.transaction() as session:
            ticket = session.get(Ticket, answer.ticket, with_for_update={"of": Ticket})
            # Checked under the row lock: a new round cannot start between check and write.
            if ticket is None:
                return "superseded"
            if (question := paid_question(ticket, answer.round)) != "open":
                return question
            lifecycle = Lifecycle(session, services.clock.now())
            approve = answer.answer == "approve"
            state = lifecycle.answer_paid(ticket, approve, ticket.requester.email, "web")
            services.notices.to_agents(session, ticket, state, None)
            return "recorded"

    outcome = await asyncio.get_running_loop().run_in_executor(None, record)
    if outcome != "recorded":
        return page(*(_SUPERSEDED if outcome == "superseded" else _ANSWERED))
    return page("Thank you", "<p>Your answer was recorded. The team has been told.</p>")
