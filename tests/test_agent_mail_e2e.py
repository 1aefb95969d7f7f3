"""Agents by mail, end to end over real SMTP: the daemon on free ports, the outbox Maildir.

The customer writes; the agent's notification is read from the outbox; the agent answers it
as their mail client would (Outlook, Gmail, Apple Mail, Thunderbird, in Czech and English:
the text bodies of tests/data/mail/reply-*.txt with the real notification quoted below them,
each client's HTML part, threading headers and attachment encoding); the customer's copy is
read back from the outbox. Then each command, the forged agent, and the paid modification.
tests/pipeline/test_agents.py covers the same rules in-process, without sockets.

Waits are deadlines on the outbox or the database, never sleeps. "Nothing was sent" is read
from the outbox table once a later effect of the same mail is visible: everything one inbound
mail causes is committed in one transaction.
"""

from __future__ import annotations

import base64
import email
import email.policy
import email.utils
import html
import json
import textwrap
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage, MIMEPart
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from maildesk.cli import main
from maildesk.clock import ManualClock
from maildesk.models import Inbound
from maildesk.tickets import views
from tests.conftest import DATA, Outbox, RunningDaemon, wait_for

AGENT = "agent@example.test"
AGENT_FROM = "Agnes Agent <agent@example.test>"
AGENT_NAME = "Agnes Agent"
ALICE = "alice@customer.test"
ALICE_FROM = "Alice Smith <alice@customer.test>"
SUPPORT = "support@example.test"
SUPPORT_NAME = "Example Support"

# A small PDF-like blob (binary bytes included) and a Czech file name with an en dash.
PDF = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n%%EOF\n"
PDF_NAME = "Návod k tiskárně – č. 2.pdf"

# Header lines of the attachment parts below are written as each client writes them:
# keep them exactly as they are on the wire.
WIRE = email.policy.SMTP.clone(refold_source="none")

CUSTOMER_TEXT = {
    "en": ("Printer broken", "The printer on floor 2 prints only blank pages.\n\nAlice\n"),
    "cs": (
        "Tiskárna tiskne prázdné stránky",
        "Dobrý den,\n\ntiskárna ve 2. patře tiskne jen prázdné stránky.\n\nAlice Smithová\n",
    ),
}


@pytest.fixture
def config_values(config_values: dict[str, Any]) -> dict[str, Any]:
    config_values["agents"]["addresses"] = [AGENT]
    # The approve link in the paid-work notice must reach this daemon's web listener.
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


# -- the agent's mail clients --------------------------------------------------------

EN_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
EN_MONTHS = (
    "January February March April May June July August September October November December"
).split()
CS_DAYS = ("pondělí", "úterý", "středa", "čtvrtek", "pátek", "sobota", "neděle")
CS_DAYS_SHORT = ("po", "út", "st", "čt", "pá", "so", "ne")
CS_MONTHS = (
    "ledna února března dubna května června července srpna září října listopadu prosince"
).split()


def _ampm(moment: datetime, space: str = " ") -> str:
    hour = moment.hour % 12 or 12
    return f"{hour}:{moment:%M}{space}{'AM' if moment.hour < 12 else 'PM'}"


@dataclass(frozen=True)
class Quoted:
    """What a reply quotes: the notification's headers and its text."""

    sender_name: str
    sender: str
    to: str
    subject: str
    date: datetime
    text: str
    message_id: str
    references: str
    thread_index: str

    @classmethod
    def of(cls, mail: Sent) -> Quoted:
        sender = mail.msg["From"].addresses[0]
        return cls(
            sender_name=sender.display_name,
            sender=sender.addr_spec,
            to=", ".join(a.addr_spec for a in mail.msg["To"].addresses),
            subject=mail.subject,
            date=mail.msg["Date"].datetime,
            text=mail.text,
            message_id=str(mail.msg["Message-ID"]),
            references=str(mail.msg.get("References", "")),
            thread_index=str(mail.msg.get("Thread-Index", "")),
        )


def gt_quote(text: str) -> str:
    """Quoting as Gmail, Apple Mail and Thunderbird write it: "> line", a bare ">" if empty."""
    return "\n".join(f"> {line}" if line else ">" for line in text.rstrip("\n").split("\n"))


def html_lines(text: str) -> str:
    return "<br>\n".join(html.escape(line) for line in text.rstrip("\n").split("\n"))


def outlook_header(q: Quoted, language: str) -> list[str]:
    if language == "cs":
        sent_at = (
            f"{CS_DAYS[q.date.weekday()]} {q.date.day}. {CS_MONTHS[q.date.month - 1]} "
            f"{q.date.year} {q.date.hour}:{q.date:%M}"
        )
        labels = ("Od", "Odesláno", "Komu", "Předmět")
    else:
        sent_at = (
            f"{EN_DAYS[q.date.weekday()]}, {EN_MONTHS[q.date.month - 1]} {q.date.day}, "
            f"{q.date.year} {_ampm(q.date)}"
        )
        labels = ("From", "Sent", "To", "Subject")
    values = (f"{q.sender_name} <{q.sender}>", sent_at, q.to, q.subject)
    return [f"{label}: {value}" for label, value in zip(labels, values, strict=True)]


def outlook_plain(q: Quoted, language: str) -> str:
    # New Outlook and Outlook on the web draw a rule above the header block (en fixture);
    # classic desktop Outlook starts with the "Od:" line (cs fixture).
    rule = ["________________________________"] if language == "en" else []
    return "\n".join([*rule, *outlook_header(q, language), "", q.text])


def outlook_html(top: str, q: Quoted, language: str) -> str:
    paragraphs = "\n".join(
        f'<p class="MsoNormal">{html.escape(line) or "&nbsp;"}<o:p></o:p></p>'
        for line in top.rstrip("\n").split("\n")
    )
    header = "<br>\n".join(
        f"<b>{html.escape(label)}:</b>{html.escape(value)}"
        for label, _, value in (line.partition(":") for line in outlook_header(q, language))
    )
    quoted = "\n".join(
        f'<p class="MsoNormal">{html.escape(line) or "&nbsp;"}<o:p></o:p></p>'
        for line in q.text.rstrip("\n").split("\n")
    )
    return (
        '<html xmlns:v="urn:schemas-microsoft-com:vml" '
        'xmlns:o="urn:schemas-microsoft-com:office:office" '
        'xmlns:w="urn:schemas-microsoft-com:office:word" '
        'xmlns:m="http://schemas.microsoft.com/office/2004/12/omml" '
        'xmlns="http://www.w3.org/TR/REC-html40">\n'
        '<head>\n<meta http-equiv="Content-Type" content="text/html; charset=utf-8">\n'
        '<meta name="Generator" content="Microsoft Word 15 (filtered medium)">\n'
        "<style><!--\np.MsoNormal, li.MsoNormal, div.MsoNormal\n"
        '\t{margin:0cm;font-size:11.0pt;font-family:"Calibri",sans-serif;}\n'
        "@page WordSection1\n\t{size:612.0pt 792.0pt;margin:70.85pt 70.85pt 70.85pt 70.85pt;}\n"
        "div.WordSection1\n\t{page:WordSection1;}\n--></style>\n</head>\n"
        f'<body lang="{language.upper()}" link="#0563C1" vlink="#954F72" '
        'style="word-wrap:break-word">\n<div class="WordSection1">\n'
        f"{paragraphs}\n"
        '<div style="border:none;border-top:solid #E1E1E1 1.0pt;padding:3.0pt 0cm 0cm 0cm">\n'
        f'<p class="MsoNormal">{header}<o:p></o:p></p>\n</div>\n'
        f"{quoted}\n</div>\n</body>\n</html>\n"
    )


