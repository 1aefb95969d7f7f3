"""The approve/decline page for paid work, reached from a signed link in the notice.

GET only shows the question (mail scanners follow links; they must not
approve anything); the POST from the page's button records the answer. A
link works once: after an answer the ticket is no longer pending.
"""

from __future__ import annotations

import asyncio
import html

from aiohttp import web

from maildesk.models import Ticket
from maildesk.tickets.lifecycle import Lifecycle
from maildesk.web.keys import SERVICES

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


async def show(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    token = request.query.get("token", "")
    answer = services.links.read(token)
    if answer is None:
        return page("Link not valid", "<p>This link is broken or has expired.</p>", 400)
    title, button = _TEXT[answer.answer]
    form = (
        f'<form method="post" action="/paid"><input type="hidden" name="token" '
        f'value="{html.escape(token)}"><button type="submit">{html.escape(button)}</button></form>'
    )
    return page(f"{title} — #{answer.ticket}", form)


async def answer(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    form = await request.post()
    answer = services.links.read(str(form.get("token", "")))
    if answer is None:
        return page("Link not valid", "<p>This link is broken or has expired.</p>", 400)

    def record() -> bool:
        with services.db.transaction() as session:
            ticket = session.get(Ticket, answer.ticket, with_for_update={"of": Ticket})
            if ticket is None or ticket.paid_state != "pending":
                return False
            lifecycle = Lifecycle(session, services.clock.now())
            actor = ticket.requester.email
            state = "approved" if answer.answer == "approve" else "declined"
            lifecycle.change(ticket, "paid", state, actor, "web")
            lifecycle.change(ticket, "status", "accepted", actor, "web")
            services.notices.to_agents(session, ticket, state, None)
            return True

    if not await asyncio.get_running_loop().run_in_executor(None, record):
        return page("Already answered", "<p>This question has already been answered.</p>", 409)
    return page("Thank you", "<p>Your answer was recorded. The team has been told.</p>")
