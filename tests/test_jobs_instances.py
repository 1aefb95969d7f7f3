"""Scheduled jobs on two instances sharing one database, run at the same moment.

Two `Services` over the test's database (PostgreSQL when MAILDESK_TEST_DATABASE_URL
is set) share one ManualClock. At each tick both instances' schedulers fire autoclose
and the digest from their own threads at once, through the wrapper the daemon uses
(`jobs.one_instance`, an advisory lock on PostgreSQL), and also bare: the jobs must
hold on their own too (rows locked SKIP LOCKED, the digest's day a unique key), for
the moment a lock's connection drops while its holder still works.

Each resolved ticket is closed once (one close event, one goodbye to the customer),
and each agent gets one digest per day, whichever instance sent it.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from maildesk import jobs
from maildesk.clock import ManualClock, as_utc
from maildesk.models import Event, Outbox, Ticket
from maildesk.services import Services
from maildesk.tickets.lifecycle import Lifecycle
from tests.conftest import make_mail
from tests.helpers import receive

AGENTS = ["ann@example.test", "ben@example.test"]
RESOLVED = 12
WAITING = 6

Job = Callable[[Services], object]


def bare(name: str, job: Job) -> Job:
    return job


@pytest.fixture
def config_values(config_values: dict[str, Any]) -> dict[str, Any]:
    config_values["agents"]["addresses"] = AGENTS
    return config_values


def open_tickets(services: Services) -> None:
    for n in range(RESOLVED + WAITING):
        customer = f"customer{n}@customer.test"
        raw = make_mail(subject=f"Request {n}", sender=customer, message_id=f"<r{n}@customer.test>")
        receive(services, raw, mail_from=customer)
    with services.db.transaction() as session:
        lifecycle = Lifecycle(session, services.clock.now())
        for number in range(1, RESOLVED + 1):
            found = session.get(Ticket, number)
            assert found is not None
            lifecycle.change(found, "status", "resolved", AGENTS[0], "command")


def tick(instances: list[Services], wrap: Callable[[str, Job], Job]) -> None:
    """Both schedulers fire autoclose, then the digest, at the same moment."""
    autoclose, digest = wrap("autoclose", jobs.autoclose), wrap("digest", jobs.digest)
    start = threading.Barrier(len(instances))
    failures: list[BaseException] = []

    def scheduler(services: Services) -> None:
        try:
            start.wait(10)
            autoclose(services)
            digest(services)
        except BaseException as exc:  # surfaced below
            failures.append(exc)

    threads = [threading.Thread(target=scheduler, args=(each,)) for each in instances]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(t.is_alive() for t in threads), "a job hung"
    assert not failures, failures


@pytest.mark.parametrize("wrap", [jobs.one_instance, bare], ids=["one_instance", "bare"])
def test_two_instances_close_each_ticket_once_and_send_one_digest_per_agent_a_day(
    services: Services,
    second: Services,
    clock: ManualClock,
    wrap: Callable[[str, Job], Job],
) -> None:
    open_tickets(services)
    both = [services, second]
    days = services.settings.lifecycle.autoclose_days
    clock.advance(timedelta(days=days, hours=1))
    tick(both, wrap)
    first_day = clock.now().date()
    clock.advance(timedelta(hours=1))  # the same day, the next run of each scheduler
    tick(both, wrap)
    clock.advance(timedelta(days=1))
    tick(both, wrap)

    with services.db.reading() as session:
        statuses = Counter(session.scalars(select(Ticket.status)))
        closings = Counter(
            session.scalars(
                select(Event.ticket_id).where(Event.field == "status", Event.new == "closed")
            )
        )
        goodbyes = Counter(session.scalars(select(Outbox.ticket_id).where(Outbox.kind == "closed")))
        digests = Counter(
            (recipient, as_utc(at).date())
            for recipients, at in session.execute(
                select(Outbox.recipients, Outbox.created_at).where(Outbox.kind == "agent_digest")
            )
            for recipient in recipients
        )

    assert statuses["closed"] == RESOLVED and statuses["resolved"] == 0, statuses
    assert closings == Counter(range(1, RESOLVED + 1))  # one close event each
    assert goodbyes == Counter(range(1, RESOLVED + 1))  # one goodbye to each customer
    next_day = first_day + timedelta(days=1)
    assert digests == Counter(
        {(agent, day): 1 for agent in AGENTS for day in (first_day, next_day)}
    ), digests
