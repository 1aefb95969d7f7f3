"""What ops see over HTTP: /healthz, /metrics, and one access-log line per request.

- `/healthz` answers 200 `{"status": "ok", …}` or 503 `{"status": "degraded",
  "reasons": [...], …}` from `maildesk/health.py` (the same answer as
  `maildesk status`). A database that does not answer within
  `[health] database_timeout` seconds is a reason, not a hung probe. On the
  public listener the figures (queue counts, free disk, a reason's numbers) go
  only to a client with the metrics bearer token: the outbox's count rose by one
  for a known address's "send me a new link", and told strangers who has an
  account.
- `/metrics` is the Prometheus text format from `maildesk/metrics.py`. With
  `[metrics] bearer_token` (or `bearer_token_file`) set it needs
  `Authorization: Bearer <token>`. Without one, the public listener answers it
  only to a peer in `[metrics] allow_without_token` that reaches it directly, never
  through a proxy (`_relayed`), and 404 to anyone else: answering every client that
  sent no proxy header published it through a bare nginx `proxy_pass` (the outbox's
  counts tell who has an account).
  With `[metrics] port` set it is served on a listener of its own (with
  /healthz), and not on the public one. A
  database that does not answer within `[health] database_timeout` gets this
  process's own series and `maildesk_database_up 0`.
- The access log (logger `maildesk.http`, INFO): method, path, status,
  duration and client (behind a proxy: the address `[web] trusted_proxies`
  vouch for), never the query string (set-password and paid-work
  links carry their tokens there). The path is cut and escaped, so a
  crafted URL cannot forge a log line.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from maildesk import health
from maildesk.config import MetricsSettings
from maildesk.metrics import Metrics
from maildesk.web import framing, listener
from maildesk.web.clientip import ClientAddress, Network, networks, parse
from maildesk.web.keys import SERVICES

if TYPE_CHECKING:
    from maildesk.services import Services

access_log = logging.getLogger("maildesk.http")
log = logging.getLogger("maildesk.web")
T = TypeVar("T")

METRICS = web.AppKey("metrics", Metrics)
TOKEN = web.AppKey("metrics_token", str)
CLIENTS = web.AppKey("access_log_clients", ClientAddress)
# Peers the public listener serves /metrics without a token (`[metrics] allow_without_token`).
TOKENLESS = web.AppKey("metrics_without_token", list[Network])
MAX_LOGGED_PATH = 200

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def install(app: web.Application, metrics: Metrics) -> None:
    """Add the access log and request counting to `app`, and its /healthz and /metrics."""
    services = app[SERVICES]
    app[METRICS] = metrics
    app[CLIENTS] = ClientAddress(services.settings.web.trusted_proxies)
    app.middlewares.append(observe)
    app[HEALTH_CHECK] = Shared()
    app[SCRAPE] = Shared()
    app.router.add_get("/healthz", healthz)
    # With metrics off, no token is read (a missing token file stops nothing), and the
    # figures are `maildesk status`'s only.
    metrics_on = services.settings.metrics.enabled
    app[TOKEN] = bearer_token(services.settings.metrics) if metrics_on else ""
    app[FIGURES_NEED_TOKEN] = True
    app[TOKENLESS] = networks(services.settings.metrics.allow_without_token)
    if services.settings.metrics.enabled and not services.settings.metrics.port:
        app.router.add_get("/metrics", metrics_page)
        if not app[TOKEN] and not app[TOKENLESS]:
            log.warning(
                "/metrics on the web listener answers 404 to everyone: set [metrics]"
                " bearer_token, a port of its own, or allow_without_token"
            )


async def start_metrics_listener(services: Services, metrics: Metrics) -> web.AppRunner | None:
    """The separate /metrics + /healthz listener, when `[metrics] port` is set."""
    settings = services.settings.metrics
    if not settings.enabled or not settings.port:
        return None
    app = web.Application()
    app[SERVICES] = services
    framing.install(app)
    app[METRICS] = metrics
    app[TOKEN] = bearer_token(settings)
    app[CLIENTS] = ClientAddress(services.settings.web.trusted_proxies)
    app.middlewares.append(observe)
    app.router.add_get("/metrics", metrics_page)
    app[SCRAPE] = Shared()
    app[HEALTH_CHECK] = Shared()
    app.router.add_get("/healthz", healthz)
    if not app[TOKEN] and not _loopback(settings.host):
        # Warned, not refused: an internal interface only the Prometheus host can reach is
        # a sound setup that desks run, and refusing would stop them at the upgrade.
        log.warning(
            "[metrics] port %d on %s answers /metrics and /healthz, with their figures"
            " (the outbox's counts tell who has an account), to anyone who can reach it:"
            " set [metrics] bearer_token (or bearer_token_file), or host = 127.0.0.1",
            settings.port,
            settings.host or "every address",
        )
    # The web listener's guards (listener.py): `[web] header_timeout` as a deadline for
    # headers, and `[web] max_connections` (and per address) on this port's own count.
    # Without them, whoever reached this port held each connection for aiohttp's 75 s,
    # as many as it opened: file descriptors of serve, which also takes the mail.
    guarded = dataclasses.replace(services.settings.web, host=settings.host, port=settings.port)
    runner = web.AppRunner(app, access_log=None, **listener.handler_options(guarded))
    await runner.setup()
    await listener.CappedSite(runner, guarded).start()
    return runner


def _loopback(host: str) -> bool:
    """Whether `host` is reachable from this machine alone. A name other than localhost
    is not: what it resolves to can change."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name, or "" (every address)
        return False