def gmail_attribution(q: Quoted, language: str) -> str:
    who = f"{q.sender_name} <{q.sender}>"
    if language == "cs":
        day = CS_DAYS_SHORT[q.date.weekday()]
        line = (
            f"{day} {q.date.day}. {q.date.month}. {q.date.year} v {q.date.hour}:{q.date:%M} "
            f"odesílatel {who} napsal:"
        )
    else:
        when = f"{EN_DAYS[q.date.weekday()][:3]}, {EN_MONTHS[q.date.month - 1][:3]} {q.date.day}"
        line = f"On {when}, {q.date.year} at {_ampm(q.date, chr(0x202F))} {who} wrote:"
    return line


def gmail_plain(q: Quoted, language: str) -> str:
    # Gmail wraps its plain text, the attribution line included, at 78 columns.
    attribution = textwrap.wrap(
        gmail_attribution(q, language), 78, break_long_words=False, break_on_hyphens=False
    )
    return "\n".join([*attribution, "", gt_quote(q.text), ""])


def gmail_html(top: str, q: Quoted, language: str) -> str:
    attribution = html.escape(gmail_attribution(q, language)).replace(
        html.escape(f"<{q.sender}>"),
        f'&lt;<a href="mailto:{q.sender}">{q.sender}</a>&gt;',
    )
    return (
        f'<div dir="ltr">{html_lines(top)}</div><br><div class="gmail_quote">'
        f'<div dir="ltr" class="gmail_attr">{attribution}<br></div>'
        '<blockquote class="gmail_quote" style="margin:0px 0px 0px 0.8ex;'
        f'border-left:1px solid rgb(204,204,204);padding-left:1ex">{html_lines(q.text)}'
        "</blockquote></div>\n"
    )


def apple_attribution(q: Quoted, language: str) -> str:
    when = f"{q.date.day}. {q.date.month}. {q.date.year}"
    if language == "cs":
        return f"{when} v {q.date.hour}:{q.date:%M}, {q.sender_name} <{q.sender}>:"
    return f"On {when}, at {q.date.hour}:{q.date:%M}, {q.sender_name} <{q.sender}> wrote:"


def apple_plain(q: Quoted, language: str) -> str:
    # Apple Mail quotes its English attribution with the message; the Czech one stands above.
    if language == "cs":
        return "\n".join([apple_attribution(q, language), "", gt_quote(q.text), ""])
    return gt_quote(f"{apple_attribution(q, language)}\n\n{q.text}") + "\n"


def apple_html(top: str, q: Quoted, language: str) -> tuple[str, str]:
    """Apple Mail's two HTML parts around an attachment: the new text, then the quote."""
    head = (
        '<html><head><meta http-equiv="content-type" content="text/html; charset=utf-8">'
        '</head><body style="overflow-wrap: break-word; -webkit-nbsp-mode: space; '
        'line-break: after-white-space;">'
    )
    lines = "".join(
        f"<div>{html.escape(line)}</div>" if line else "<div><br></div>"
        for line in top.rstrip("\n").split("\n")
    )
    quote = "".join(
        f"<div>{html.escape(line)}</div>" if line else "<div><br></div>"
        for line in q.text.rstrip("\n").split("\n")
    )
    first = f"{head}{lines}<div></div></body></html>"
    second = (
        f'{head}<div><br><blockquote type="cite"><div>{html.escape(apple_attribution(q, language))}'
        f'</div><br class="Apple-interchange-newline"><div>{quote}</div></blockquote></div>'
        "</body></html>"
    )
    return first, second


def thunderbird_attribution(q: Quoted, language: str) -> str:
    if language == "cs":
        return f"Dne {q.date:%d. %m. %y} v {q.date.hour}:{q.date:%M} {q.sender_name} napsal(a):"
    return f"On {q.date:%d.%m.%y} {q.date.hour}:{q.date:%M}, {q.sender_name} wrote:"


def thunderbird_plain(q: Quoted, language: str) -> str:
    return "\n".join([thunderbird_attribution(q, language), gt_quote(q.text), ""])


def thunderbird_html(top: str, q: Quoted, language: str) -> str:
    paragraphs = "".join(f"<p>{html_lines(p)}</p>\n" for p in top.strip("\n").split("\n\n"))
    return (
        "<!DOCTYPE html>\n<html>\n  <head>\n"
        '    <meta http-equiv="Content-Type" content="text/html; charset=UTF-8">\n'
        "  </head>\n  <body>\n"
        f"{paragraphs}"
        f'    <div class="moz-cite-prefix">{html.escape(thunderbird_attribution(q, language))}'
        "<br>\n    </div>\n"
        f'    <blockquote type="cite" cite="mid:{q.message_id.strip("<>")}">\n'
        f'      <pre class="moz-quote-pre" wrap="">{html.escape(q.text)}</pre>\n'
        "    </blockquote>\n  </body>\n</html>\n"
    )


def attachment_part(headers: list[str], data: bytes) -> MIMEPart:
    """An attachment exactly as a client writes it: its own header lines, base64 body."""
    body = base64.encodebytes(data).replace(b"\n", b"\r\n")
    return parse_part(("\r\n".join(headers) + "\r\n\r\n").encode("ascii") + body)


def parse_part(raw: bytes) -> MIMEPart:
    """A MIME part read from its bytes, so its header lines stay as written."""
    return BytesParser(EmailMessage, policy=WIRE).parsebytes(raw)


def encoded_word(text: str, q: bool = False) -> str:
    if q:
        encoded = "".join(
            chr(b) if b < 128 and (chr(b).isalnum() or chr(b) in ".-") else f"={b:02X}"
            for b in text.encode("utf-8")
        )
        return f"=?utf-8?Q?{encoded}?="
    return f"=?utf-8?B?{base64.b64encode(text.encode('utf-8')).decode('ascii')}?="


def rfc2231(text: str) -> str:
    return "utf-8''" + urllib.parse.quote(text, safe="")


