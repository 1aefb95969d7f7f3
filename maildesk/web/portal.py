"""The customer portal: which tickets a person sees, which messages, and the web reply.

A person sees the tickets they take part in (as requester or in Cc) and, once
an admin created the organization of their e-mail domain, every ticket a
colleague of that domain requested; free-mail domains never group people.
Anything else is 404, exactly like a number that does not exist. A ticket
shows only public messages: never internal notes, agent mail, bounces or
messages held for a second look.

A web reply is not written to the ticket here: it becomes an RFC 5322 message
from the customer to the support address, answering the ticket's last public
message, and enters the inbound store like any e-mail. The pipeline threads
it, moves the status and notifies agents exactly as for mail; the daemon's
sweep picks it up within seconds. One account may post `[limits]
portal_replies_per_hour` of them in any hour (`ratelimit.py`); past it the
page answers 429 and gives the text back.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from aiohttp import web
from sqlalchemy import func, select
from sqlalchemy.orm import Session, defer

from maildesk.accounts import redact_links
from maildesk.clock import as_utc, new_token
from maildesk.inbound import rawbytes
from maildesk.inbound.room import NoRoom
from maildesk.inbound.store import Envelope
from maildesk.message import clean_text
from maildesk.models import STATUS_LABELS, Attachment, Blob, Message, Person, Ticket
from maildesk.outbound.compose import Address, HeaderError, OutgoingMail, compose
from maildesk.outbound.headers import is_valid_msg_id
from maildesk.redaction import LINK_SLACK, redact_head
from maildesk.states import TicketStatus
from maildesk.tickets.lifecycle import OPEN_STATUSES
from maildesk.tickets.search import search
from maildesk.tickets.visibility import PUBLIC, Scope
from maildesk.web.pages import (
    Form,
    Viewer,
    client_ip,
    in_db,
    language,
    protected,
    render,
    see_other,
    site,
    too_many,
)
from maildesk.web.pages import viewer as current_viewer

if TYPE_CHECKING:
    from maildesk.services import Services

log = logging.getLogger("maildesk.web")

SHOW = {
    "all": None,
    "open": OPEN_STATUSES,
    "closed": (TicketStatus.RESOLVED, TicketStatus.CLOSED),
}
TYPE_LABELS = {
    "cs": {"modification": "Úprava", "bug": "Chyba", "consultation": "Konzultace"},
    "en": {"modification": "Modification", "bug": "Bug", "consultation": "Consultation"},
}
MAX_REPLY_CHARS = 100_000
# What one ticket's page shows: its newest messages, and of each the first characters.
# The page is rendered on serve's event loop, beside SMTP: a 20 MB mail shown whole,
# and reloaded by its sender, held the loop about 150 ms a load.
MAX_SHOWN_MESSAGES = 200
MAX_SHOWN_CHARS = 100_000
# And of all of them together, newest first: 200 messages of 100,000 `"` each (anyone
# who mails in has an account, and may fill her own ticket) made each load of the page
# 100 MB of HTML, rendered on that loop (1.2 s) and held in memory until sent. Names of
# attachments count too, each with `LISTED_FILE_CHARS` for its link: 500 parts a mail,
# each named with 255 `"`, were as much.
MAX_PAGE_CHARS = 500_000
LISTED_FILE_CHARS = 100
MAX_LISTED = 500
# Characters of a subject a list (and the search's results) shows: a subject is stored
# whole, up to one header field (32 KB), and 500 of them made a list of up to 80 MB of
# HTML a load. A ticket's own page names it whole.
MAX_LISTED_SUBJECT = 200
MAX_FOUND = 50
MAX_QUERY_CHARS = 200
# Attachments are always downloaded; only these types keep their own Content-Type.
_SAFE_TYPES = {"application/pdf", "image/png", "image/jpeg", "image/gif", "text/plain"}


def scope_of(session: Session, request: web.Request, who: Viewer) -> Scope:
    person = session.get(Person, who.id)
    org = site(request).services.accounts(session).organization_of(person) if person else None
    return Scope(who.id, org.domain if org else None)


def when(moment: datetime | None) -> str:
    return as_utc(moment).astimezone().strftime("%Y-%m-%d %H:%M") if moment else ""


async def _login_first(request: web.Request) -> web.Response:
    return see_other(request, "/login?next=" + quote(request.path_qs, safe=""))


def _not_found(request: web.Request, who: Viewer) -> web.Response:
    return render(request, "not_found", {}, who=who, status=404)


async def home(request: web.Request) -> web.StreamResponse:
    return see_other(request, "/tickets")


# -- the list ------------------------------------------------------------------------


async def ticket_list(request: web.Request) -> web.StreamResponse:
    who = await current_viewer(request)
    if who is None:
        return await _login_first(request)
    lang = language(request, who.language)
    show = request.query.get("show", "all")
    show = show if show in SHOW else "all"
    creator = request.query.get("creator", "").strip().lower()
    query_text = request.query.get("q", "").strip()[:MAX_QUERY_CHARS]
    if query_text:
        guard, ip = site(request).limits.search, client_ip(request)
        if wait := guard.blocked(ip, who.email):
            return too_many(request, wait, who)
        guard.hit(ip, who.email)

    def load() -> dict[str, Any]:
        with site(request).services.db.reading() as session:
            scope = scope_of(session, request, who)
            if query_text:
                return {"tickets": _found(session, scope, query_text, lang), "creators": []}
            visible = Ticket.id.in_(scope.ticket_ids())
            creators: list[dict[str, str]] = []
            if scope.org_domain is not None:
                people = session.execute(
                    select(Person.email, Person.name)
                    .where(Person.id.in_(scope.colleagues()))
                    # Requesters of tickets the viewer sees: a hidden one's requester
                    # is a stranger's word (a forged colleague, a phishing name).
                    .where(Person.id.in_(select(Ticket.requester_id).where(visible)))
                    .order_by(Person.email)
                )
                creators = [{"email": e, "name": n} for e, n in people]
            chosen = creator if creator in {c["email"] for c in creators} else ""
            # Of the viewer's tickets only, each read by its own messages: grouping every
            # public message of the desk, and testing every ticket against the viewer, cost
            # each load 75 ms of CPU at 100,000 messages, growing with the history.
            last = (
                select(func.max(Message.created_at))
                .where(Message.ticket_id == Ticket.id, PUBLIC)
                .scalar_subquery()
            )
            activity = func.coalesce(last, Ticket.created_at)
            head = func.substr(Ticket.subject, 1, MAX_LISTED_SUBJECT + 1)
            query = (
                select(Ticket, activity, head)
                .options(defer(Ticket.subject))
                .where(visible)
                .order_by(activity.desc(), Ticket.id.desc())
                .limit(MAX_LISTED)
            )
            if statuses := SHOW[show]:
                query = query.where(Ticket.status.in_(statuses))
            if chosen:
                query = query.join(Person, Person.id == Ticket.requester_id).where(
                    Person.email == chosen
                )
            rows = [
                {
                    "number": t.id,
                    "subject": listed(subject),
                    "type": TYPE_LABELS[lang].get(t.type or "", ""),
                    "status": t.status,
                    "status_label": STATUS_LABELS[lang][t.status],
                    "creator": t.requester.email,
                    "last_activity": when(at),
                }
                for t, at, subject in session.execute(query)
            ]
            return {"tickets": rows, "creators": creators, "creator": chosen}

    context = await in_db(load)
    context.setdefault("creator", "")
    return render(
        request, "tickets", {**context, "show": show, "q": query_text}, who=who, lang=lang
    )


def listed(subject: str | None) -> str:
    """A subject as a list shows it: its first `MAX_LISTED_SUBJECT` characters."""
    subject = subject or ""
    cut = len(subject) > MAX_LISTED_SUBJECT
    return subject[:MAX_LISTED_SUBJECT] + "…" if cut else subject


def _found(session: Session, scope: Scope, words: str, lang: str) -> list[dict[str, Any]]:
    """The search box: this person's tickets whose public messages hold the words."""
    return [
        {
            "number": hit.ticket.id,
            "subject": listed(hit.ticket.subject),
            "type": TYPE_LABELS[lang].get(hit.ticket.type or "", ""),
            "status": hit.ticket.status,
            "status_label": STATUS_LABELS[lang][hit.ticket.status],
            "creator": hit.ticket.requester.email,
            "last_activity": when(hit.ticket.updated_at),
            "snippet": redact_links(hit.snippet),
        }
        for hit in search(session, words, MAX_FOUND, person=scope)
    ]


