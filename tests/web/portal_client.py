"""A small browser for the HTTP tests: a cookie jar, no redirects followed, form tokens.

Each `Client` is one browser (its own cookies). Redirects are returned, not
followed, so a test sees the 303 and its Set-Cookie headers.
"""

from __future__ import annotations

import html
import http.cookiejar
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from email.message import Message
from typing import Any

from maildesk.models import Person
from maildesk.services import Services
from maildesk.tickets.service import Tickets
from tests.conftest import RunningDaemon

PASSWORD = "correct horse battery staple"


@dataclass
class Page:
    status: int
    text: str
    headers: Message

    @property
    def location(self) -> str:
        return self.headers.get("Location", "")

    def cookies(self) -> list[str]:
        return self.headers.get_all("Set-Cookie") or []

    def field(self, name: str) -> str:
        found = re.search(rf'name="{re.escape(name)}" value="([^"]*)"', self.text)
        assert found is not None, f"no field {name} on the page"
        return html.unescape(found.group(1))


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class Client:
    def __init__(self, base_url: str) -> None:
        self.base = base_url.rstrip("/")
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.jar), _NoRedirect()
        )
        self.last: Page | None = None
        self.token = ""  # the CSRF token of the last page that had a form

    def _open(self, request: urllib.request.Request) -> Page:
        try:
            with self.opener.open(request, timeout=15) as response:
                page = Page(response.status, response.read().decode(), response.headers)
        except urllib.error.HTTPError as error:
            page = Page(error.code, error.read().decode(), error.headers)
        self.last = page
        found = re.search(r'name="csrf_token" value="([^"]*)"', page.text)
        if found:
            self.token = html.unescape(found.group(1))
        return page

    def url(self, path: str) -> str:
        return path if path.startswith("http") else self.base + path

    def get(self, path: str, headers: dict[str, str] | None = None) -> Page:
        return self._open(urllib.request.Request(self.url(path), headers=headers or {}))

    def get_bytes(self, path: str) -> tuple[int, bytes, Message]:
        try:
            with self.opener.open(self.url(path), timeout=15) as response:
                return response.status, response.read(), response.headers
        except urllib.error.HTTPError as error:
            return error.code, error.read(), error.headers

    def post(
        self,
        path: str,
        data: dict[str, str],
        csrf: bool = True,
        headers: dict[str, str] | None = None,
    ) -> Page:
        """POST a form; with csrf, the token of the last form page this client loaded."""
        if csrf:
            assert self.token, "load a page with a form first"
            data = {"csrf_token": self.token, **data}
        body = urllib.parse.urlencode(data).encode()
        request = urllib.request.Request(
            self.url(path), data=body, headers=headers or {}, method="POST"
        )
        return self._open(request)

    def cookie(self, name: str) -> str | None:
        return next((c.value for c in self.jar if c.name == name), None)


def base_url(daemon: RunningDaemon) -> str:
    return daemon.services.settings.support.base_url


def customer(services: Services, email: str, name: str = "", password: str = PASSWORD) -> int:
    """A person with an account, made in-process; returns the person id."""
    with services.db.transaction() as session:
        person = Tickets(session).person(email, name, services.clock.now())
        assert services.accounts(session).set_password(person, password) == []
        return person.id


def logged_in(daemon: RunningDaemon, email: str, password: str = PASSWORD) -> Client:
    client = Client(base_url(daemon))
    client.get("/login")
    page = client.post("/login", {"email": email, "password": password})
    assert page.status == 303, page.text
    return client


def invitation(services: Services, email: str) -> str:
    """A fresh set-password link for `email`, made in-process (older links stop working)."""
    with services.db.transaction() as session:
        person = Tickets(session).person(email, "", services.clock.now())
        return services.accounts(session).invitation_url(person)


def person(services: Services, email: str) -> Person:
    with services.db.transaction() as session:
        found = session.query(Person).filter_by(email=email).one()
        session.expunge(found)
        return found
