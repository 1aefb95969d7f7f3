"""The mail clients of a desk's people, for tests over real SMTP: Alice the customer,
Agnes and Bob the agents, Mallory the stranger.

They write mail as a client would (plain text with threading headers and
Content-Language; tests/client_replies.py has the four real clients' replies to a
notification) and read what maildesk sent them from the test's outbox Maildir, in
the order it was queued. `show` and `queued_to` read the desk's own record through
the CLI, as an operator would, for the assertions.

Waits are deadlines on the outbox or the database, never sleeps.
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import json
import uuid
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from sqlalchemy import select

from maildesk.cli import main
from maildesk.models import Inbound
from tests.conftest import Outbox, RunningDaemon, wait_for

AGENT = "agent@example.test"
AGENT_FROM = "Agnes Agent <agent@example.test>"
AGENT_NAME = "Agnes Agent"
ALICE = "alice@customer.test"
ALICE_FROM = "Alice Smith <alice@customer.test>"
SUPPORT = "support@example.test"
SUPPORT_NAME = "Example Support"
BOB = "bob@example.test"  # a second agent
STRANGER = "mallory@stranger.test"  # forges mail From an agent

CUSTOMER_TEXT = {
    "en": ("Printer broken", "The printer on floor 2 prints only blank pages.\n\nAlice\n"),
    "cs": (
        "Tiskárna tiskne prázdné stránky",
        "Dobrý den,\n\ntiskárna ve 2. patře tiskne jen prázdné stránky.\n\nAlice Smithová\n",
    ),
}


def desk_config(config_values: dict[str, Any], *agents: str) -> dict[str, Any]:
    """A test's config with these agents, whose links reach the test daemon's web listener."""
    config_values["agents"]["addresses"] = list(agents)
    config_values["support"]["base_url"] = f"http://127.0.0.1:{config_values['web']['port']}"
    return config_values


# -- reading the outbox and the ticket ------------------------------------------------


@dataclass(frozen=True)
class Sent:
    """One message maildesk wrote to the outbox Maildir."""

    raw: bytes
    msg: EmailMessage

    @property
    def to(self) -> list[str]:
        return [a.addr_spec.lower() for a in self.msg["To"].addresses]

    @property
    def subject(self) -> str:
        return str(self.msg["Subject"])

    @property
    def text(self) -> str:
        return plain_text(self.msg)


def plain_text(msg: EmailMessage) -> str:
    part = msg.get_body(("plain",))
    assert part is not None, "no text/plain part"
    return str(part.get_content()).replace("\r\n", "\n")


def parse_bytes(raw: bytes) -> EmailMessage:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def sent(outbox: Outbox) -> list[Sent]:
    """Everything in the outbox, in the order maildesk queued it (file names start with the
    outbox row id)."""
    folder = outbox.path / "new"
    files = (
        sorted(folder.iterdir(), key=lambda p: int(p.name.split(".")[0])) if folder.exists() else []
    )
    result = []
    for path in files:
        raw = path.read_bytes()
        result.append(Sent(raw, parse_bytes(raw)))
    return result


def mail_to(outbox: Outbox, address: str, count: int = 1, timeout: float = 10.0) -> list[Sent]:
    """Wait until at least `count` messages to `address` are in the outbox; returns them all."""

    def found() -> list[Sent]:
        mails = [s for s in sent(outbox) if address in s.to]
        return mails if len(mails) >= count else []

    result: list[Sent] = wait_for(found, timeout, f"{count} outbound messages to {address}")
    return result


def cli(config_file: Path, *args: str) -> Any:
    """Run `maildesk --config FILE ARGS... --json` as a user would; returns the JSON."""
    result = CliRunner().invoke(main, ["--config", str(config_file), *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def show(config_file: Path, number: int = 1) -> dict[str, Any]:
    data: dict[str, Any] = cli(config_file, "tickets", "show", str(number))
    return data


def queued_to(config_file: Path, address: str) -> list[dict[str, Any]]:
    """The outbox table's rows for `address` (sent or not), as `maildesk outbox list` shows."""
    rows: list[dict[str, Any]] = cli(config_file, "outbox", "list", "--all")
    return [r for r in rows if address in r["recipients"]]


def processed(daemon: RunningDaemon, count: int) -> None:
    """Wait until `count` inbound messages left the pipeline, or one of them failed."""

    def done() -> bool:
        with daemon.services.db.transaction() as session:
            rows = list(session.scalars(select(Inbound)))
        failed = [r for r in rows if r.error]
        assert not failed, f"processing failed: {failed[0].error[-600:]}"
        return sum(r.state != "pending" for r in rows) >= count

    wait_for(done, 10, f"{count} processed inbound messages")


def processed_or_failed(daemon: RunningDaemon, count: int) -> list[Inbound]:
    """Wait until `count` inbound rows are processed or have failed at least once."""

    def done() -> list[Inbound]:
        with daemon.services.db.transaction() as session:
            rows = list(session.scalars(select(Inbound).order_by(Inbound.id)))
        settled = [r for r in rows if r.state != "pending" or r.error]
        return rows if len(settled) >= count else []

    rows: list[Inbound] = wait_for(done, 10, f"{count} settled inbound messages")
    return rows


