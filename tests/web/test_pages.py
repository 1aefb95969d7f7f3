"""Page rendering: languages, headers, and templates an admin edits in place."""

from __future__ import annotations

import asyncio
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from maildesk.clock import ManualClock
from maildesk.config import PACKAGE_TEMPLATES
from maildesk.sdnotify import Notifier
from maildesk.supervisor import Supervisor
from tests.conftest import RunningDaemon, toml
from tests.web.portal_client import Client, base_url


@pytest.fixture
def config_values(config_values: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    config_values["support"]["base_url"] = f"http://127.0.0.1:{config_values['web']['port']}"
    templates = tmp_path / "templates"
    shutil.copytree(PACKAGE_TEMPLATES, templates)
    config_values["templates"] = {"path": str(templates)}
    return config_values


# An admin's edit is used within a second (README); the daemon runs on the test's clock.
SECOND = timedelta(seconds=1)


def edit(path: Path, text: str, clock: ManualClock) -> None:
    """Save a page, then let the second pass after which the daemon uses it."""
    path.write_text(text)
    clock.advance(SECOND)


def test_pages_follow_the_browsers_language_and_send_safe_headers(daemon: RunningDaemon) -> None:
    client = Client(base_url(daemon))
    czech = client.get("/login", headers={"Accept-Language": "de-DE, cs;q=0.8, en;q=0.5"})
    assert "Přihlášení" in czech.text and 'lang="cs"' in czech.text
    english = client.get("/login", headers={"Accept-Language": "en-GB,en;q=0.9,cs;q=0.3"})
    assert "Log in" in english.text
    default = client.get("/login", headers={"Accept-Language": "de"})
    assert 'lang="en"' in default.text  # the test config's [support] language

    headers = english.headers
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["Cache-Control"] == "no-store"
    assert headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert 'name="viewport"' in english.text


def test_an_admins_edit_applies_within_a_second_and_a_broken_one_falls_back(
    daemon: RunningDaemon, clock: ManualClock
) -> None:
    web = Path(daemon.services.settings.templates.path) / "en" / "web"
    client = Client(base_url(daemon))
    assert "Send me a new link" in client.get("/account/forgot").text

    forgot = (web / "forgot.html.j2").read_text()
    edit(web / "forgot.html.j2", forgot.replace("Send me a new link", "Mail me a link"), clock)
    page = client.get("/account/forgot")
    assert page.status == 200 and "Mail me a link" in page.text  # no restart

    login = '{% extends "en/web/base.html.j2" %}'
    edit(web / "login.html.j2", login + "{% block content %}{{ x", clock)
    assert "Log in" in client.get("/login").text  # a syntax error: the shipped page
    undefined = "{% block content %}{{ no_such_name }}{% endblock %}"
    edit(web / "login.html.j2", login + undefined, clock)
    assert "Log in" in client.get("/login").text  # an undefined name: the shipped page
    (web / "forgot.html.j2").unlink()
    clock.advance(SECOND)
    assert "Send me a new link" in client.get("/account/forgot").text  # missing: the shipped one


def test_a_page_an_admin_adds_in_front_of_the_shipped_one_is_used_within_a_second(
    daemon: RunningDaemon, clock: ManualClock
) -> None:
    forgot = Path(daemon.services.settings.templates.path) / "en" / "web" / "forgot.html.j2"
    source = forgot.read_text()
    forgot.unlink()  # the admin's folder lacks the page: the shipped one is served
    client = Client(base_url(daemon))
    assert "Send me a new link" in client.get("/account/forgot").text
    forgot.write_text(source.replace("Send me a new link", "Mail me a link"))
    assert "Send me a new link" in client.get("/account/forgot").text  # within the second
    clock.advance(SECOND)
    assert "Mail me a link" in client.get("/account/forgot").text


def test_a_reload_that_moves_the_template_folder_moves_the_pages_too(
    daemon: RunningDaemon, config_values: dict[str, Any], tmp_path: Path
) -> None:
    """`[templates] path` applies at a reload (README): the mail's templates moved to
    the new folder, while the portal kept serving the old one's pages until a restart."""
    moved = tmp_path / "templates-2"
    shutil.copytree(PACKAGE_TEMPLATES, moved)
    forgot = moved / "en" / "web" / "forgot.html.j2"
    forgot.write_text(forgot.read_text().replace("Send me a new link", "Mail me a link"))
    client = Client(base_url(daemon))
    assert "Send me a new link" in client.get("/account/forgot").text
    config = tmp_path / "maildesk.toml"
    config.write_text(toml({**config_values, "templates": {"path": str(moved)}}))

    assert asyncio.run(Supervisor(daemon.services, config, Notifier({})).reload()) is True

    assert "Mail me a link" in client.get("/account/forgot").text
