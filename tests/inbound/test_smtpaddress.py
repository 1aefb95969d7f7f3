"""MAIL FROM / RCPT TO addresses: our cached parser answers exactly as aiosmtpd's own.

Both run on real aiosmtpd protocol objects (no connection needed to parse).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from aiosmtpd.smtp import SMTP

from maildesk.inbound.smtpaddress import parsed_once

ARGUMENTS = [
    "",
    "<>",
    "<alice@customer.test>",
    "<alice@customer.test> SIZE=4096 BODY=8BITMIME",
    "  <alice@customer.test>",
    "alice@customer.test",
    "alice@customer.test SIZE=10",
    '<"odd person"@customer.test>',
    "<@relay.test:alice@customer.test>",
    "<alice@[192.0.2.1]>",
    "<älice@customer.test> SMTPUTF8",
    "<alice@customer.test",
    "alice",
    "<>@>",
    "<a@b@c>",
    "@",
    "<" + "x" * 70 + "@customer.test>",
    "<support+t42.abcdef@example.test>",
    "\udcff<x@y>",
]


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.mark.parametrize("limit", [0, 64])
def test_every_argument_parses_as_aiosmtpd_parses_it(
    loop: asyncio.AbstractEventLoop, limit: int
) -> None:
    theirs, ours = SMTP(object(), loop=loop), parsed_once(SMTP)(object(), loop=loop)
    theirs.local_part_limit = ours.local_part_limit = limit
    for arg in ARGUMENTS * 2:  # the second time from the cache
        assert ours._getaddr(arg) == theirs._getaddr(arg), arg
