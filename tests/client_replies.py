"""Four real mail clients answering a notification: Outlook, Gmail, Apple Mail, Thunderbird.

Each in Czech and English, as the client composes it: the text bodies of
tests/data/mail/reply-*.txt (the writer's text and signature) with the client's own
quote of the real notification below them, each client's HTML part, threading
headers (Outlook's Thread-Index too) and attachment encoding, kept as they are on
the wire. tests/mailclient.py has the people and the outbox they read.
"""

from __future__ import annotations

import base64
import email
import email.policy
import email.utils
import html
import textwrap
import urllib.parse
import uuid
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage, MIMEPart
from email.parser import BytesParser

from tests.conftest import DATA, RunningDaemon
from tests.mailclient import AGENT, AGENT_FROM, AGENT_NAME, SUPPORT_NAME, Sent

# A small PDF-like blob (binary bytes included) and a Czech file name with an en dash.
PDF = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n%%EOF\n"
PDF_NAME = "Návod k tiskárně – č. 2.pdf"

# Header lines of the attachment parts below are written as each client writes them:
# keep them exactly as they are on the wire.
WIRE = email.policy.SMTP.clone(refold_source="none")

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


def eml_attachment(raw: bytes, filename: str) -> MIMEPart:
    """A mail attached as a file (Thunderbird: drag a message in, or Forward As Attachment)."""
    headers = [
        f'Content-Type: message/rfc822; name="{filename}"',
        f'Content-Disposition: attachment; filename="{filename}"',
    ]
    return parse_part(("\r\n".join(headers) + "\r\n\r\n").encode("ascii") + raw)


# What an agent types above the quote when answering with commands.
GREETING = "Hello Alice,\n\nthe driver on floor 2 is reinstalled; please print a test page."


def commands_top(*commands: str, text: str = GREETING) -> str:
    """What the agent types above the quote: command lines, their text, a sign-off."""
    lines = "".join(f"{c}\n" for c in commands)
    return f"{lines}{text}\n\nBest regards,\nAgnes\n\n" if text else f"{lines}\n"