def text_part(text: str, subtype: str, cte: str, **params: str) -> MIMEPart:
    part = MIMEPart(policy=WIRE)
    part.set_content(text, subtype=subtype, charset="utf-8", cte=cte)
    for name, value in params.items():
        part.set_param(name, value)
    return part


def multipart(subtype: str, boundary: str, parts: list[MIMEPart]) -> MIMEPart:
    container = MIMEPart(policy=WIRE)
    container["Content-Type"] = f'multipart/{subtype}; boundary="{boundary}"'
    for part in parts:
        container.attach(part)
    return container


@dataclass(frozen=True)
class Client:
    """One mail client answering a notification: the fixture's text and the client's ways."""

    fixture: str
    expected: str  # the new text maildesk must relay; as tests/test_replies.py expects it
    rich: bool = True  # an HTML alternative and an attachment (else plain text only)
    threading: bool = True  # In-Reply-To and References of the notification

    @property
    def family(self) -> str:
        return self.fixture.removeprefix("reply-").removesuffix(".txt").rsplit("-", 1)[0]

    @property
    def language(self) -> str:
        return self.fixture.removesuffix(".txt").rsplit("-", 1)[1]

    @property
    def id(self) -> str:
        return self.fixture.removeprefix("reply-").removesuffix(".txt") + (
            "" if self.threading else "-no-threading-headers"
        )

    def subject(self, original: str) -> str:
        if self.family == "outlook":
            return f"{'Odp' if self.language == 'cs' else 'RE'}: {original}"
        return f"Re: {original}"

    def top(self) -> str:
        """The fixture above its quote header: the writer's text and signature."""
        text = (DATA / self.fixture).read_text(encoding="utf-8")
        return text[: text.index("\n" + QUOTE_HEADER[self.fixture]) + 1]


# Where each fixture's quote header starts; everything from there on is replaced by the
# same client's quote of the real notification.
QUOTE_HEADER = {
    "reply-outlook-en.txt": "________________________________\n",
    "reply-outlook-cs.txt": "Od: ",
    "reply-gmail-en.txt": "On Mon, ",
    "reply-gmail-cs.txt": "po 23. 11. 2026 ",
    "reply-apple-mail-en.txt": "> On 23. 11. 2026, ",
    "reply-apple-mail-cs.txt": "23. 11. 2026 v 10:00, ",
    "reply-thunderbird-en.txt": "On 23.11.26 ",
    "reply-thunderbird-cs.txt": "Dne 23. 11. 26 ",
}

CLIENTS = [
    Client(
        "reply-outlook-en.txt",
        "Hi Alice,\n\nI have reset your password. You will receive an activation e-mail within\n"
        "a few minutes; the link in it is valid for 24 hours.",
    ),
    Client(
        "reply-outlook-cs.txt",
        "Dobrý den,\n\n"
        "chybu v exportu jsme opravili. Aplikaci prosím restartujte a zkuste to znovu.",
    ),
    Client(
        "reply-gmail-en.txt",
        "Hi Alice,\n\nthe export works again, the fix has been live since 11:30.\n"
        "Could you try once more and let me know?",
    ),
    Client("reply-gmail-cs.txt", "Dobrý den,\n\nnávod na nastavení tiskárny posílám v příloze."),
    Client(
        "reply-apple-mail-en.txt",
        # Apple Mail has no signature delimiter: a bare name line is kept as text, as
        # tests/test_replies.py expects.
        "Hi Alice,\n\nyour account has been moved to the Business plan.\n\nPetra",
    ),
    Client(
        "reply-apple-mail-cs.txt",
        "Dobrý den,\n\núčet jsme převedli na tarif Business.\n\nPetra Svobodová",
        threading=False,  # only the signed Reply-To address ties it to the notification
    ),
    Client(
        "reply-thunderbird-en.txt",
        "Hi Alice,\n\nthe backup from Sunday night is complete; I restored the folder\n"
        '"Contracts" from it.',
    ),
    Client(
        "reply-thunderbird-cs.txt",
        "Dobrý den,\n\nsložku „Smlouvy“ jsme obnovili ze zálohy z neděle.",
        rich=False,  # Thunderbird's plain-text mode: format=flowed, 8bit, no HTML
    ),
]
GMAIL_EN = CLIENTS[2]
OUTLOOK_EN = CLIENTS[0]
THUNDERBIRD_EN = CLIENTS[6]


