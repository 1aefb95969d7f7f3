"""The web listener, on the daemon's own event loop (aiohttp).

aiohttp because it is a mature asyncio server that runs inside our loop
beside aiosmtpd: one process, one loop, no second server to operate.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aiohttp import web
from sqlalchemy import func, select

from maildesk.models import Inbound, Outbox
from maildesk.web import account, paid, portal
from maildesk.web.keys import SERVICES

if TYPE_CHECKING:
    from maildesk.services import Services


def make_app(services: Services) -> web.Application:
    app = web.Application(client_max_size=1024 * 1024)
    app[SERVICES] = services
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/paid", paid.show)
    app.router.add_post("/paid", paid.answer)
    app.router.add_get("/", portal.home)
    app.router.add_get("/account/set-password", account.set_password_form)
    app.router.add_post("/account/set-password", account.set_password)
    app.router.add_get("/login", account.login_form)
    app.router.add_post("/login", account.login)
    app.router.add_post("/logout", account.logout)
    app.router.add_get("/account/forgot", account.forgot_form)
    app.router.add_post("/account/forgot", account.forgot)
    app.router.add_get("/account/language", account.language_form)
    app.router.add_post("/account/language", account.set_language)
    app.router.add_get("/tickets", portal.ticket_list)
    app.router.add_get("/tickets/{number}", portal.ticket_page)
    app.router.add_get("/tickets/{number}/attachments/{attachment}", portal.attachment)
    app.router.add_post("/tickets/{number}/reply", portal.reply)
    return app


async def healthz(request: web.Request) -> web.Response:
    """Liveness plus the two backlogs ops watch: unprocessed mail and unsent mail."""
    services = request.app[SERVICES]

    def counts() -> dict[str, int]:
        with services.db.transaction() as session:
            return {
                "inbound_pending": session.scalar(
                    select(func.count()).where(Inbound.state == "pending")
                )
                or 0,
                "quarantined": session.scalar(
                    select(func.count()).where(Inbound.state == "quarantined")
                )
                or 0,
                "outbox_pending": session.scalar(
                    select(func.count()).where(Outbox.state == "pending")
                )
                or 0,
            }

    try:
        body = await asyncio.get_running_loop().run_in_executor(None, counts)
    except Exception:
        return web.json_response({"status": "database unavailable"}, status=503)
    return web.json_response({"status": "ok", **body})


async def start_web(services: Services) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(make_app(services), access_log=None)
    await runner.setup()
    settings = services.settings.web
    site = web.TCPSite(runner, settings.host, settings.port)
    await site.start()
    return runner, f"{settings.host}:{settings.port}"