# -- one ticket ----------------------------------------------------------------------


def _row_id(text: str) -> int | None:
    """A ticket or attachment number from a path: ASCII digits that fit the database's
    integer (a longer one is a server error on SQLite, not a 404)."""
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 12 else None


def _visible_ticket(session: Session, request: web.Request, who: Viewer) -> Ticket | None:
    number = _row_id(request.match_info["number"])
    if number is None:
        return None
    scope = scope_of(session, request, who)
    return session.scalar(select(Ticket).where(Ticket.id == number, scope.condition()))


def _shown_messages(
    session: Session, ticket_id: int, support_name: str
) -> tuple[list[dict[str, Any]], int]:
    """A ticket's public messages as its page shows them, oldest first, and how many
    earlier ones it leaves out. The newest are shown until `MAX_PAGE_CHARS` are (text,
    and the names of attachments), each text at most `MAX_SHOWN_CHARS`; the last one
    shown may be cut to what is left. Of a longer text the database hands over only its
    head (and `LINK_SLACK` more, so a link the cut crosses is still recognized and
    removed)."""
    public = (Message.ticket_id == ticket_id, PUBLIC)
    total = session.scalar(select(func.count()).select_from(Message).where(*public)) or 0
    newest = session.execute(
        select(
            Message.id,
            Message.direction,
            Message.from_name,
            Message.from_addr,
            Message.created_at,
            func.length(Message.body_text).label("length"),
        )
        .where(*public)
        .order_by(Message.id.desc())
        .limit(MAX_SHOWN_MESSAGES)
    ).all()
    listing = _listing_chars(session, [row.id for row in newest])
    shown: dict[int, int] = {}  # message id: how many of its characters are shown
    left = MAX_PAGE_CHARS
    for row in newest:
        names = listing.get(row.id, 0)
        if shown and (left <= 0 or names > left):  # the newest is always shown
            break
        left -= names
        shown[row.id] = min(row.length or 0, MAX_SHOWN_CHARS, max(left, 0))
        left -= shown[row.id]
    rows = [row for row in newest if row.id in shown][::-1]
    heads: dict[int, str] = {}
    files: dict[int, list[dict[str, Any]]] = {row.id: [] for row in rows}
    if shown:
        # A message shown whole is read whole; only the one cut is read past its share.
        head = func.substr(Message.body_text, 1, MAX_SHOWN_CHARS + LINK_SLACK)
        found = session.execute(select(Message.id, head).where(Message.id.in_(list(shown))))
        heads = {pk: text for pk, text in found}
        for attachment in session.execute(
            select(Attachment.id, Attachment.message_pk, Attachment.filename, Attachment.size)
            .where(Attachment.message_pk.in_(list(files)))
            .order_by(Attachment.id)
        ):
            files[attachment.message_pk].append(
                {"id": attachment.id, "filename": attachment.filename, "size": attachment.size}
            )
    thread = [
        {
            "ours": row.direction == "out",
            "from": (row.from_name or row.from_addr) if row.direction == "in" else support_name,
            "at": when(row.created_at),
            "text": redact_head(heads.get(row.id) or "", shown[row.id]),
            # Characters left out of a long text (0: shown whole).
            "cut": max((row.length or 0) - shown[row.id], 0),
            "attachments": files[row.id],
        }
        for row in rows
    ]
    return thread, total - len(rows)