def client_reply(
    client: Client,
    notification: Sent,
    to: str,
    *,
    top: str | None = None,
    sender: str = AGENT_FROM,
    extra: MIMEPart | None = None,
    html_only: bool = False,
) -> bytes:
    """The agent's answer to `notification`, as `client` composes and sends it.

    `top` replaces the fixture's new text (commands, other wording); `extra` is one more
    attachment; `html_only` is Thunderbird's "Only rich text (HTML)" send option.
    """
    q = Quoted.of(notification)
    lang = client.language
    top = client.top() if top is None else top
    msg = EmailMessage(policy=WIRE)
    token = uuid.uuid4().hex
    threading = (
        [("In-Reply-To", q.message_id), ("References", f"{q.references} {q.message_id}".strip())]
        if client.threading
        else []
    )
    date = email.utils.format_datetime(email.utils.localtime())
    subject = client.subject(q.subject)
    parts: list[MIMEPart] = []
    body: MIMEPart
    if client.family == "outlook":
        headers = [
            ("From", sender),
            ("To", f"{SUPPORT_NAME} <{to}>"),
            ("Subject", subject),
            ("Thread-Topic", q.subject),
            # Outlook adds a 5-byte child block to the parent's Thread-Index.
            (
                "Thread-Index",
                base64.b64encode(base64.b64decode(q.thread_index) + bytes(5)).decode(),
            ),
            ("Date", date),
            ("Message-ID", f"<AM0PR07MB{token[:12].upper()}@AM0PR07MB.eurprd07.prod.outlook.com>"),
            *threading,
            ("Accept-Language", "cs-CZ, en-US"),
            ("Content-Language", "cs-CZ" if lang == "cs" else "en-US"),
            ("X-MS-Has-Attach", "yes"),
            ("X-MS-TNEF-Correlator", ""),
            ("MIME-Version", "1.0"),
        ]
        plain = top + outlook_plain(q, lang)
        alternative = multipart(
            "alternative",
            f"_000_AM0PR07MB{token[:12].upper()}_",
            [
                text_part(plain, "plain", "base64"),
                text_part(outlook_html(top, q, lang), "html", "base64"),
            ],
        )
        word = encoded_word(PDF_NAME)
        parts = [
            attachment_part(
                [
                    f'Content-Type: application/pdf; name="{word}"',
                    f"Content-Description: {word}",
                    f'Content-Disposition: attachment; filename="{word}"; size={len(PDF)};',
                    '\tcreation-date="Mon, 05 Jan 2026 09:05:00 GMT";',
                    '\tmodification-date="Mon, 05 Jan 2026 09:05:00 GMT"',
                    "Content-Transfer-Encoding: base64",
                ],
                PDF,
            )
        ]
        body = multipart("mixed", f"_004_AM0PR07MB{token[:12].upper()}_", [alternative, *parts])
    elif client.family == "gmail":
        headers = [
            ("MIME-Version", "1.0"),
            *threading,
            ("From", sender),
            ("Date", date),
            ("Message-ID", f"<CA+{token}{token[:8]}@mail.gmail.com>"),
            ("Subject", subject),
            ("To", f"{SUPPORT_NAME} <{to}>"),
        ]
        plain = top + gmail_plain(q, lang)
        alternative = multipart(
            "alternative",
            f"000000000000{token[:16]}",
            [
                text_part(plain, "plain", "quoted-printable"),
                text_part(gmail_html(top, q, lang), "html", "quoted-printable"),
            ],
        )
        word = encoded_word(PDF_NAME)
        parts = [
            attachment_part(
                [
                    f'Content-Type: application/pdf; name="{word}"',
                    f'Content-Disposition: attachment; filename="{word}"',
                    "Content-Transfer-Encoding: base64",
                    f"Content-ID: <f_{token[:10]}0>",
                    f"X-Attachment-Id: f_{token[:10]}0",
                ],
                PDF,
            )
        ]
        body = multipart("mixed", f"000000000000{token[16:32]}", [alternative, *parts])
    elif client.family == "apple-mail":
        headers = [
            ("From", sender),
            ("Mime-Version", "1.0 (Mac OS X Mail 16.0 \\(3826.400.131.1.6\\))"),
            ("Subject", subject),
            ("Date", date),
            *threading[1:],  # Apple Mail writes References before In-Reply-To
            ("To", f"{SUPPORT_NAME} <{to}>"),
            *threading[:1],
            ("Message-Id", f"<{str(uuid.UUID(token)).upper()}@example.test>"),
            ("X-Mailer", "Apple Mail (2.3826.400.131.1.6)"),
        ]
        plain = top + apple_plain(q, lang)
        first_html, second_html = apple_html(top, q, lang)
        parts = [
            attachment_part(
                [
                    f"Content-Disposition: attachment; filename*={rfc2231(PDF_NAME)}",
                    f'Content-Type: application/pdf; x-unix-mode=0644; name="'
                    f'{encoded_word(PDF_NAME, q=True)}"',
                    "Content-Transfer-Encoding: base64",
                ],
                PDF,
            )
        ]
        # Apple Mail's rich text with an attachment: the HTML alternative is a
        # multipart/mixed of the text before the attachment, the attachment, the rest.
        mixed = multipart(
            "mixed",
            f"Apple-Mail=_{str(uuid.UUID(token)).upper()}",
            [
                text_part(first_html, "html", "quoted-printable"),
                *parts,
                text_part(second_html, "html", "quoted-printable"),
            ],
        )
        body = multipart(
            "alternative",
            f"Apple-Mail=_{str(uuid.uuid4()).upper()}",
            [text_part(plain, "plain", "quoted-printable"), mixed],
        )
    else:
        assert client.family == "thunderbird"
        headers = [
            ("Message-ID", f"<{uuid.UUID(token)}@example.test>"),
            ("Date", date),
            ("MIME-Version", "1.0"),
            ("User-Agent", "Mozilla Thunderbird"),
            ("Subject", subject),
            ("To", f"{SUPPORT_NAME} <{to}>"),
            *threading[1:],
            ("Content-Language", "cs" if lang == "cs" else "en-US"),
            ("From", sender),
            *threading[:1],
        ]
        plain = top + thunderbird_plain(q, lang)
        plain_part = text_part(plain, "plain", "8bit", format="flowed")
        if client.rich or html_only:
            word = encoded_word(PDF_NAME)
            parts = [
                attachment_part(
                    [
                        f'Content-Type: application/pdf; name="{word}"',
                        f"Content-Disposition: attachment; filename*={rfc2231(PDF_NAME)}",
                        "Content-Transfer-Encoding: base64",
                    ],
                    PDF,
                )
            ]
            rich = text_part(thunderbird_html(top, q, lang), "html", "8bit")
            content = (
                rich
                if html_only
                else multipart("alternative", f"------------{token[:24]}", [plain_part, rich])
            )
            body = multipart("mixed", f"------------{token[8:32]}", [content, *parts])
        else:
            body = plain_part
    if extra is not None:
        if body.get_content_type() != "multipart/mixed":
            body = multipart("mixed", f"extra-{token}", [body])
        body.attach(extra)
    for name, value in headers:
        msg[name] = value
    if body.is_multipart():
        for name, value in body.items():
            msg[name] = value
        msg.set_payload(body.get_payload())
    else:  # Thunderbird's plain text: the message is the text part
        msg.set_content(plain, subtype="plain", charset="utf-8", cte="8bit")
        msg.set_param("format", "flowed")
        msg["Content-Language"] = dict(headers)["Content-Language"]  # set_content dropped it
    return msg.as_bytes(policy=WIRE)


def agent_sends(daemon: RunningDaemon, raw: bytes, to: str) -> None:
    """The agent's mail system hands the reply to ours: envelope sender, envelope recipient."""
    daemon.send(raw, sender=AGENT, recipients=(to,))


# The lines agent_reply.txt.j2 (cs and en alike) puts under the agent's text.
SIGNATURE = f"--\n{AGENT_NAME}, {SUPPORT_NAME}\n"


# -- 1. the reply, as each client writes it --------------------------------------------


