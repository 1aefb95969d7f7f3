"""The DKIM body hash computed in slices is dkimpy's, for every shape of body.

maildesk hashes the body itself (a 24 MB body cost dkimpy 90 MB) and hands dkimpy
the header block only (maildesk/mailauth.py); a different hash would turn proven
mail into unproven mail, or worse. dkimpy's own canonicalization is the reference.
"""

from __future__ import annotations

import hashlib
import itertools

import dkim
import pytest
from dkim.canonicalization import Relaxed, Simple

from maildesk.dkimbody import body_hash, pieces_hash, split

BODIES = [
    b"",
    b"\r\n",
    b"\r\n\r\n\r\n",
    b"Hello",
    b"Hello\r\n",
    b"Hello\r\n\r\n\r\n",
    b"Hello  \r\n\tworld\t \r\n \r\n\r\n",
    b"bare\nline\nends\n\n\n",
    b"mixed\r\nends\nand a lone\rCR\r\r\n\r\n",
    b"trailing CR\r",
    b"no final line end  \t",
    b"  \t  ",
    b"\r\n  \r\n\t\r\nlast\r\n",
    b"a  b\t\tc \t d\r\n" * 50,
    b"\n\r\n\n",
    b"x"
    + b" \t" * 300
    + b"y  \r\n"
    + b" " * 500
    + b"\r\n\t\tz\r\n",  # long runs, inside and at ends
]
HEADERS = [b"From: a@customer.test\r\nSubject: x\r\n\r\n", b"From: a@customer.test\n\n", b"\r\n"]


def dkimpy_hash(message: bytes, relaxed: bool, length: int | None) -> bytes:
    _headers, body = dkim.rfc822_parse(message)
    canonical = (Relaxed if relaxed else Simple).canonicalize_body(body)
    return hashlib.sha256(canonical if length is None else canonical[:length]).digest()


@pytest.mark.parametrize(("head", "body"), list(itertools.product(HEADERS, BODIES)))
@pytest.mark.parametrize("relaxed", [False, True])
def test_the_body_hash_in_slices_is_dkimpys(head: bytes, body: bytes, relaxed: bool) -> None:
    message = head + body
    header_block, start = split(message)
    # dkimpy reads the same header block and nothing after it.
    assert dkim.rfc822_parse(header_block) == (dkim.rfc822_parse(message)[0], b"")
    for size, length in itertools.product((1, 2, 3, 7, 1 << 20), (None, 0, 1, 5, 10**6)):
        assert body_hash(message, start, relaxed, hashlib.sha256, length, size) == (
            dkimpy_hash(message, relaxed, length)
        ), (size, length)


@pytest.mark.parametrize("body", BODIES)
@pytest.mark.parametrize("relaxed", [False, True])
def test_the_body_hash_of_pieces_is_dkimpys_wherever_the_pieces_are_cut(
    body: bytes, relaxed: bool
) -> None:
    # A composed mail's body comes in pieces (outbound DKIM signs it so): the hash must
    # not depend on where they are cut, even inside a CR LF pair or a run of blanks.
    expected = dkimpy_hash(HEADERS[0] + body, relaxed, None)
    singles = [(cut,) for cut in range(1, len(body))]
    pairs = itertools.combinations(range(1, min(len(body), 24)), 2)  # the short bodies' all
    for cuts in [(), *singles, *pairs]:
        bounds = [0, *cuts, len(body)]
        pieces = [body[a:b] for a, b in itertools.pairwise(bounds)]
        for size in (1, 3, 1 << 20):
            assert pieces_hash(pieces, relaxed, hashlib.sha256, size) == expected, (cuts, size)
    assert pieces_hash([], relaxed, hashlib.sha256) == dkimpy_hash(HEADERS[0], relaxed, None)