def assert_no_trace_of_the_agent(mail: Sent) -> None:
    """Not in the bytes, nor in any decoded header or text part (base64 would hide it)."""
    assert AGENT.encode() not in mail.raw.lower()
    for name, value in mail.msg.items():
        assert AGENT not in str(value).lower(), f"{name}: {value}"
    for part in mail.msg.walk():
        if part.get_content_maintype() == "text":
            assert AGENT not in str(part.get_content()).lower()


def attachments(msg: EmailMessage) -> list[tuple[str | None, str, bytes]]:
    found = []
    for part in msg.iter_attachments():
        data = part.get_payload(decode=True)
        assert isinstance(data, bytes)
        found.append((part.get_filename(), part.get_content_type(), data))
    return found


# -- the customer ------------------------------------------------------------------


def customer_mail(
    language: str,
    *,
    message_id: str,
    subject: str | None = None,
    body: str | None = None,
    answering: Sent | None = None,
    to: str = SUPPORT,
) -> bytes:
    """Alice's mail, plain text, in her language (Content-Language tells maildesk)."""
    first_subject, first_body = CUSTOMER_TEXT[language]
    msg = EmailMessage()
    msg["From"] = ALICE_FROM
    msg["To"] = to
    msg["Subject"] = subject or first_subject
    msg["Date"] = email.utils.format_datetime(email.utils.localtime())
    msg["Message-ID"] = message_id
    if answering is not None:
        parent = str(answering.msg["Message-ID"])
        msg["In-Reply-To"] = parent
        msg["References"] = f"{answering.msg.get('References', '')} {parent}".strip()
    msg.set_content(body or first_body, cte="quoted-printable")
    msg["Content-Language"] = language  # after set_content, which resets Content-* headers
    return msg.as_bytes(policy=email.policy.SMTP)


@dataclass(frozen=True)
class Opened:
    customer_message_id: str
    ack: Sent
    notification: Sent

    @property
    def reply_to(self) -> str:
        """The signed address the notification asks the agent to answer."""
        return str(self.notification.msg["Reply-To"].addresses[0].addr_spec)


def open_ticket(daemon: RunningDaemon, outbox: Outbox, language: str = "en") -> Opened:
    """Alice writes to support; returns her acknowledgement and the agent's notification."""
    message_id = f"<{uuid.uuid4().hex}@customer.test>"
    daemon.send(customer_mail(language, message_id=message_id))
    [notification] = mail_to(outbox, AGENT)
    [ack] = mail_to(outbox, ALICE)
    return Opened(message_id.strip("<>"), ack, notification)


def reply_to(sent_mail: Sent) -> str:
    """The address a reply to `sent_mail` goes to (its Reply-To)."""
    return str(sent_mail.msg["Reply-To"].addresses[0].addr_spec)


def alice_replies(daemon: RunningDaemon, outbox: Outbox, text: str) -> None:
    """Alice answers her acknowledgement of ticket 1 (its signed Reply-To)."""
    ack = mail_to(outbox, ALICE)[0]
    message_id = f"<{uuid.uuid4().hex}@customer.test>"
    raw = customer_mail("en", message_id=message_id, subject="Re: [#1] Printer broken",
                        body=text, to=reply_to(ack))  # fmt: skip
    daemon.send(raw, recipients=(reply_to(ack),))


# -- an agent's short mail: commands, a confirmation's "yes" -------------------------


def mail(
    sender: str,
    body: str,
    *,
    subject: str = "console",
    to: str = SUPPORT,
    answering: Sent | None = None,
    extra: dict[str, str] | None = None,
) -> bytes:
    """A plain mail from `sender`; `answering` gives it that mail's threading headers."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = email.utils.format_datetime(email.utils.localtime())
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@{sender.partition('@')[2]}>"
    if answering is not None:
        msg["In-Reply-To"] = str(answering.msg["Message-ID"])
        msg["References"] = str(answering.msg["Message-ID"])
    for name, value in (extra or {}).items():
        msg[name] = value
    msg.set_content(body)
    return msg.as_bytes(policy=email.policy.SMTP)


def agent_writes(
    daemon: RunningDaemon, sender: str, body: str, *, envelope: str = "", **kw: Any
) -> None:
    """`sender` (or whoever `envelope` names, for a forgery) sends `mail(sender, body, ...)`."""
    to = kw.get("to", SUPPORT)
    daemon.send(mail(sender, body, **kw), sender=envelope or sender, recipients=(to,))


def mails_to(outbox: Outbox, address: str, subject: str, count: int = 1) -> list[Sent]:
    """Wait for `count` mails to `address` whose subject starts with `subject`."""

    def found() -> list[Sent]:
        mails = [s for s in sent(outbox) if address in s.to and s.subject.startswith(subject)]
        return mails if len(mails) >= count else []

    result: list[Sent] = wait_for(found, 10, f"{count} mails to {address}: {subject}")
    return result
