"""The web listener, on the daemon's own event loop (aiohttp).

aiohttp because it is a mature asyncio server that runs inside our loop
beside aiosmtpd: one process, one loop, no second server to operate.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from maildesk.metrics import Metrics
from maildesk.web import account, confirm, framing, listener, ops, paid, portal
from maildesk.web.keys import SERVICES

if TYPE_CHECKING:
    from maildesk.services import Services


def make_app(services: Services, metrics: Metrics | None = None) -> web.Application:
    app = web.Application(client_max_size=1024 * 1024)
    app[SERVICES] = services
    # Every answer, whoever makes it (an unknown path's 404 too): framed by nobody, never sniffed.
    framing.install(app)
    # /healthz, /metrics (unless on their own listener) and the access log.
    ops.install(app, metrics or Metrics(services.db, services.clock))
    # Inside ops' middleware, so a 408 is logged and counted like any answer.
    app.middlewares.append(listener.body_deadline(services.settings.web.body_timeout))
    app.router.add_get("/paid", paid.show)
    app.router.add_post("/paid", paid.answer)
    app.router.add_get("/confirm", confirm.show)
    app.router.add_post("/confirm", confirm.confirm)
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
    app.router.add_get("/account/name", account.name_form)
    app.router.add_post("/account/name", account.set_name)
    app.router.add_get("/tickets", portal.ticket_list)
    app.router.add_get("/tickets/{number}", portal.ticket_page)
    app.router.add_get("/tickets/{number}/attachments/{attachment}", portal.attachment)
    app.router.add_post("/tickets/{number}/reply", portal.reply)
    return app


async def start_web(
    services: Services, metrics: Metrics | None = None
) -> tuple[web.AppRunner, str]:
    settings = services.settings.web
    options = listener.handler_options(settings)
    runner = web.AppRunner(make_app(services, metrics), access_log=None, **options)
    await runner.setup()
    site = listener.CappedSite(runner, settings)
    await site.start()
    return runner, f"{settings.host}:{settings.port}"