def _listing_chars(session: Session, message_ids: list[int]) -> dict[int, int]:
    """What listing its attachments adds to a page, per message that has any."""
    if not message_ids:
        return {}
    found = session.execute(
        select(
            Attachment.message_pk,
            func.count() * LISTED_FILE_CHARS + func.sum(func.length(Attachment.filename)),
        )
        .where(Attachment.message_pk.in_(message_ids))
        .group_by(Attachment.message_pk)
    )
    return {pk: int(chars or 0) for pk, chars in found}


async def ticket_page(request: web.Request) -> web.StreamResponse:
    who = await current_viewer(request)
    if who is None:
        return await _login_first(request)
    return await _ticket_view(request, who, {"sent": request.query.get("sent") == "1"})


async def _ticket_view(
    request: web.Request, who: Viewer, extra: dict[str, Any], status: int = 200
) -> web.StreamResponse:
    """The ticket's page, with `extra` in its context (a notice, a reply kept)."""
    lang = language(request, who.language)
    support = site(request).services.settings.support

    def load() -> dict[str, Any] | None:
        with site(request).services.db.reading() as session:
            ticket = _visible_ticket(session, request, who)
            if ticket is None:
                return None
            thread, earlier = _shown_messages(session, ticket.id, support.name)
            return {
                "ticket": {
                    "number": ticket.id,
                    "subject": ticket.subject,
                    "status_label": STATUS_LABELS[lang][ticket.status],
                    "type": TYPE_LABELS[lang].get(ticket.type or "", ""),
                    "creator": ticket.requester.email,
                },
                "messages": thread,
                "earlier": earlier,
            }

    context = await in_db(load)
    if context is None:
        return _not_found(request, who)
    context["max_chars"] = MAX_REPLY_CHARS
    context["sent"] = False
    return render(request, "ticket", {**context, **extra}, who=who, lang=lang, status=status)