def bearer_token(settings: MetricsSettings) -> str:
    if settings.bearer_token:
        return settings.bearer_token
    if settings.bearer_token_file:
        return Path(settings.bearer_token_file).read_text().strip()
    return ""


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.monotonic()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        route = _route(request)
        request.app[METRICS].http_request(route, request.method, status)
        client = request.app[CLIENTS].of(request) or "-"
        access_log.info(
            "%s %s %d %.1fms %s",
            request.method[:16],
            _loggable_path(request),
            status,
            (time.monotonic() - started) * 1000,
            client,
            extra={"peer": client},
        )


def _route(request: web.Request) -> str:
    """The route's pattern (`/tickets/{number}`): bounded label values, whatever the path."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def _loggable_path(request: web.Request) -> str:
    # raw_path: still percent-encoded and without the query string.
    path = request.rel_url.raw_path[:MAX_LOGGED_PATH]
    return path.encode("ascii", "backslashreplace").decode("ascii").replace(" ", "%20")


class Shared(Generic[T]):
    """One blocking call at a time, its answer shared by every request that came meanwhile.

    /healthz is public, and /metrics may be; each answer is database work done in a
    thread of the loop's default executor, which the portal's pages and the scheduled
    jobs use too. Requests that arrive while a call runs wait for that one, so a
    flood of them keeps at most one thread busy, never the pool; and a call stuck on
    a hung database is not started again beside itself: each request still answers
    within `[health] database_timeout` (its caller says how), and the next call
    starts once the stuck one returned.
    """

    def __init__(self) -> None:
        self._running: asyncio.Future[T] | None = None

    def join(self, start: Callable[[], asyncio.Future[T]]) -> asyncio.Future[T]:
        """The call in flight, or a new one from `start()` when none is."""
        if self._running is None or self._running.done():
            self._running = start()
        return self._running

    async def answer(self, start: Callable[[], asyncio.Future[T]], timeout: float) -> T | None:
        """The answer of the call in flight (or a new one), or None after `timeout` s."""
        # Shielded: a request that times out or goes away leaves the call to the others.
        try:
            return await asyncio.wait_for(asyncio.shield(self.join(start)), timeout)
        except TimeoutError:
            return None


# The answers depend on the Authorization header: a cache in front (nginx's proxy_cache
# keys on the URL alone) kept the token bearer's figures and gave them to anyone.
NO_STORE = {"Cache-Control": "no-store"}
HEALTH_CHECK = web.AppKey("health_check", Shared[health.Health])
# The public listener's /healthz: its figures only for the bearer of the metrics token.
FIGURES_NEED_TOKEN = web.AppKey("figures_need_token", bool)
SCRAPE = web.AppKey("metrics_scrape", Shared[bytes])


async def healthz(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    loop = asyncio.get_running_loop()
    timeout = services.settings.health.database_timeout
    result = await request.app[HEALTH_CHECK].answer(
        lambda: loop.run_in_executor(
            None, health.check, services.settings, services.db, services.clock
        ),
        timeout,
    )
    if result is None:
        result = health.unreachable(f"no answer within {timeout:g} s")
    figures = not request.app.get(FIGURES_NEED_TOKEN, False) or _bears_token(request)
    body = result.as_json() if figures else result.summary()
    return web.json_response(body, status=200 if result.ok else 503, headers=NO_STORE)


def _relayed(request: web.Request) -> bool:
    """Whether a proxy relayed the request: its peer is one of `[web] trusted_proxies`,
    or it carries a proxy's Forwarded / X-Forwarded-For. A proxy that passed /metrics on
    without a token told the world the outbox's counts, which rise by one for a known
    address's "send me a new link": who has an account here."""
    if "Forwarded" in request.headers or "X-Forwarded-For" in request.headers:
        return True
    peer = parse(request.remote or "")
    return peer is not None and request.app[CLIENTS].is_proxy(peer)


def _tokenless_scraper(request: web.Request) -> bool:
    """Whether the public listener may answer /metrics without a token: the peer is one
    ops named in `[metrics] allow_without_token`, and no proxy relayed the request. A
    client that merely sent no proxy header is not enough: nginx's bare `proxy_pass`
    sends none, and its peer is the machine's own address."""
    peer = parse(request.remote or "")
    if peer is None or _relayed(request):
        return False
    return any(peer in network for network in request.app[TOKENLESS])


def _bears_token(request: web.Request) -> bool:
    """Whether the request carries the metrics bearer token (False when none is set)."""
    token = request.app[TOKEN]
    if not token:
        return False
    # surrogateescape: header bytes that are no UTF-8 are a wrong token, not a 500.
    presented = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
    return hmac.compare_digest(presented, f"Bearer {token}".encode())


async def metrics_page(request: web.Request) -> web.Response:
    if request.app[TOKEN]:
        if not _bears_token(request):
            return web.Response(
                status=401,
                text="a bearer token is required\n",
                headers={"WWW-Authenticate": 'Bearer realm="maildesk metrics"'},
            )
    elif request.app.get(FIGURES_NEED_TOKEN, False) and not _tokenless_scraper(request):
        # The portal's listener without a token: only a scraper ops named, directly.
        raise web.HTTPNotFound()
    metrics = request.app[METRICS]
    loop = asyncio.get_running_loop()
    timeout = request.app[SERVICES].settings.health.database_timeout
    body = await request.app[SCRAPE].answer(
        lambda: loop.run_in_executor(None, metrics.scrape), timeout
    )
    if body is None:  # a hung database: what this process knows, and that it did not answer
        body = metrics.without_database()
    response = web.Response(body=body, headers=NO_STORE)
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    response.charset = "utf-8"
    return response
