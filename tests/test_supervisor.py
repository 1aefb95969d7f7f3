"""What a reload changes in a running daemon, and what it leaves for a restart."""

from __future__ import annotations

import asyncio
import email
import email.policy
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from maildesk.config import PACKAGE_TEMPLATES
from maildesk.sdnotify import Notifier
from maildesk.services import Services
from maildesk.supervisor import Supervisor
from tests.conftest import PG_URL, make_mail, toml
from tests.helpers import outbox_rows, receive


@pytest.fixture
def root_level() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    yield
    root.setLevel(level)


def test_reload_applies_templates_and_log_level_and_names_what_needs_a_restart(
    services: Services,
    config_values: dict[str, Any],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    root_level: None,
) -> None:
    edited = tmp_path / "edited-templates"
    shutil.copytree(PACKAGE_TEMPLATES, edited)
    ack = edited / "en" / "acknowledgement.txt.j2"
    ack.write_text(ack.read_text().replace("{{ ticket.tag }} {{", "{{ ticket.tag }} NEW {{", 1))
    old_port = config_values["smtp"]["port"]
    changed = {
        **config_values,
        "templates": {"path": str(edited)},
        "log": {"level": "warning"},
        "smtp": {**config_values["smtp"], "port": old_port + 1},
    }
    path = tmp_path / "maildesk.toml"
    path.write_text(toml(changed))
    supervisor = Supervisor(services, path, Notifier({}))

    with caplog.at_level(logging.INFO, logger="maildesk.supervisor"):
        assert asyncio.run(supervisor.reload()) is True

    assert logging.getLogger().level == logging.WARNING
    # The listener keeps its socket until a restart, and the log says so.
    assert services.settings.smtp.port == old_port
    assert any("[smtp]" in r.getMessage() and "restart" in r.getMessage() for r in caplog.records)
    receive(services, make_mail(subject="After reload"))
    [row] = outbox_rows(services)
    sent = email.message_from_bytes(row.raw, policy=email.policy.default)
    assert sent["Subject"] == "[#1] NEW After reload"


def test_reload_applies_an_edited_template_to_the_next_mail_within_the_second(
    own_templates: Path, services: Services, config_values: dict[str, Any], tmp_path: Path
) -> None:
    """A template is looked at once a second; `systemctl reload` need not wait for it.
    The test's clock stands still throughout."""
    path = tmp_path / "maildesk.toml"
    path.write_text(toml(config_values))
    receive(services, make_mail(subject="Before the edit"))
    ack = own_templates / "en" / "acknowledgement.txt.j2"
    ack.write_text(ack.read_text().replace("{{ ticket.tag }} {{", "{{ ticket.tag }} NEW {{", 1))
    receive(services, make_mail(subject="Within the second"))
    assert asyncio.run(Supervisor(services, path, Notifier({})).reload()) is True
    receive(services, make_mail(subject="After the reload"))
    subjects = [
        email.message_from_bytes(row.raw, policy=email.policy.default)["Subject"]
        for row in outbox_rows(services)
    ]
    assert subjects == [
        "[#1] Before the edit",
        "[#2] Within the second",
        "[#3] NEW After the reload",
    ]


def test_reload_refuses_a_missing_template_folder(
    services: Services, config_values: dict[str, Any], tmp_path: Path
) -> None:
    path = tmp_path / "maildesk.toml"
    path.write_text(toml({**config_values, "templates": {"path": "nowhere"}}))
    before = services.renderer.path
    assert asyncio.run(Supervisor(services, path, Notifier({})).reload()) is False
    assert services.renderer.path == before


@pytest.mark.skipif(bool(PG_URL), reason="the reserve for new mail watches SQLite's disk")
def test_reload_applies_the_reserve_for_new_mail_at_once(
    services: Services,
    config_values: dict[str, Any],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An operator short of disk raises the reserve, or lowers it to take mail again
    while freeing space: no restart, which would drain every SMTP session."""
    assert services.store.room is None and services.store.fits(10**15)  # off in tests
    path = tmp_path / "maildesk.toml"
    supervisor = Supervisor(services, path, Notifier({}))

    def reload_with(limits: dict[str, int]) -> None:
        path.write_text(toml({**config_values, "workers": {"count": 0}, "limits": limits}))
        assert asyncio.run(supervisor.reload()) is True

    with caplog.at_level(logging.INFO, logger="maildesk.supervisor"):
        reload_with({"accept_min_free_mb": 10**9})
        assert not services.store.fits(0)
        assert services.settings.limits.accept_min_free_mb == 10**9
        assert not any("restart" in r.getMessage() for r in caplog.records)
        # With another cap changed too, that one waits for the restart; the reserve does not.
        reload_with({"accept_min_free_mb": 0, "participants_per_ticket": 3})
        assert services.store.fits(10**15)
        assert services.settings.limits.accept_min_free_mb == 0
        assert services.settings.limits.participants_per_ticket == 20
    assert any("[limits]" in r.getMessage() and "restart" in r.getMessage() for r in caplog.records)