async def attachment(request: web.Request) -> web.StreamResponse:
    who = await current_viewer(request)
    if who is None:
        return await _login_first(request)
    db = site(request).services.db

    def load() -> tuple[str, str, str, int] | None:
        with db.reading() as session:
            ticket = _visible_ticket(session, request, who)
            attachment = _row_id(request.match_info["attachment"])
            if ticket is None or attachment is None:
                return None
            found = session.execute(
                select(Attachment.filename, Attachment.content_type, Blob.sha256, Blob.size)
                .join(Message, Message.id == Attachment.message_pk)
                .join(Blob, Blob.sha256 == Attachment.blob_sha256)
                .where(
                    Attachment.id == attachment,
                    Message.ticket_id == ticket.id,
                    PUBLIC,
                )
            ).first()
            return (found[0], found[1], found[2], found[3]) if found else None

    found = await in_db(load)
    if found is None:
        return _not_found(request, who)
    filename, content_type, sha256, size = found
    kind = content_type.lower() if content_type.lower() in _SAFE_TYPES else ""
    response = web.StreamResponse(
        headers={
            "Content-Disposition": content_disposition(filename),
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "sandbox",
            "Cache-Control": "private, no-store",
            "Referrer-Policy": "no-referrer",
        },
    )
    response.content_type = kind or "application/octet-stream"
    response.content_length = size
    await response.prepare(request)
    # A slice at a time, each read in a short transaction of its own, each written
    # before the next is read: serve, which also takes the mail, holds one slice per
    # download, however large the attachment and however many download it at once.
    for start in range(0, size, rawbytes.SLICE):

        def piece(start: int = start) -> bytes | None:
            with db.reading_connection() as connection:
                return rawbytes.read_blob_slice(connection, sha256, start, rawbytes.SLICE)

        data = await in_db(piece)
        if not data or len(data) != min(rawbytes.SLICE, size - start):
            # Purged meanwhile: the client sees a download cut short, never other bytes.
            log.warning("attachment %s went while being downloaded", sha256[:12])
            if request.transport is not None:
                request.transport.close()
            return response
        await response.write(data)
    await response.write_eof()
    return response


