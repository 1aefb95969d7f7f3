"""A stored message reads back byte for byte whatever its size: the spool reads its
bytes a 1 MiB slice at a time (`inbound/rawbytes.py`), so the sizes at and around a
slice's edge, and the empty message, are where a piece could be lost or doubled."""

from __future__ import annotations

import os

import pytest

from maildesk.inbound.rawbytes import SLICE
from maildesk.inbound.store import Envelope
from maildesk.services import Services

SIZES = [0, 1, SLICE - 1, SLICE, SLICE + 1, 2 * SLICE - 1, 2 * SLICE, 2 * SLICE + 1, 3 * SLICE + 7]


@pytest.mark.parametrize("size", SIZES)
def test_stored_bytes_read_back_exactly_at_every_slice_edge(services: Services, size: int) -> None:
    # Random bytes: a slice read from the wrong offset cannot match by chance.
    raw = os.urandom(size)
    stored = services.store.put(raw, Envelope(source="web"))
    loaded = services.store.load(stored)
    assert len(loaded.raw) == size
    assert loaded.raw == raw
    assert type(loaded.raw) is bytes


def test_a_message_stored_with_others_reads_back_alone(services: Services) -> None:
    raws = [os.urandom(n) for n in (SLICE + 3, 0, 5, 2 * SLICE)]
    ids = services.store.put_many(raws, Envelope(source="import", notify=False))
    assert [services.store.load(i).raw for i in reversed(ids)] == list(reversed(raws))