@pytest.mark.parametrize("client", CLIENTS, ids=lambda c: c.id)
def test_agent_reply_from_each_client_reaches_the_customer_clean(
    daemon: RunningDaemon, outbox: Outbox, config_file: Path, client: Client
) -> None:
    opened = open_ticket(daemon, outbox, client.language)
    notification = opened.notification
    assert notification.msg["From"].addresses[0].addr_spec == SUPPORT
    assert opened.reply_to.startswith("support+t1a1.")
    assert CUSTOMER_TEXT[client.language][1].split("\n")[0] in notification.text

    raw = client_reply(client, notification, opened.reply_to)
    # What the client sends does quote the notification, and says who the agent is.
    assert notification.text.split("\n")[0] in plain_text(parse_bytes(raw)).replace("> ", "")
    assert AGENT.encode() in raw
    agent_sends(daemon, raw, opened.reply_to)

    [_, relay] = mail_to(outbox, ALICE, 2)
    assert relay.to == [ALICE]
    sender = relay.msg["From"].addresses[0]
    assert (sender.addr_spec, sender.display_name) == (SUPPORT, f"{AGENT_NAME} ({SUPPORT_NAME})")
    assert_no_trace_of_the_agent(relay)
    assert relay.text == f"{client.expected}\n\n{SIGNATURE}"
    assert relay.subject == f"Re: [#1] {CUSTOMER_TEXT[client.language][0]}"
    # The customer's thread: her message, then the acknowledgement this reply answers.
    assert relay.msg["In-Reply-To"] == opened.ack.msg["Message-ID"]
    assert relay.msg["References"].split() == [
        f"<{opened.customer_message_id}>",
        str(opened.ack.msg["Message-ID"]),
    ]
    assert relay.msg["Reply-To"] == opened.ack.msg["Reply-To"]  # the customer's, not agent's
    assert "Auto-Submitted" not in relay.msg  # a person wrote it
    expected_files = [(PDF_NAME, "application/pdf", PDF)] if client.rich else []
    assert attachments(relay.msg) == expected_files

    state = show(config_file)
    assert (state["status"], state["owner"]) == ("waiting_customer", AGENT)
    [customer, ack, kept, out] = state["messages"]
    assert (customer["kind"], customer["from"]) == ("customer", ALICE)
    assert (ack["kind"], ack["internal"]) == ("acknowledgement", False)
    assert (kept["kind"], kept["from"], kept["internal"]) == ("agent", AGENT, True)
    assert kept["thread_rule"] == ("references" if client.threading else "reply_token")
    assert [a["filename"] for a in kept["attachments"]] == [n for n, _, _ in expected_files]
    assert (out["kind"], out["internal"], out["from_name"]) == (
        "agent_reply",
        False,
        f"{AGENT_NAME} ({SUPPORT_NAME})",
    )
    assert [a["filename"] for a in out["attachments"]] == [n for n, _, _ in expected_files]
    assert [(e["field"], e["new"], e["actor"], e["via"]) for e in state["events"]] == [
        ("owner", AGENT, AGENT, "mail"),
        ("status", "accepted", AGENT, "mail"),
        ("status", "waiting_customer", AGENT, "mail"),
    ]


def test_in_reply_to_the_agents_own_notification_alone_proves_the_agent(
    daemon: RunningDaemon, outbox: Outbox, config_file: Path
) -> None:
    opened = open_ticket(daemon, outbox)
    # The client ignored Reply-To (the address book won): only In-Reply-To ties it to the
    # notification, a Message-ID that only this agent received.
    raw = client_reply(GMAIL_EN, opened.notification, SUPPORT)
    agent_sends(daemon, raw, SUPPORT)

    [_, relay] = mail_to(outbox, ALICE, 2)
    assert relay.text == f"{GMAIL_EN.expected}\n\n{SIGNATURE}"
    assert_no_trace_of_the_agent(relay)
    kept = show(config_file)["messages"][2]
    assert (kept["kind"], kept["flag"], kept["thread_rule"]) == ("agent", "", "references")


# -- 2. each command --------------------------------------------------------------

GREETING = "Hello Alice,\n\nthe driver on floor 2 is reinstalled; please print a test page."
RESOLVED_PARAGRAPH = (
    "We consider your request resolved. If everything works, reply with the word\n"
    "CONFIRM (or just say thanks); if not, simply reply and tell us what is wrong.\n"
)


def commands_top(*commands: str, text: str = GREETING) -> str:
    """What the agent types above the quote: command lines, their text, a sign-off."""
    lines = "".join(f"{c}\n" for c in commands)
    return f"{lines}{text}\n\nBest regards,\nAgnes\n\n" if text else f"{lines}\n"


Change = tuple[str, str | None, str | None, str]  # field, old, new, via


def agent_events(state: dict[str, Any]) -> list[Change]:
    return [(e["field"], e["old"], e["new"], e["via"]) for e in state["events"]]


@pytest.mark.parametrize(
    ("command", "field", "value"),
    [
        ("#status resolved", "status", "resolved"),
        ("#type bug", "type", "bug"),
        ("#priority critical", "priority", "critical"),
        ("#assign me", "owner", AGENT),
    ],
)
def test_each_command_changes_the_ticket_and_only_the_text_reaches_the_customer(
    daemon: RunningDaemon,
    outbox: Outbox,
    config_file: Path,
    clock: ManualClock,
    command: str,
    field: str,
    value: str,
) -> None:
    opened = open_ticket(daemon, outbox)
    raw = client_reply(GMAIL_EN, opened.notification, opened.reply_to, top=commands_top(command))
    agent_sends(daemon, raw, opened.reply_to)

    [_, relay] = mail_to(outbox, ALICE, 2)
    resolved = RESOLVED_PARAGRAPH if command == "#status resolved" else ""
    assert relay.text == f"{GREETING}\n\n{resolved}{SIGNATURE}"
    assert_no_trace_of_the_agent(relay)
    assert attachments(relay.msg) == [(PDF_NAME, "application/pdf", PDF)]
    if command == "#priority critical":  # every agent hears of it at once
        [_, alert] = mail_to(outbox, AGENT, 2)
        assert alert.subject == "[#1] CRITICAL: Printer broken"

    state = show(config_file)
    assert state[field] == value
    # Who, when and how: the agent, now; by command, and the reply itself (no #status) by
    # mail. The first act also accepts the ticket and makes the agent its owner.
    assert {e["at"] for e in state["events"]} == {views.iso(clock.now())}
    assert {e["actor"] for e in state["events"]} == {AGENT}
    replied: list[Change] = [("status", "accepted", "waiting_customer", "mail")]
    then: dict[str, list[Change]] = {
        "status": [("status", "accepted", "resolved", "command")],
        "type": [("type", None, "bug", "command"), *replied],
        "priority": [("priority", "normal", "critical", "command"), *replied],
        "owner": replied,  # "me" already owns it: no second owner event
    }
    assert agent_events(state) == [
        ("owner", None, AGENT, "command"),
        ("status", "new", "accepted", "command"),
        *then[field],
    ]
    # The agent's mail is kept without the command lines (and internal).
    kept = state["messages"][2]
    assert (kept["kind"], kept["internal"], kept["body_text"]) == (
        "agent",
        True,
        f"{GREETING}",
    )


def test_status_resolved_alone_asks_the_customer_to_confirm_and_the_answer_closes_it(
    daemon: RunningDaemon, outbox: Outbox, config_file: Path
) -> None:
    opened = open_ticket(daemon, outbox, "cs")
    top = commands_top("#status resolved", text="")
    raw = client_reply(OUTLOOK_EN, opened.notification, opened.reply_to, top=top)
    agent_sends(daemon, raw, opened.reply_to)

    [_, notice] = mail_to(outbox, ALICE, 2)
    subject = CUSTOMER_TEXT["cs"][0]
    assert notice.subject == f"[#1] Vyřešeno: {subject}"
    assert "odpovězte slovem POTVRZUJI" in notice.text
    assert notice.msg["From"].addresses[0].display_name == SUPPORT_NAME
    assert_no_trace_of_the_agent(notice)
    assert show(config_file)["status"] == "resolved"

    daemon.send(
        customer_mail(
            "cs",
            message_id=f"<{uuid.uuid4().hex}@customer.test>",
            subject=f"Re: {notice.subject}",
            body="Děkuji, funguje to.\n\nAlice\n\n" + gt_quote(notice.text),
            answering=notice,
            to=str(notice.msg["Reply-To"].addresses[0].addr_spec),
        )
    )
    [*_, closed] = mail_to(outbox, ALICE, 3)
    assert closed.subject == f"[#1] Uzavřeno: {subject}"
    [*_, told] = mail_to(outbox, AGENT, 2)
    assert told.subject == f"[#1] Customer confirmed the resolution: {subject}"
    state = show(config_file)
    assert state["status"] == "closed"
    assert state["events"][-1] == {
        "at": state["events"][-1]["at"],
        "actor": ALICE,
        "field": "status",
        "old": "resolved",
        "new": "closed",
        "via": "mail",
    }


