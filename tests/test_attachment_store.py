"""Attachments' content is stored once per content, whole, however large: a large one
a slice at a time (inbound/rawbytes.py's `write_blob`), on SQLite and PostgreSQL."""

from __future__ import annotations

import email
import email.policy
import hashlib
import random
from email.message import EmailMessage

from sqlalchemy import func, select

from maildesk.models import Attachment, Blob
from maildesk.services import Services
from tests.conftest import make_mail
from tests.helpers import receive

POLICY = email.policy.SMTP


def with_attachments(sender: str, *files: tuple[str, bytes]) -> bytes:
    message = email.message_from_bytes(make_mail("Scans", sender=sender), policy=POLICY)
    assert isinstance(message, EmailMessage)
    for name, data in files:
        message.add_attachment(data, "application", "octet-stream", filename=name)
    return message.as_bytes(policy=POLICY)


def test_a_large_attachment_is_stored_once_and_comes_back_whole(services: Services) -> None:
    # No repeating pattern: a slice written twice or out of place would show.
    large = random.Random(5).randbytes((3 << 20) + 12_345)
    small = b"%PDF-1.7 a page\n"
    receive(services, with_attachments("alice@customer.test", ("a.bin", large), ("b.pdf", small)))
    receive(services, with_attachments("bob@other.test", ("same.bin", large)))

    with services.db.reading() as session:
        rows = session.execute(select(Blob.sha256, Blob.size, Blob.data))
        stored = {sha: (size, data) for sha, size, data in rows}
        names = session.execute(
            select(Attachment.filename, Attachment.blob_sha256).order_by(Attachment.id)
        ).all()
        assert session.scalar(select(func.count()).select_from(Attachment)) == 3
    key = hashlib.sha256(large).hexdigest()
    assert stored == {
        key: (len(large), large),
        hashlib.sha256(small).hexdigest(): (len(small), small),
    }
    assert [(name, sha == key) for name, sha in names] == [
        ("a.bin", True),
        ("b.pdf", False),
        ("same.bin", True),
    ]
