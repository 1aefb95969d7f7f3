"""Each stored message's SHA-256 is what `import` checks to skip mail already stored:
it is computed before the group commit (in the caller's thread, or off the event loop
for a large message), and must still be the digest of exactly the stored bytes."""

from __future__ import annotations

import asyncio
import os

import pytest

from maildesk.inbound.store import HASH_OFF_LOOP, Envelope, digest
from maildesk.services import Services

SIZES = [0, 100, HASH_OFF_LOOP, HASH_OFF_LOOP + 1, 3 * HASH_OFF_LOOP]


@pytest.mark.parametrize("size", SIZES)
def test_mail_stored_from_the_event_loop_is_known_by_its_digest(
    services: Services, size: int
) -> None:
    raw = os.urandom(size)
    stored = asyncio.run(services.store.put_async(raw, Envelope(source="smtp")))
    assert services.store.load(stored).raw == raw
    assert services.store.known_digests([digest(raw), digest(raw + b"x")]) == {digest(raw)}


def test_mail_stored_from_a_thread_or_in_bulk_is_known_by_its_digest(services: Services) -> None:
    one, many = os.urandom(HASH_OFF_LOOP + 5), [os.urandom(n) for n in (10, HASH_OFF_LOOP * 2)]
    services.store.put(one, Envelope(source="deliver"))
    services.store.put_many(many, Envelope(source="import", notify=False))
    wanted = [digest(raw) for raw in (one, *many)]
    assert services.store.known_digests(wanted) == set(wanted)