def test_note_stays_internal_even_when_the_agent_repeats_it_later(
    daemon: RunningDaemon, outbox: Outbox, config_file: Path, clock: ManualClock
) -> None:
    opened = open_ticket(daemon, outbox)
    note = "Alice's printer still runs the 2019 driver; our licence for it expired."
    top = commands_top("#note", text=note)
    agent_sends(
        daemon,
        client_reply(OUTLOOK_EN, opened.notification, opened.reply_to, top=top),
        opened.reply_to,
    )
    processed(daemon, 2)

    state = show(config_file)
    kept = state["messages"][-1]
    assert (kept["kind"], kept["internal"], kept["from"], kept["body_text"]) == (
        "note",
        True,
        AGENT,
        note,
    )
    assert [a["filename"] for a in kept["attachments"]] == [PDF_NAME]
    assert [(e["field"], e["new"], e["actor"], e["via"]) for e in state["events"]] == [
        ("owner", AGENT, AGENT, "command"),
        ("status", "accepted", AGENT, "command"),
    ]
    assert [r["kind"] for r in queued_to(config_file, ALICE)] == ["acknowledgement"]
    assert len(mail_to(outbox, ALICE)) == 1

    # Later the agent answers and pastes the note's line into the text by mistake.
    later = f"We are on it.\n{note}\n\nRegards,\nAgnes\n\n"
    raw = client_reply(THUNDERBIRD_EN, opened.notification, opened.reply_to, top=later)
    agent_sends(daemon, raw, opened.reply_to)
    [_, relay] = mail_to(outbox, ALICE, 2)
    assert relay.text == f"We are on it.\n\n{SIGNATURE}"


def test_unknown_command_sends_the_agent_an_error_and_the_customer_nothing(
    daemon: RunningDaemon, outbox: Outbox, config_file: Path
) -> None:
    opened = open_ticket(daemon, outbox)
    top = commands_top("#stauts resolved", "#priority urgent", text="All fixed, bye.")
    raw = client_reply(OUTLOOK_EN, opened.notification, opened.reply_to, top=top)
    agent_sends(daemon, raw, opened.reply_to)

    [_, error] = mail_to(outbox, AGENT, 2)
    assert error.subject == "[#1] Not sent: RE: [#1] New ticket: Printer broken"
    assert "NOT sent to the customer and changed nothing" in error.text
    assert "  - #stauts resolved: unknown command\n" in error.text
    assert "  - #priority urgent: must be one of critical, normal, low\n" in error.text
    assert error.msg["In-Reply-To"] == parse_bytes(raw)["Message-ID"]
    assert [r["kind"] for r in queued_to(config_file, ALICE)] == ["acknowledgement"]
    assert len(mail_to(outbox, ALICE)) == 1
    state = show(config_file)
    assert (state["status"], state["owner"], state["priority"]) == ("new", None, "normal")
    assert state["events"] == []
    assert [m["kind"] for m in state["messages"]] == ["customer", "acknowledgement"]


# -- 3. the forged agent ------------------------------------------------------------

FORGED_BODY = "#status closed\n#assign me\nDone, closing this. Bye.\n\nAgnes\n"


def forged_mail(headers: dict[str, str]) -> bytes:
    msg = EmailMessage()
    msg["From"] = AGENT_FROM
    msg["Date"] = email.utils.format_datetime(email.utils.localtime())
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@forger.test>"
    for name, value in headers.items():
        msg[name] = value
    msg.set_content(FORGED_BODY)
    return msg.as_bytes(policy=email.policy.SMTP)


FORGERIES: dict[str, Callable[[Opened], dict[str, str]]] = {
    # Answers the customer's own message: the Message-ID is no secret from a customer.
    "answers-the-customers-message": lambda o: {
        "To": SUPPORT,
        "Subject": "Re: [#1] Printer broken",
        "In-Reply-To": f"<{o.customer_message_id}>",
        "References": f"<{o.customer_message_id}>",
    },
    # Sent to the customer's signed reply address (her acknowledgement's Reply-To).
    "to-the-customers-reply-token": lambda o: {
        "To": str(o.ack.msg["Reply-To"]),
        "Subject": "Re: [#1] Printer broken",
    },
    # Claims a DKIM/DMARC pass, but not in a header our own MTA wrote.
    "untrusted-authentication-results": lambda o: {
        "Authentication-Results": (
            "mx.evil.test; dkim=pass header.d=example.test; dmarc=pass header.from=example.test"
        ),
        "To": SUPPORT,
        "Subject": "Re: [#1] Printer broken",
        "In-Reply-To": f"<{o.customer_message_id}>",
    },
}


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
def test_forged_agent_is_a_customer_message_and_changes_nothing(
    daemon: RunningDaemon, outbox: Outbox, config_file: Path, forgery: str
) -> None:
    opened = open_ticket(daemon, outbox)
    headers = FORGERIES[forgery](opened)
    daemon.send(
        forged_mail(headers), sender=AGENT, recipients=(headers["To"].split("<")[-1].strip(">"),)
    )

    [_, warning] = mail_to(outbox, AGENT, 2)
    assert warning.subject == "[#1] Unverified mail from an agent address: Printer broken"
    assert "no command in it was run and nothing was relayed" in warning.text
    state = show(config_file)
    assert (state["status"], state["owner"]) == ("new", None)
    assert state["events"] == []
    forged = state["messages"][-1]
    assert (forged["kind"], forged["flag"], forged["from"], forged["internal"]) == (
        "participant",
        "forged-agent",
        AGENT,
        False,
    )
    assert [r["kind"] for r in queued_to(config_file, ALICE)] == ["acknowledgement"]
    assert len(mail_to(outbox, ALICE)) == 1


