"""A flood closed from the agent's mail client, end to end over real SMTP.

A monitor mails alert after alert to the running daemon; past the cap the agents get
one "Filed quietly" notice, and Agnes answers it with `#closeall` from her client.
Every ticket of the flood is closed, the monitor hears nothing more, and Agnes gets
one answer. Waits are deadlines on the outbox Maildir or the database, never sleeps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Outbox, RunningDaemon
from tests.mailclient import (
    AGENT,
    BOB,
    agent_writes,
    cli,
    desk_config,
    mail,
    mails_to,
    processed,
    queued_to,
    reply_to,
    sent,
)

MONITOR = "alerts@monitor.test"


@pytest.fixture
def config_values(config_values: dict[str, Any]) -> dict[str, Any]:
    config_values["limits"]["new_ticket_notices_per_hour"] = 3
    return desk_config(config_values, AGENT, BOB)


def test_an_agent_closes_a_flood_by_answering_its_quiet_notice(
    daemon: RunningDaemon, outbox: Outbox, config_file: Path
) -> None:
    for n in range(1, 7):
        daemon.send(mail(MONITOR, f"alert {n}", subject=f"Disk full on host{n}"), sender=MONITOR)
    processed(daemon, 6)
    [quiet] = mails_to(outbox, AGENT, "[#4] Filed quietly")
    to_monitor = len(queued_to(config_file, MONITOR))
    to_bob = len([s for s in sent(outbox) if BOB in s.to])

    agent_writes(daemon, AGENT, "#closeall", to=reply_to(quiet), answering=quiet,
                 subject=f"Re: {quiet.subject}")  # fmt: skip

    [answer] = mails_to(outbox, AGENT, "[#4] #closeall: 6 tickets")
    assert f"Closed 6 tickets from {MONITOR} ([#1] to [#6])" in answer.text
    listed = cli(config_file, "tickets", "list")
    assert {(t["number"], t["status"]) for t in listed} == {(n, "closed") for n in range(1, 7)}
    assert len(queued_to(config_file, MONITOR)) == to_monitor  # no "closed" notice
    assert len([s for s in sent(outbox) if BOB in s.to]) == to_bob