def content_disposition(filename: str) -> str:
    """`attachment` with an ASCII fallback name and the exact UTF-8 name (RFC 6266)."""
    name = clean_text(filename) or "attachment"
    fallback = re.sub(r"[^A-Za-z0-9._ -]", "_", name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


# -- the reply -----------------------------------------------------------------------


def _portal_mail(
    services: Services, who: Viewer, number: int, subject: str, last: str | None, text: str
) -> bytes:
    """A portal reply as the mail the pipeline reads: composed by the outbound composer,
    like all our mail, and never by the stdlib's writer, which on this Python turns an
    encoded word in a value into a real line break (CVE-2024-6923). The ticket's
    subject is a stranger's text: with it, a forged ticket's subject once wrote a Cc
    into the customer's own reply, and the Cc became a participant of her ticket."""
    support = services.settings.support
    answering = last if last and is_valid_msg_id(last) else None
    mail = OutgoingMail(
        message_id=f"web.{new_token(16)}@{support.domain}",
        sender=Address(who.email, who.name),
        to=(Address(support.address, support.name),),
        subject=f"Re: [{support.tag_prefix}{number}] {subject}",
        text=text,
        date=services.clock.now(),
        in_reply_to=answering,
        references=(answering,) if answering else (),
    )
    try:
        return compose(mail)
    except HeaderError:
        # A name no header can carry: the address alone, as a client would send it.
        return compose(dataclasses.replace(mail, sender=Address(who.email, "")))


@protected
async def reply(request: web.Request, form: Form) -> web.StreamResponse:
    who = await current_viewer(request)
    if who is None:
        return await _login_first(request)
    text = str(form.get("text", "")).replace("\r\n", "\n").replace("\r", "\n")
    services = site(request).services

    def load() -> tuple[int, str, str | None] | None:
        # A read: a write transaction here took SQLite's one write lock for every POST,
        # even one refused (empty, over the limit), and the mail's writes waited.
        with services.db.reading() as session:
            ticket = _visible_ticket(session, request, who)
            if ticket is None:
                return None
            last = session.scalar(
                select(Message.message_id)
                .where(Message.ticket_id == ticket.id, PUBLIC)
                .order_by(Message.id.desc())
                .limit(1)
            )
            return ticket.id, ticket.subject, last

    found = await in_db(load)
    if found is None:
        return _not_found(request, who)
    number, subject, last = found
    if not text.strip() or len(text) > MAX_REPLY_CHARS:
        return see_other(request, f"/tickets/{number}")
    # Per account: each reply is a stored mail and notices to agents, and a script (or
    # a stolen session) posted thousands. Counted before the store, given back if it fails.
    limit, account = site(request).limits.replies, str(who.id)
    if limit is not None:
        if wait := limit.retry_after(account):
            log.info("portal replies of person %d over the hourly limit", who.id)
            limited = {"unsent": text, "wait_minutes": -(-wait // 60)}
            page = await _ticket_view(request, who, limited, status=429)
            page.headers["Retry-After"] = str(wait)
            return page
        limit.hit(account)
    response = await _store_reply(request, who, number, subject, last, text)
    if limit is not None and response.status != 303:
        limit.refund(account)  # not stored: the text went back to be sent again
    return response


async def _store_reply(
    request: web.Request, who: Viewer, number: int, subject: str, last: str | None, text: str
) -> web.StreamResponse:
    services = site(request).services
    try:
        raw = _portal_mail(services, who, number, subject, last, text)
    except HeaderError as exc:
        # Our own stored values (the customer's address) that no mail can carry.
        log.error("a portal reply to ticket %d cannot be written as mail: %s", number, exc)
        return await _ticket_view(request, who, {"unsent": text}, status=500)
    # The ticket's signed reply address: the portal already checked this customer may
    # write here, and the token is what proves it to the pipeline (README "Trust").
    reply_address = services.notifier.tokens.address(number)
    envelope = Envelope(source="web", mail_from=who.email, rcpt_to=(reply_address,))
    try:
        await in_db(lambda: services.store.put(raw, envelope))
    except NoRoom as exc:
        # The disk is down to its reserve (inbound/room.py): nothing is stored, and the
        # customer gets their text back to send again later.
        log.warning("a portal reply to ticket %d was not stored: %s", number, exc)
        return await _ticket_view(request, who, {"unsent": text}, status=503)
    return see_other(request, f"/tickets/{number}?sent=1")