def test_forged_agent_with_only_the_subject_tag_opens_no_door_to_ticket_1(
    daemon: RunningDaemon, outbox: Outbox, config_file: Path
) -> None:
    open_ticket(daemon, outbox)
    headers = {"To": SUPPORT, "Subject": "Re: [#1] Printer broken"}
    daemon.send(forged_mail(headers), sender=AGENT)

    [_, told] = mail_to(outbox, AGENT, 2)
    assert told.subject.startswith("[#2] ")  # a guessed tag threads nothing: a new ticket
    first = show(config_file, 1)
    assert (first["status"], first["owner"], first["events"]) == ("new", None, [])
    assert len(first["messages"]) == 2
    second = show(config_file, 2)
    [forged] = second["messages"]
    assert (forged["flag"], forged["from"]) == ("forged-agent", AGENT)
    assert second["status"] == "new" and second["events"] == []
    assert [r["kind"] for r in queued_to(config_file, ALICE)] == ["acknowledgement"]
    assert queued_to(config_file, AGENT)[-1]["ticket"] == 2


# -- 4. the paid modification ----------------------------------------------------------

PAID_TEXT = "We can add the export column; it is about four hours of work."


def paid_top() -> str:
    return commands_top(
        "#type modification", "#paid 4 hours, 6 000 CZK", text=f"Hello Alice,\n\n{PAID_TEXT}"
    )


def customer_answer(notice: Sent, language: str, first_line: str) -> bytes:
    """Alice answers the notice from her mail client, quoting it (its words and links too)."""
    q = Quoted.of(notice)
    body = f"{first_line}\n\nAlice\n\n" + gmail_plain(q, language)
    return customer_mail(
        language,
        message_id=f"<{uuid.uuid4().hex}@customer.test>",
        subject=f"Re: {notice.subject}",
        body=body,
        answering=notice,
        to=str(notice.msg["Reply-To"].addresses[0].addr_spec),
    )


def follow(url: str, data: dict[str, str] | None = None) -> str:
    """The customer's browser: GET the link, or POST the page's form."""
    body = urllib.parse.urlencode(data).encode("ascii") if data is not None else None
    with urllib.request.urlopen(url, data=body, timeout=10) as response:  # noqa: S310
        assert response.status == 200
        return str(response.read().decode("utf-8"))


@pytest.mark.parametrize(
    ("language", "answer"),
    [("en", "APPROVE"), ("cs", "SCHVALUJI"), ("en", "link"), ("cs", "link")],
)
def test_paid_modification_waits_for_the_customers_approval(
    daemon: RunningDaemon,
    outbox: Outbox,
    config_file: Path,
    config_values: dict[str, Any],
    language: str,
    answer: str,
) -> None:
    opened = open_ticket(daemon, outbox, language)
    client = OUTLOOK_EN if language == "en" else CLIENTS[1]
    agent_sends(
        daemon,
        client_reply(client, opened.notification, opened.reply_to, top=paid_top()),
        opened.reply_to,
    )

    [_, notice] = mail_to(outbox, ALICE, 2)
    subject = CUSTOMER_TEXT[language][0]
    base = config_values["support"]["base_url"]
    if language == "cs":
        assert notice.subject == f"[#1] Placená úprava: prosíme o schválení — {subject}"
        assert "Cena: 4 hours, 6 000 CZK\n" in notice.text
        assert "nebo odpovězte slovem SCHVALUJI." in notice.text
        approve = notice.text.split("Pro schválení otevřete ")[1].split("\n")[0]
    else:
        assert notice.subject == f"[#1] Paid work: please approve — {subject}"
        assert "Price: 4 hours, 6 000 CZK\n" in notice.text
        assert "or reply with the word APPROVE." in notice.text
        approve = notice.text.split("To approve, open ")[1].split("\n")[0]
    assert f"Hello Alice,\n\n{PAID_TEXT}\n" in notice.text
    assert approve.startswith(f"{base}/paid?token=")
    assert "#paid" not in notice.text and "#type" not in notice.text
    state = show(config_file)
    assert (state["type"], state["paid"], state["status"]) == (
        "modification",
        "pending",
        "waiting_customer",
    )

    if answer == "link":
        page = follow(approve)  # a mail scanner may do this much: it approves nothing
        assert "Approve the paid work — #1" in page
        assert show(config_file)["paid"] == "pending"
        token = urllib.parse.parse_qs(urllib.parse.urlsplit(approve).query)["token"][0]
        assert "Your answer was recorded" in follow(f"{base}/paid", {"token": token})
    else:
        daemon.send(customer_answer(notice, language, answer))

    [*_, told] = mail_to(outbox, AGENT, 2)
    assert told.subject == f"[#1] Customer APPROVED the paid work: {subject}"
    state = show(config_file)
    assert (state["paid"], state["status"]) == ("approved", "accepted")
    via = "web" if answer == "link" else "mail"
    assert [(e["field"], e["new"], e["actor"], e["via"]) for e in state["events"]] == [
        ("owner", AGENT, AGENT, "command"),
        ("status", "accepted", AGENT, "command"),
        ("type", "modification", AGENT, "command"),
        ("paid", "pending", AGENT, "command"),
        ("status", "waiting_customer", AGENT, "command"),
        ("paid", "approved", ALICE, via),
        ("status", "accepted", ALICE, via),
    ]


# -- regressions: bugs these tests found, fixed in maildesk/ while they were written ------


def test_paid_notice_carries_no_trace_of_the_agents_address(
    daemon: RunningDaemon, outbox: Outbox
) -> None:
    opened = open_ticket(daemon, outbox)
    raw = client_reply(OUTLOOK_EN, opened.notification, opened.reply_to, top=paid_top())
    agent_sends(daemon, raw, opened.reply_to)

    [_, notice] = mail_to(outbox, ALICE, 2)
    assert notice.text.endswith(f"\n{AGENT_NAME}, {SUPPORT_NAME}\n")
    assert_no_trace_of_the_agent(notice)


def test_paid_notice_carries_the_agents_attachment(daemon: RunningDaemon, outbox: Outbox) -> None:
    opened = open_ticket(daemon, outbox)
    # The agent attaches the offer the customer is asked to approve.
    raw = client_reply(OUTLOOK_EN, opened.notification, opened.reply_to, top=paid_top())
    agent_sends(daemon, raw, opened.reply_to)

    [_, notice] = mail_to(outbox, ALICE, 2)
    assert "Price: 4 hours, 6 000 CZK" in notice.text
    assert attachments(notice.msg) == [(PDF_NAME, "application/pdf", PDF)]


def test_agent_whose_client_shows_the_address_as_the_name_is_not_revealed(
    daemon: RunningDaemon, outbox: Outbox
) -> None:
    opened = open_ticket(daemon, outbox)
    # Outlook and Apple Mail use the address as the display name when none is set up.
    sender = f'"{AGENT}" <{AGENT}>'
    raw = client_reply(OUTLOOK_EN, opened.notification, opened.reply_to, sender=sender)
    agent_sends(daemon, raw, opened.reply_to)

    [_, relay] = mail_to(outbox, ALICE, 2)
    assert relay.msg["From"].addresses[0].addr_spec == SUPPORT
    assert_no_trace_of_the_agent(relay)


