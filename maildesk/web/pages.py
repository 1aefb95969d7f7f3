"""Customer pages: which template, in which language, with which headers and cookies.

Pages are `templates/<language>/web/NAME.html.j2`, rendered in Jinja2's
sandbox with StrictUndefined and autoescaping, from plain data only. An
admin's copy in `[templates] path` wins; a page missing there, or an edit
that fails to render, falls back to the shipped one (and logs why) so a typo
never takes the portal down. An edited page, or one added or removed, is used
within a second (maildesk/template_files.py). The language is the person's
own setting, else the browser's Accept-Language, else `[support] language`.

Every page is `no-store`, `Referrer-Policy: no-referrer` (several carry a
token in their URL) and framed by nobody; a logged-in page renews the session.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import web
from jinja2 import (
    StrictUndefined,
    Template,
    TemplateError,
    TemplateNotFound,
)
from jinja2.sandbox import SandboxedEnvironment
from multidict import MultiDictProxy

from maildesk.clock import Clock
from maildesk.config import LANGUAGES, PACKAGE_TEMPLATES
from maildesk.models import Person
from maildesk.template_files import FreshLoader
from maildesk.web.csrf import FIELD, Csrf
from maildesk.web.keys import SERVICES
from maildesk.web.ops import CLIENTS
from maildesk.web.ratelimit import RateLimits
from maildesk.web.session import Claim, Sessions

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from maildesk.services import Services

log = logging.getLogger("maildesk.web")

HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
}

T = TypeVar("T")
Form = MultiDictProxy[Any]


@dataclass(frozen=True)
class Viewer:
    """The logged-in customer, as plain data."""

    id: int
    email: str
    name: str
    language: str | None
    claim: Claim


class Site:
    """Everything the pages share, made once per web application."""

    def __init__(self, services: Services) -> None:
        settings = services.settings
        secret, base_url = settings.secret_key(), settings.support.base_url
        self.services = services
        self.sessions = Sessions(services.clock, base_url, settings.web.session_days)
        self.csrf = Csrf(secret, base_url)
        self.limits = RateLimits(services.clock, settings.limits.portal_replies_per_hour)
        self.shipped = _environment([str(PACKAGE_TEMPLATES)], services.clock)
        self._folder = settings.templates.path
        self.env = _pages(self._folder, services.clock)

    def _pages_for(self, folder: str) -> SandboxedEnvironment:
        """The pages of the admin's `folder`; made anew when a reload moved
        `[templates] path` (supervisor.py), as the mail's templates are."""
        if folder != self._folder:
            self.env, self._folder = _pages(folder, self.services.clock), folder
        return self.env

    def template(self, name: str, language: str) -> tuple[Template, Template | None]:
        """The page template (admin's first) and the shipped one to fall back to."""
        env = self._pages_for(self.services.settings.templates.path)
        for lang in dict.fromkeys([language, self.services.settings.support.language, *LANGUAGES]):
            path = f"{lang}/web/{name}.html.j2"
            try:
                shipped: Template | None = self.shipped.get_template(path)
            except TemplateNotFound:
                shipped = None
            try:
                return env.get_template(path), shipped
            except TemplateNotFound:
                continue
            except TemplateError:
                log.exception("web template %s is broken; using the shipped one", path)
                if shipped is not None:
                    return shipped, None
        raise TemplateNotFound(f"web/{name}.html.j2")


def _pages(folder: str, clock: Clock) -> SandboxedEnvironment:
    """The admin's `folder` in front of the shipped pages."""
    return _environment(list(dict.fromkeys([folder, str(PACKAGE_TEMPLATES)])), clock)


