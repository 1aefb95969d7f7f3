"""Account pages: set a password from a link, log in and out, ask for a new link, language,
name.

A set-password link that is tampered, expired or used gets one page that
offers to mail a fresh link and says nothing about any address. "Send me a
new link" answers the same page for every address; only a known one gets
mail (a fresh invitation, which also ends every older link), and only within
the desk-wide cap on automatic mail, in which it counts. Tokens and
passwords are never logged. All database work runs off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from aiohttp import web
from sqlalchemy import select

from maildesk.accounts import (
    MIN_PASSWORD_LENGTH,
    check_login,
    hash_password,
    password_problems,
)
from maildesk.config import LANGUAGES
from maildesk.models import Person
from maildesk.outbound import caps
from maildesk.outbound.headers import writable
from maildesk.tickets.service import Tickets
from maildesk.web.pages import (
    Form,
    client_ip,
    in_db,
    in_password_work,
    language,
    protected,
    render,
    see_other,
    site,
    too_many,
    viewer,
)
from maildesk.web.ratelimit import PASSWORD_QUEUE_RETRY_SECONDS
from maildesk.web.redirects import is_local_path

log = logging.getLogger("maildesk.web")

LANGUAGE_NAMES = {"cs": "Čeština", "en": "English"}
_MAX_EMAIL = 320


@dataclass
class _Attempt:
    valid: bool
    email: str = ""
    lang: str | None = None
    session_id: str = ""
    problems: list[str] = field(default_factory=list)


def _rules() -> dict[str, int]:
    return {"min_length": MIN_PASSWORD_LENGTH}


def _problem_codes(problems: list[str]) -> list[str]:
    """accounts.password_problems speaks English; the page names each rule in its language."""
    return ["too_short" if "characters" in p else "common" for p in problems]


def _link_invalid(request: web.Request) -> web.Response:
    return render(request, "link_invalid", {}, who=None, status=400)


# -- set a password from an invitation link ----------------------------------------


async def set_password_form(request: web.Request) -> web.StreamResponse:
    token = request.query.get("token", "")
    services = site(request).services

    def read() -> _Attempt:
        with services.db.reading() as session:
            person = services.accounts(session).read_invitation(token)
            if person is None:
                return _Attempt(False)
            return _Attempt(True, person.email, person.language)

    found = await in_db(read)
    if not found.valid:
        return _link_invalid(request)
    context = {"token": token, "email": found.email, "rules": _rules(), "problems": []}
    return render(request, "set_password", context, who=None, lang=language(request, found.lang))


@protected
async def set_password(request: web.Request, form: Form) -> web.StreamResponse:
    token = str(form.get("token", ""))
    password, confirm = str(form.get("password", "")), str(form.get("confirm", ""))
    here = site(request)
    services, guard, ip = here.services, here.limits.set_password, client_ip(request)
    if wait := guard.blocked(ip):
        return too_many(request, wait)

    def read() -> str | None:
        with services.db.reading() as session:
            person = services.accounts(session).read_invitation(token)
            return person.email if person else None

    email = await in_db(read)
    if wait := guard.blocked(ip, email or ""):
        return too_many(request, wait)
    queue = here.limits.password_queue
    if queue.full(ip):
        return too_many(request, PASSWORD_QUEUE_RETRY_SECONDS)
    guard.hit(ip, email or "")
    if email is None:
        return _link_invalid(request)

    def apply() -> _Attempt:
        # Hashed before the transaction: it must not hold the write lock that long.
        acceptable = password == confirm and not password_problems(password, email)
        hashed = hash_password(password) if acceptable else None
        with services.db.transaction() as session:
            accounts = services.accounts(session)
            person = accounts.read_invitation(token)
            if person is None:
                return _Attempt(False)
            # Lock, then look again: two tabs posting one link must not both win.
            session.refresh(person, with_for_update=True)
            if accounts.read_invitation(token) is None:
                return _Attempt(False)
            attempt = _Attempt(True, person.email, person.language)
            if password != confirm:
                attempt.problems = ["mismatch"]
            else:
                problems = accounts.set_password(person, password, hashed=hashed)
                attempt.problems = _problem_codes(problems)
            if not attempt.problems:  # set_password ended every older login
                attempt.session_id = here.sessions.start(session, person.id)
            return attempt

    with queue.place(ip):
        result = await in_password_work(apply)
    if not result.valid:
        return _link_invalid(request)
    if result.problems:
        context = {
            "token": token,
            "email": result.email,
            "rules": _rules(),
            "problems": result.problems,
        }
        lang = language(request, result.lang)
        return render(request, "set_password", context, who=None, lang=lang, status=400)
    here.limits.login.forgive(result.email)  # the owner is back in: no wait on the login form
    response = see_other(request, "/tickets")
    here.sessions.give(response, result.session_id)
    return response


# -- log in and out ------------------------------------------------------------------


def _safe_next(value: str) -> str:
    """Only our own paths: never an open redirect to another site; else the ticket list."""
    return value if is_local_path(value) else "/tickets"


async def login_form(request: web.Request) -> web.StreamResponse:
    target = _safe_next(request.query.get("next", ""))
    if await viewer(request) is not None:
        return see_other(request, target)
    return render(request, "login", {"email": "", "next": target, "failed": False}, who=None)


@protected
async def login(request: web.Request, form: Form) -> web.StreamResponse:
    email = _typed_address(form)
    password = str(form.get("password", ""))
    target = _safe_next(str(form.get("next", "")))
    here = site(request)
    guard, ip, services = here.limits.login, client_ip(request), here.services
    if wait := guard.blocked(ip, email):
        return too_many(request, wait)
    queue = here.limits.password_queue
    if queue.full(ip):
        return too_many(request, PASSWORD_QUEUE_RETRY_SECONDS)
    # Counted before the check, which waits its turn: a burst must meet the limits too.
    guard.hit(ip, email)

    def check() -> str | None:
        login = check_login(services.db, email, password)
        if login is None:
            return None
        with services.db.transaction() as session:
            person = session.get(Person, login.person_id)
            if person is None or person.password_hash != login.checked_hash:
                return None  # the password changed while this one was checked
            return here.sessions.start(session, person.id)

    with queue.place(ip):
        found = await in_password_work(check)
    if found is None:
        context = {"email": email, "next": target, "failed": True}
        return render(request, "login", context, who=None, status=400)
    guard.succeeded(ip, email)
    response = see_other(request, target)
    here.sessions.give(response, found)
    return response


@protected
async def logout(request: web.Request, form: Form) -> web.StreamResponse:
    here = site(request)
    claim = here.sessions.read(request)
    if claim is not None:  # the row goes: a copy of this cookie no longer logs anyone in

        def end() -> None:
            with here.services.db.transaction() as session:
                here.sessions.end(session, claim)

        await in_db(end)
    response = see_other(request, "/login")
    here.sessions.log_out(response)
    return response


# -- "send me a new link" -------------------------------------------------------------


async def forgot_form(request: web.Request) -> web.StreamResponse:
    return render(request, "forgot", {}, who=None)


@protected
async def forgot(request: web.Request, form: Form) -> web.StreamResponse:
    email = _typed_address(form)
    here = site(request)
    guard, ip, services = here.limits.forgot, client_ip(request), here.services
    if wait := guard.blocked(ip):
        return too_many(request, wait)
    if guard.account_blocked(email):
        # Enough links went to this address this hour; the newest one in its mailbox works.
        # The same page as always: it neither reveals the address nor blocks its owner.
        return render(request, "forgot_sent", {}, who=None)
    guard.hit(ip, email)

    def send() -> None:
        with services.db.transaction() as session:
            # Automatic mail: within the desk-wide cap, and counted in it (caps.py); a
            # client asking address after address sent mail outside every cap. Every
            # request counts, known address or not, so the count tells nobody who is.
            now = services.clock.now()
            if caps.link_refused(session, services.settings.limits, now - timedelta(hours=1)):
                log.warning("no set-password link mailed: the hour's automatic mail is used up")
                return
            caps.count_automatic(session.connection(), now, lane=caps.lane_of("", proven=False))
            person = session.scalar(select(Person).where(Person.email == email))
            if person is not None:
                services.notices.invitation(session, person)

    if "@" in email:
        # Queued after the answer, not before it: a known address (a link to make and
        # mail) was answered a few milliseconds later than an unknown one, which told
        # anyone who is a customer here.
        _in_background(send, "queuing a set-password link")
    return render(request, "forgot_sent", {}, who=None)


def _typed_address(form: Form) -> str:
    """The address typed in a form, as people's addresses are stored; "" when it is
    none we could store (PostgreSQL refused a NUL in the lookup: a 500 for anyone)."""
    typed = str(form.get("email", "")).strip().lower()[:_MAX_EMAIL]
    return writable(typed) or ""


def _in_background(work: Callable[[], None], what: str) -> None:
    """Run blocking database work off the event loop, without waiting for it."""

    def failed(future: asyncio.Future[None]) -> None:
        if not future.cancelled() and (exc := future.exception()) is not None:
            log.error("%s failed", what, exc_info=exc)

    asyncio.get_running_loop().run_in_executor(None, work).add_done_callback(failed)


# -- language --------------------------------------------------------------------------


async def language_form(request: web.Request) -> web.StreamResponse:
    who = await viewer(request)
    if who is None:
        return see_other(request, "/login?next=/account/language")
    context = {
        "current": who.language or "",
        "choices": list(LANGUAGE_NAMES.items()),
        "saved": request.query.get("saved") == "1",
    }
    return render(request, "language", context, who=who)


@protected
async def set_language(request: web.Request, form: Form) -> web.StreamResponse:
    who = await viewer(request)
    if who is None:
        return see_other(request, "/login?next=/account/language")
    chosen = str(form.get("language", ""))
    if chosen not in LANGUAGES:
        return see_other(request, "/account/language")
    db = site(request).services.db

    def save() -> None:
        with db.transaction() as session:
            person = session.get(Person, who.id)
            if person is not None:
                person.language = chosen

    await in_db(save)
    return see_other(request, "/account/language?saved=1")


# -- name ------------------------------------------------------------------------------


async def name_form(request: web.Request) -> web.StreamResponse:
    who = await viewer(request)
    if who is None:
        return see_other(request, "/login?next=/account/name")
    context = {"current": who.name, "saved": request.query.get("saved") == "1"}
    return render(request, "name", context, who=who)


@protected
async def set_name(request: web.Request, form: Form) -> web.StreamResponse:
    """The name our mail greets them by, typed by the person: no mail replaces it, so a
    stranger's From (or a client sending none) no longer decides it."""
    who = await viewer(request)
    if who is None:
        return see_other(request, "/login?next=/account/name")
    typed = str(form.get("name", ""))
    db = site(request).services.db

    def save() -> None:
        with db.transaction() as session:
            person = session.get(Person, who.id)
            if person is not None:
                Tickets(session).set_name(person, typed)

    await in_db(save)
    return see_other(request, "/account/name?saved=1")