def test_paid_notice_never_repeats_an_internal_note(daemon: RunningDaemon, outbox: Outbox) -> None:
    opened = open_ticket(daemon, outbox)
    note = "Alice's firm is two invoices behind; ask for a deposit first."
    top = commands_top("#note", text=note)
    raw = client_reply(OUTLOOK_EN, opened.notification, opened.reply_to, top=top)
    agent_sends(daemon, raw, opened.reply_to)
    processed(daemon, 2)
    # The relay drops a line repeating a note; the paid-work notice must do the same.
    top = commands_top(
        "#type modification", "#paid 4 hours, 6 000 CZK", text=f"{PAID_TEXT}\n{note}"
    )
    raw = client_reply(OUTLOOK_EN, opened.notification, opened.reply_to, top=top)
    agent_sends(daemon, raw, opened.reply_to)

    [_, notice] = mail_to(outbox, ALICE, 2)
    assert PAID_TEXT in notice.text
    assert "invoices" not in notice.text


def test_note_with_paid_keeps_the_whole_reply_internal(
    daemon: RunningDaemon, outbox: Outbox, config_file: Path
) -> None:
    opened = open_ticket(daemon, outbox)
    secret = "Internal: quote them 6 000 CZK, our cost is 1 500 CZK."
    top = commands_top("#note", "#type modification", "#paid 4 hours, 6 000 CZK", text=secret)
    raw = client_reply(OUTLOOK_EN, opened.notification, opened.reply_to, top=top)
    agent_sends(daemon, raw, opened.reply_to)

    # "#note: the whole reply stays internal" (commands.HELP): the mix is refused.
    [_, error] = mail_to(outbox, AGENT, 2)
    assert error.subject.startswith("[#1] Not sent: ")
    assert [r["kind"] for r in queued_to(config_file, ALICE)] == ["acknowledgement"]
    state = show(config_file)
    assert (state["paid"], state["type"], state["events"]) == (None, None, [])


def test_html_only_reply_from_thunderbird_relays_only_the_new_text(
    daemon: RunningDaemon, outbox: Outbox
) -> None:
    opened = open_ticket(daemon, outbox)
    first = client_reply(GMAIL_EN, opened.notification, opened.reply_to)
    agent_sends(daemon, first, opened.reply_to)  # the agent now owns the ticket
    [_, relay] = mail_to(outbox, ALICE, 2)
    daemon.send(
        customer_mail(
            "en",
            message_id=f"<{uuid.uuid4().hex}@customer.test>",
            subject=f"Re: {relay.subject}",
            body="It still prints blank pages.\n\nAlice\n\n" + gmail_plain(Quoted.of(relay), "en"),
            answering=relay,
            to=str(relay.msg["Reply-To"].addresses[0].addr_spec),
        )
    )
    [_, replied] = mail_to(outbox, AGENT, 2)
    assert f"Owner: {AGENT}" in replied.text

    # Thunderbird's "Send Format: Only Rich Text (HTML)": no text/plain part at all.
    raw = client_reply(THUNDERBIRD_EN, replied, opened.reply_to, html_only=True)
    assert parse_bytes(raw).get_body(("plain",)) is None
    agent_sends(daemon, raw, opened.reply_to)

    [*_, relay] = mail_to(outbox, ALICE, 3)
    assert "Status: Accepted | Type:" not in relay.text  # the quoted notification
    assert_no_trace_of_the_agent(relay)
    assert relay.text == f"{THUNDERBIRD_EN.expected}\n\n{SIGNATURE}"


def eml_attachment(raw: bytes, filename: str) -> MIMEPart:
    """A mail attached as a file (Thunderbird: drag a message in, or Forward As Attachment)."""
    headers = [
        f'Content-Type: message/rfc822; name="{filename}"',
        f'Content-Disposition: attachment; filename="{filename}"',
    ]
    return parse_part(("\r\n".join(headers) + "\r\n\r\n").encode("ascii") + raw)


def test_agent_reply_with_a_mail_attached_reaches_the_customer(
    daemon: RunningDaemon, outbox: Outbox
) -> None:
    opened = open_ticket(daemon, outbox)
    vendor = EmailMessage()
    vendor["From"] = "Printer Vendor <service@vendor.test>"
    vendor["To"] = SUPPORT
    vendor["Subject"] = "Driver 4.2 released"
    vendor["Message-ID"] = "<driver42@vendor.test>"
    vendor.set_content("Driver 4.2 fixes blank pages on the LaserJet 4.\n")
    extra = eml_attachment(vendor.as_bytes(policy=email.policy.SMTP), "Driver 4.2 released.eml")
    raw = client_reply(THUNDERBIRD_EN, opened.notification, opened.reply_to, extra=extra)
    agent_sends(daemon, raw, opened.reply_to)

    [_, row] = processed_or_failed(daemon, 2)
    assert row.error == "", row.error.strip().splitlines()[-1]
    [_, relay] = mail_to(outbox, ALICE, 2)
    assert relay.text == f"{THUNDERBIRD_EN.expected}\n\n{SIGNATURE}"
    assert_no_trace_of_the_agent(relay)
    [pdf, eml] = attachments(relay.msg)
    assert pdf == (PDF_NAME, "application/pdf", PDF)
    assert eml[:2] == ("Driver 4.2 released.eml", "application/octet-stream")
    assert b"Driver 4.2 fixes blank pages on the LaserJet 4." in eml[2]


def test_customer_mail_with_a_mail_attached_reaches_the_agent(
    daemon: RunningDaemon, outbox: Outbox
) -> None:
    msg = EmailMessage()
    msg["From"] = ALICE_FROM
    msg["To"] = SUPPORT
    msg["Subject"] = "Fwd: phishing?"
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@customer.test>"
    msg["Date"] = email.utils.format_datetime(email.utils.localtime())
    msg.set_content("Is the attached mail really from you?\n\nAlice\n")
    suspicious = EmailMessage()
    suspicious["From"] = "Support <support@examp1e.test>"
    suspicious["Subject"] = "Your password expires"
    suspicious.set_content("Click here.\n")
    msg.add_attachment(suspicious)  # message/rfc822, as every client forwards "as attachment"
    daemon.send(msg.as_bytes(policy=email.policy.SMTP))

    [row] = processed_or_failed(daemon, 1)
    assert row.error == "", row.error.strip().splitlines()[-1]
    [notification] = mail_to(outbox, AGENT)
    assert "Is the attached mail really from you?" in notification.text
    [(filename, ctype, data)] = attachments(notification.msg)
    assert filename is not None and filename.endswith(".eml")
    assert (ctype, b"Subject: Your password expires" in data) == ("application/octet-stream", True)
    assert len(mail_to(outbox, ALICE)) == 1  # and she is acknowledged