def _environment(paths: list[str], clock: Clock) -> SandboxedEnvironment:
    return SandboxedEnvironment(
        # One loader over both folders, not one per folder: its look for edits also
        # notices an admin's page added in front of the shipped one it shadows.
        loader=FreshLoader(paths, clock),
        undefined=StrictUndefined,
        autoescape=True,
        auto_reload=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


_sites: weakref.WeakKeyDictionary[web.Application, Site] = weakref.WeakKeyDictionary()


def site(request: web.Request) -> Site:
    found = _sites.get(request.app)
    if found is None:
        found = _sites[request.app] = Site(request.app[SERVICES])
    return found


async def in_db(work: Callable[[], T]) -> T:
    """Run blocking database work off the event loop."""
    return await asyncio.get_running_loop().run_in_executor(None, work)


# A password check or a new password's hash (argon2id) takes 64 MiB and tens of
# milliseconds of CPU. On the default executor six run at once: 12 guesses at once,
# from anyone, put serve (the process that takes the mail) at 475 MB and kept its
# threads (`bench/memory.py --serve --logins 12`; one at a time: 155 MB). How many may
# wait for it: `RateLimits.password_queue`.
PASSWORD_WORK = ThreadPoolExecutor(1, thread_name_prefix="password")


async def in_password_work(work: Callable[[], T]) -> T:
    """`in_db` for work that checks or hashes a password: one at a time in this process,
    on a thread of its own; the others wait their turn."""
    return await asyncio.get_running_loop().run_in_executor(PASSWORD_WORK, work)


async def viewer(request: web.Request) -> Viewer | None:
    """Who is logged in: a valid cookie whose session the password has not ended."""
    here = site(request)
    claim = here.sessions.read(request)
    if claim is None:
        return None
    db = here.services.db

    def of(session: Session, person_id: int | None) -> Viewer | None:
        person = session.get(Person, person_id) if person_id is not None else None
        if person is None or not person.password_hash:
            return None
        return Viewer(person.id, person.email, person.name, person.language, claim)

    def load() -> Viewer | None:
        # Every page a customer opens asks this: a read, so it never waits for (nor
        # holds) SQLite's write lock; the renewal it is due every few minutes writes.
        with db.reading() as session:
            person_id, renew = here.sessions.looked_up(session, claim)
            if not renew:
                return of(session, person_id)
        with db.transaction() as session:
            return of(session, here.sessions.person_of(session, claim))

    return await in_db(load)


def browser_language(request: web.Request) -> str | None:
    """The first of our languages the browser's Accept-Language asks for, by q-value."""
    wanted: list[tuple[float, int, str]] = []
    for index, item in enumerate(request.headers.get("Accept-Language", "").split(",")):
        tag, _, params = item.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                quality = 0.0
        base = tag.strip().lower().split("-")[0]
        if base in LANGUAGES and quality > 0:
            wanted.append((-quality, index, base))
    return min(wanted)[2] if wanted else None


def language(request: web.Request, own: str | None = None) -> str:
    if own in LANGUAGES:
        return str(own)
    return browser_language(request) or site(request).services.settings.support.language


def render(
    request: web.Request,
    name: str,
    context: dict[str, Any],
    *,
    who: Viewer | None,
    lang: str | None = None,
    status: int = 200,
) -> web.Response:
    here = site(request)
    lang = lang or language(request, who.language if who else None)
    claim = who.claim if who else here.sessions.read(request)
    token, minted = here.csrf.token(request, claim)
    support = here.services.settings.support
    data = {
        "lang": lang,
        "support": {"name": support.name, "address": support.address},
        "viewer": {"email": who.email, "name": who.name} if who else None,
        "csrf_field": FIELD,
        "csrf_token": token,
        **context,
    }
    template, shipped = here.template(name, lang)
    try:
        text = template.render(data)
    except TemplateError:
        if shipped is None:
            raise
        log.exception("web template %s failed to render; using the shipped one", template.name)
        text = shipped.render(data)
    response = web.Response(text=text, content_type="text/html", status=status, headers=HEADERS)
    if minted:
        here.csrf.give(response, minted)
    if who is not None:
        here.sessions.renew(request, response)
    return response


def see_other(request: web.Request, location: str) -> web.Response:
    """Redirect (303: the next request is a GET), with the page headers."""
    return web.Response(status=303, headers={**HEADERS, "Location": location})


def protected(
    handler: Callable[[web.Request, Form], Awaitable[web.StreamResponse]],
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A POST handler that runs only with a valid CSRF token; otherwise 403."""

    async def checked(request: web.Request) -> web.StreamResponse:
        form = await request.post()
        here = site(request)
        if not here.csrf.valid(request, str(form.get(FIELD, "")), here.sessions.read(request)):
            return render(request, "forbidden", {}, who=None, status=403)
        return await handler(request, form)

    return checked


def too_many(request: web.Request, seconds: int, who: Viewer | None = None) -> web.Response:
    """429, with how long to wait: a limit of `ratelimit.py` was reached."""
    response = render(request, "ratelimited", {"minutes": -(-seconds // 60)}, who=who, status=429)
    response.headers["Retry-After"] = str(seconds)
    return response


def client_ip(request: web.Request) -> str:
    """The client's address: X-Forwarded-For counts only from `[web] trusted_proxies`.
    The application's one ClientAddress (the access log's), so that a proxy missing
    from them is warned of once, not once by each of two."""
    return request.app[CLIENTS].of(request)
