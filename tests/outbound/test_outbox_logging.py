"""What ops see in the log while the relay is down: WARNING at first, an ERROR once a
message has been failing for more than an hour, each line naming the outbox row."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest

from maildesk.clock import ManualClock
from maildesk.outbound.outbox import OutboxSender
from maildesk.outbound.transport import open_transport
from maildesk.services import Services
from tests.conftest import make_mail
from tests.helpers import outbox_rows, receive
from tests.smtp_sink import closed_port


def test_relay_down_warns_then_errors_after_an_hour(
    services: Services, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    receive(services, make_mail(message_id="<down@customer.test>"))
    [queued] = outbox_rows(services)
    caplog.set_level(logging.INFO, logger="maildesk.outbox")
    with closed_port() as port:
        sender = OutboxSender(
            services.db,
            open_transport(f"smtp://127.0.0.1:{port}", "test.host"),
            clock,
            services.settings.outbound,
        )
        levels: list[tuple[int, str]] = []
        for _ in range(8):
            caplog.clear()
            sender.send_due()
            levels += [(r.levelno, r.getMessage()) for r in caplog.records]
            clock.advance(timedelta(minutes=15))
        sender.transport.close()

    deferred = [(level, text) for level, text in levels if "deferred" in text]
    # Tried at 0, 15, 30, 45 and 60 minutes (warnings), then at 75 and 90 (errors).
    assert [level for level, _ in deferred] == [logging.WARNING] * 5 + [logging.ERROR] * 3
    assert all(f"outbox {queued.id} " in text for _, text in deferred)
