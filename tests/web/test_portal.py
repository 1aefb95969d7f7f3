"""The portal over real HTTP: whose tickets, which messages, attachments, the web reply."""

from __future__ import annotations

import email.policy
import email.utils
import hashlib
import json
import random
import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import insert, select, text

from maildesk.cli import main
from maildesk.clock import ManualClock
from maildesk.inbound import rawbytes
from maildesk.inbound.room import Room
from maildesk.models import Inbound, Message, Participant, Person, Ticket
from maildesk.tickets.service import NewMessage, Tickets
from maildesk.web import portal
from tests.conftest import PG_URL, Outbox, RunningDaemon, make_mail, wait_for
from tests.helpers import outbox_mail, outbox_rows, sqlite_plans, ticket, tickets
from tests.web.portal_client import Client, base_url, customer, invitation, logged_in

AGENT = "agent@example.test"
ALICE = "alice@customer.test"


@pytest.fixture
def config_values(config_values: dict[str, Any], request: pytest.FixtureRequest) -> dict[str, Any]:
    config_values["agents"]["addresses"] = [AGENT]
    config_values["limits"].update(getattr(request, "param", {}))
    config_values["support"]["base_url"] = f"http://127.0.0.1:{config_values['web']['port']}"
    return config_values


def mail_in(daemon: RunningDaemon, sender: str, subject: str, **headers: str) -> int:
    """`sender` writes to support; returns the new ticket's number."""
    known = len(tickets(daemon.services))
    daemon.send(make_mail(subject=subject, sender=sender, **headers), sender=sender)
    found = wait_for(lambda: tickets(daemon.services)[known:], what=f"ticket {subject!r}")
    return int(found[0]["number"])


def answers_our_mail(daemon: RunningDaemon, sender: str, number: int) -> None:
    """`sender` replies to our acknowledgement of ticket `number`: that proves the ticket
    theirs (only they received it), and colleagues of their organization see it."""
    ack = next(r for r in outbox_rows(daemon.services) if r.ticket_id == number)
    mail = outbox_mail(ack)
    address = mail["Reply-To"].addresses[0].addr_spec
    reply = make_mail(subject=f"Re: {mail['Subject']}", sender=sender, to=address,
                      body="Any news?", In_Reply_To=mail["Message-ID"])  # fmt: skip
    daemon.send(reply, sender=sender, recipients=(address,))
    wait_for(lambda: any(m["body_text"].startswith("Any news?")
                         for m in ticket(daemon.services, number)["messages"]),
             what="the reply in the ticket")  # fmt: skip


def set_status(daemon: RunningDaemon, number: int, status: str) -> None:
    with daemon.services.db.transaction() as session:
        found = session.get(Ticket, number)
        assert found is not None
        found.status = status


def agent_mail(daemon: RunningDaemon, outbox: Outbox, number: int, text: str) -> None:
    """The agent answers the ticket's notification from their mail client."""
    notification = wait_for(
        lambda: next(
            (
                m
                for m in outbox.messages()
                if AGENT in str(m["To"]) and f"[#{number}]" in m["Subject"]
            ),
            None,
        ),
        what="the agent's notification",
    )
    reply_to = notification["Reply-To"].addresses[0].addr_spec
    msg = EmailMessage()
    msg["From"] = f"Agnes Agent <{AGENT}>"
    msg["To"] = reply_to
    msg["Subject"] = f"Re: {notification['Subject']}"
    msg["Date"] = email.utils.format_datetime(email.utils.localtime())
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@example.test>"
    msg["In-Reply-To"] = notification["Message-ID"]
    msg.set_content(text)
    before = len(ticket(daemon.services, number)["messages"])
    daemon.send(msg.as_bytes(policy=email.policy.SMTP), sender=AGENT, recipients=(reply_to,))
    wait_for(
        lambda: len(ticket(daemon.services, number)["messages"]) > before, what="the agent's mail"
    )


def test_the_list_filters_by_state_in_the_customers_language(daemon: RunningDaemon) -> None:
    first = mail_in(daemon, ALICE, "Printer broken")
    second = mail_in(daemon, ALICE, "Invoice question")
    third = mail_in(daemon, ALICE, "Old request")
    mail_in(daemon, "mallory@other.test", "Mallory's secret")
    tagged = mail_in(daemon, ALICE, "<script>alert(1)</script> in the subject")
    set_status(daemon, second, "waiting_customer")
    set_status(daemon, third, "resolved")
    customer(daemon.services, ALICE)
    alice = logged_in(daemon, ALICE)

    page = alice.get("/tickets")
    assert page.status == 200
    for number in (first, second, third):
        assert f'href="/tickets/{number}"' in page.text
    assert "Mallory" not in page.text
    assert "Waiting for your reply" in page.text and "Resolved, waiting" in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text and "<script>" not in page.text
    assert "<script>" not in alice.get(f"/tickets/{tagged}").text

    open_page = alice.get("/tickets?show=open").text
    assert f"/tickets/{first}" in open_page and f"/tickets/{second}" in open_page
    assert f"/tickets/{third}" not in open_page
    closed_page = alice.get("/tickets?show=closed").text
    assert f"/tickets/{third}" in closed_page and f"/tickets/{first}" not in closed_page

    alice.get("/account/language")
    alice.post("/account/language", {"language": "cs"})
    czech = alice.get("/tickets?show=open").text
    assert "Čeká na reakci klienta" in czech and "Otevřené nebo čekající" in czech


def test_another_customers_ticket_is_not_found(daemon: RunningDaemon) -> None:
    mine = mail_in(daemon, ALICE, "Printer broken")
    theirs = mail_in(daemon, "mallory@other.test", "Mallory's secret")
    customer(daemon.services, ALICE)
    alice = logged_in(daemon, ALICE)

    assert alice.get(f"/tickets/{mine}").status == 200
    refused = alice.get(f"/tickets/{theirs}")
    missing = alice.get("/tickets/9999")
    assert (refused.status, refused.text) == (missing.status, missing.text)
    assert refused.status == 404 and "Mallory" not in refused.text
    assert alice.get("/tickets/not-a-number").status == 404

    alice.get(f"/tickets/{mine}")
    assert alice.post(f"/tickets/{theirs}/reply", {"text": "let me in"}).status == 404
    with daemon.services.db.transaction() as session:
        assert session.scalar(select(Inbound).where(Inbound.source == "web")) is None


def test_internal_notes_and_agent_mail_never_show(daemon: RunningDaemon, outbox: Outbox) -> None:
    number = mail_in(daemon, ALICE, "Printer broken")
    agent_mail(daemon, outbox, number, "#note\nThe customer's licence expired in 2019.")
    agent_mail(daemon, outbox, number, "#status waiting_customer\nPlease restart the printer.")
    customer(daemon.services, ALICE)
    page = logged_in(daemon, ALICE).get(f"/tickets/{number}")

    assert page.status == 200
    assert "The printer on floor 2 prints only blank pages." in page.text  # her own mail
    assert "Please restart the printer." in page.text  # the relayed answer
    assert "licence expired" not in page.text
    assert "#status" not in page.text and "#note" not in page.text
    assert "Waiting for your reply" in page.text


def test_attachments_download_only_for_those_who_see_the_ticket(daemon: RunningDaemon) -> None:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = ALICE, "support@example.test", "Screenshot"
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@customer.test>"
    msg.set_content("See the attached page.")
    page_html = b"<html><script>alert(1)</script></html>"
    msg.add_attachment(page_html, maintype="text", subtype="html", filename="výpis <1>.html")
    daemon.send(msg.as_bytes(policy=email.policy.SMTP))
    number = int(wait_for(lambda: tickets(daemon.services), what="ticket")[0]["number"])
    customer(daemon.services, ALICE)
    customer(daemon.services, "mallory@other.test")

    page = logged_in(daemon, ALICE).get(f"/tickets/{number}")
    start = page.text.index(f"/tickets/{number}/attachments/")
    link = page.text[start : page.text.index('"', start)]
    status, body, headers = logged_in(daemon, ALICE).get_bytes(link)
    assert (status, body) == (200, page_html)
    assert headers["Content-Type"].startswith("application/octet-stream")  # never rendered
    assert headers["Content-Disposition"].startswith("attachment;")
    assert "filename*=UTF-8''v%C3%BDpis%20%3C1%3E.html" in headers["Content-Disposition"]
    assert headers["X-Content-Type-Options"] == "nosniff"

    status, body, _ = logged_in(daemon, "mallory@other.test").get_bytes(link)
    assert status == 404 and page_html not in body
    assert Client(base_url(daemon)).get(link).status == 303  # to the login page


def test_a_large_attachment_downloads_whole_a_slice_at_a_time(daemon: RunningDaemon) -> None:
    """Served in slices, each read on its own: several downloads at once of content
    that is no whole number of slices all arrive byte for byte, with its length."""
    content = random.Random(3).randbytes(2 * rawbytes.SLICE + 12_345)
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = ALICE, "support@example.test", "Log files"
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@customer.test>"
    msg.set_content("The logs are attached.")
    msg.add_attachment(content, maintype="application", subtype="gzip", filename="logs.gz")
    daemon.send(msg.as_bytes(policy=email.policy.SMTP))
    number = int(wait_for(lambda: tickets(daemon.services), what="ticket")[0]["number"])
    customer(daemon.services, ALICE)
    alice = logged_in(daemon, ALICE)
    page = alice.get(f"/tickets/{number}").text
    start = page.index(f"/tickets/{number}/attachments/")
    link = page[start : page.index('"', start)]

    with ThreadPoolExecutor(4) as pool:
        downloads = list(pool.map(lambda _: alice.get_bytes(link), range(4)))
    for status, body, headers in downloads:
        assert status == 200 and body == content
        assert headers["Content-Length"] == str(len(content))
        assert headers["Content-Type"] == "application/octet-stream"
    with daemon.services.db.reading_connection() as connection:
        sha = hashlib.sha256(content).hexdigest()
        assert rawbytes.read_blob_slice(connection, sha, len(content) - 5, 100) == content[-5:]
        assert rawbytes.read_blob_slice(connection, "0" * 64, 0, 100) is None


def other_customers_history(daemon: RunningDaemon, count: int = 3000) -> None:
    """`count` tickets of other customers, two messages each, written as the desk's
    history and analysed by SQLite."""
    services = daemon.services
    at = services.clock.now() - timedelta(days=30)
    with services.db.transaction() as session:
        first = session.scalar(select(Person.id).order_by(Person.id.desc()).limit(1)) or 0
        last = session.scalar(select(Ticket.id).order_by(Ticket.id.desc()).limit(1)) or 0
        people = [first + 1 + n for n in range(count // 10)]
        session.execute(insert(Person), [
            {"id": p, "email": f"c{p}@history.test", "name": "", "created_at": at}
            for p in people
        ])  # fmt: skip
        numbers = range(last + 1, last + 1 + count)
        session.execute(insert(Ticket), [
            {"id": n, "subject": f"Old {n}", "requester_id": people[n % len(people)],
             "created_at": at, "updated_at": at, "language": "en"}
            for n in numbers
        ])  # fmt: skip
        session.execute(insert(Participant), [
            {"ticket_id": n, "person_id": people[n % len(people)], "role": "requester"}
            for n in numbers
        ])  # fmt: skip
        session.execute(insert(Message), [
            {"ticket_id": n, "message_id": f"<{n}.{k}@history.test>", "direction": "in",
             "kind": "customer", "from_addr": f"c{people[n % len(people)]}@history.test",
             "subject": f"Old {n}", "body_text": "old words", "created_at": at}
            for n in numbers
            for k in range(2)
        ])  # fmt: skip
        session.execute(text("ANALYZE"))


@pytest.mark.skipif(bool(PG_URL), reason="reads SQLite's query plans")
def test_the_list_reads_the_customers_own_tickets_never_the_whole_desk(
    daemon: RunningDaemon,
) -> None:
    """Anyone who mails the desk once is offered an account, and /tickets is the page it
    opens on. Each load grouped every public message of the desk by ticket (for the
    last activity) and tested every ticket of the desk against the viewer: 75 ms of CPU a
    load at 100,000 messages (bench/search.py's desk), growing with the history, for
    any customer reloading the page. Each statement now starts from the viewer's own
    tickets (participants by person, messages by ticket), and the list is still in
    order of each ticket's last public activity."""
    services = daemon.services
    first = mail_in(daemon, ALICE, "Printer broken")
    services.clock.advance(timedelta(minutes=1))
    second = mail_in(daemon, ALICE, "Invoice question")
    other_customers_history(daemon)
    now = services.clock.now()
    with services.db.transaction() as session:  # the first answered later, publicly
        session.add(Message(ticket_id=first, message_id="<later@customer.test>",
                            direction="in", kind="customer", from_addr=ALICE,
                            created_at=now + timedelta(minutes=5)))  # fmt: skip
        session.add(Message(ticket_id=second, message_id="<note@example.test>",
                            direction="in", kind="agent", from_addr=AGENT, internal=True,
                            created_at=now + timedelta(minutes=9)))  # fmt: skip
    customer(services, ALICE)
    alice = logged_in(daemon, ALICE)
    pages: list[str] = []

    plans = sqlite_plans(services, lambda: pages.append(alice.get("/tickets").text),
                         "tickets|messages")  # fmt: skip

    listed = [int(n) for n in re.findall(r'href="/tickets/(\d+)"', pages[0])]
    assert listed == [first, second]  # an internal note is no activity the customer sees
    whole = [(plan, sql) for plan, sql in plans if re.match(r"SCAN (tickets|messages)\b", plan)]
    assert not whole
    assert not [plan for plan, _ in plans if plan.startswith("MATERIALIZE")], plans


@pytest.mark.skipif(bool(PG_URL), reason="reads SQLite's query plans")
def test_an_organization_members_pages_find_colleagues_without_reading_everyone(
    daemon: RunningDaemon,
) -> None:
    """A member of an organization sees her colleagues' tickets: they were found by
    `email LIKE '%@acme.test'`, which read every person the desk ever heard from at
    each of her page loads (10 ms at 100,000 people, growing with the desk)."""
    services = daemon.services
    with services.db.transaction() as session:
        services.accounts(session).add_organization("acme.test", "Acme", services.clock.now())
    bobs = mail_in(daemon, "Bob <bob@acme.test>", "Bob's laptop")
    carols = mail_in(daemon, "Carol <carol@acme.test>", "Carol's VPN")
    answers_our_mail(daemon, "carol@acme.test", carols)
    other_customers_history(daemon)
    customer(services, "bob@acme.test")
    bob = logged_in(daemon, "bob@acme.test")
    pages: list[str] = []

    plans = sqlite_plans(services, lambda: pages.append(bob.get("/tickets").text), "people")

    assert f"/tickets/{bobs}" in pages[0] and f"/tickets/{carols}" in pages[0]
    assert not [(plan, sql) for plan, sql in plans if re.match(r"SCAN people", plan)], plans


def test_portal_pages_are_read_without_the_write_lock(daemon: RunningDaemon) -> None:
    """Pages are reads: with SQLite's one write lock held elsewhere (the processor
    writing a batch of mail), the list, a ticket, a search and a set-password form
    still answer, and no page view makes the mail wait."""
    number = mail_in(daemon, ALICE, "Printer on fire")
    customer(daemon.services, ALICE)
    alice = logged_in(daemon, ALICE)
    link = invitation(daemon.services, "bob@customer.test").removeprefix(base_url(daemon))
    with daemon.services.db.transaction():  # holds the write lock (SQLite) meanwhile
        assert f"/tickets/{number}" in alice.get("/tickets").text
        page = alice.get(f"/tickets/{number}")
        assert page.status == 200 and "Printer on fire" in page.text
        assert f"/tickets/{number}" in alice.get("/tickets?q=fire").text
        form = Client(base_url(daemon)).get(link)
        assert form.status == 200 and 'name="password"' in form.text


def test_organization_members_see_each_others_tickets(daemon: RunningDaemon) -> None:
    services = daemon.services
    with services.db.transaction() as session:
        services.accounts(session).add_organization("acme.test", "Acme", services.clock.now())
        with pytest.raises(ValueError):
            services.accounts(session).add_organization("gmail.com", "Gmail", services.clock.now())
    bobs = mail_in(daemon, "Bob <bob@acme.test>", "Bob's laptop")
    carols = mail_in(daemon, "Carol <carol@acme.test>", "Carol's VPN")
    answers_our_mail(daemon, "carol@acme.test", carols)
    outsider = mail_in(daemon, "eve@other.test", "Eve's question")
    gmail_one = mail_in(daemon, "ann@gmail.com", "Ann's request")
    mail_in(daemon, "ben@gmail.com", "Ben's request")
    for address in ("bob@acme.test", "ann@gmail.com"):
        customer(services, address)

    bob = logged_in(daemon, "bob@acme.test")
    page = bob.get("/tickets").text
    assert f"/tickets/{bobs}" in page and f"/tickets/{carols}" in page
    assert f"/tickets/{outsider}" not in page
    assert 'name="creator"' in page and "carol@acme.test" in page
    only_carol = bob.get("/tickets?creator=carol@acme.test").text
    assert f"/tickets/{carols}" in only_carol and f"/tickets/{bobs}" not in only_carol
    carols_page = bob.get(f"/tickets/{carols}")
    assert carols_page.status == 200 and "Carol&#39;s VPN" in carols_page.text
    # Her acknowledgement offered her an account: its link must not reach a colleague.
    assert "/account/set-password?token=…" in carols_page.text
    assert not re.search(r"token=[\w.-]{8}", carols_page.text)
    assert bob.get(f"/tickets/{outsider}").status == 404
    # Someone outside the organization is no creator to filter by: the filter is ignored.
    assert f"/tickets/{outsider}" not in bob.get("/tickets?creator=eve@other.test").text

    ann = logged_in(daemon, "ann@gmail.com")
    page = ann.get("/tickets").text
    assert f"/tickets/{gmail_one}" in page and "Ben" not in page
    assert 'name="creator"' not in page


def test_an_organization_added_under_its_unicode_domain_groups_its_people(
    daemon: RunningDaemon, config_file: Path
) -> None:
    """The admin adds the organization as its name is written, `Příklad.cz`; its people's
    addresses are kept as mail carries them, in the domain's ASCII form
    (`xn--pklad-zsa96e.cz`). The organization was kept as typed and matched nobody:
    Bob never saw his colleague Carol's ticket. It is now kept in the ASCII form."""
    added = CliRunner().invoke(
        main, ["--config", str(config_file), "orgs", "add", "Příklad.cz", "--name", "Příklad"]
    )
    assert added.exit_code == 0, added.output
    domain = "xn--pklad-zsa96e.cz"
    mail_in(daemon, f"Bob <bob@{domain}>", "Bob's laptop")
    carols = mail_in(daemon, f"Carol <carol@{domain}>", "Carol's VPN")
    answers_our_mail(daemon, f"carol@{domain}", carols)
    customer(daemon.services, f"bob@{domain}")

    page = logged_in(daemon, f"bob@{domain}").get("/tickets").text
    assert f"/tickets/{carols}" in page

    assert f"organization {domain} added" in added.output
    listed = CliRunner().invoke(main, ["--config", str(config_file), "orgs", "list", "--json"])
    assert [o["domain"] for o in json.loads(listed.output)] == [domain]
    refused = CliRunner().invoke(
        main, ["--config", str(config_file), "orgs", "add", "příklad cz", "--name", "X"]
    )
    assert refused.exit_code != 0 and "not a domain name" in refused.output


def test_a_forged_colleagues_ticket_is_shown_to_nobody_else_until_proven(
    daemon: RunningDaemon,
) -> None:
    """A stranger mails From "CEO <ceo@acme.test>", unsigned, with a link to click. The
    ticket opened in the CEO's name was shown, unmarked, to every colleague at Acme
    (and their web replies to it counted as verified). It is the CEO's alone until
    the CEO proves it theirs, by answering our mail."""
    services = daemon.services
    with services.db.transaction() as session:
        services.accounts(session).add_organization("acme.test", "Acme", services.clock.now())
    phishing = mail_in(daemon, '"Payroll: log in at evil.example/acme" <ceo@acme.test>',
                       "Urgent: new payroll portal",
                       body="Log in at https://evil.example/acme today.")  # fmt: skip
    customer(services, "bob@acme.test")
    bob = logged_in(daemon, "bob@acme.test")

    listed = bob.get("/tickets").text
    assert f"/tickets/{phishing}" not in listed
    # Nor is its requester offered in the "Created by" filter, with the forger's name.
    assert "ceo@acme.test" not in listed and "evil.example" not in listed
    assert bob.get(f"/tickets/{phishing}").status == 404
    assert "evil.example" not in bob.get("/tickets?q=payroll").text

    answers_our_mail(daemon, "ceo@acme.test", phishing)  # the real CEO, from their mailbox
    assert f"/tickets/{phishing}" in bob.get("/tickets").text


def test_a_web_reply_enters_the_mail_pipeline(daemon: RunningDaemon, outbox: Outbox) -> None:
    number = mail_in(daemon, "Alice Customer <alice@customer.test>", "Printer broken")
    set_status(daemon, number, "waiting_customer")
    customer(daemon.services, ALICE)
    alice = logged_in(daemon, ALICE)
    alice.get(f"/tickets/{number}")
    agent_mails = len([r for r in outbox_rows(daemon.services) if AGENT in r.recipients])

    sent = alice.post(f"/tickets/{number}/reply", {"text": "It works again,\r\nthank you!"})
    assert (sent.status, sent.location) == (303, f"/tickets/{number}?sent=1")

    def replied() -> dict[str, Any] | None:
        messages = ticket(daemon.services, number)["messages"]
        return next((m for m in messages if "It works again" in m["body_text"]), None)

    message = wait_for(replied, what="the web reply in the ticket")
    assert (message["from"], message["kind"], message["thread_rule"]) == (
        ALICE,
        "customer",
        "references",
    )
    assert message["subject"] == f"Re: [#{number}] Printer broken"
    assert ticket(daemon.services, number)["status"] == "accepted"
    wait_for(
        lambda: (
            len([r for r in outbox_rows(daemon.services) if AGENT in r.recipients]) > agent_mails
        ),
        what="the agent's notification",
    )
    assert "It works again" in alice.get(f"/tickets/{number}").text


def test_a_web_reply_without_disk_room_is_given_back_and_taken_later(
    daemon: RunningDaemon, tmp_path: Any
) -> None:
    """Below the reserve for new mail (inbound/room.py) the reply is not stored: the
    customer gets their page back with the text in the box, escaped, to send again."""
    number = mail_in(daemon, "Alice Customer <alice@customer.test>", "Printer broken")
    customer(daemon.services, ALICE)
    alice = logged_in(daemon, ALICE)
    alice.get(f"/tickets/{number}")
    text = "Still broken <script>alert(1)</script> & worse"
    daemon.services.store.room = Room(tmp_path, 10**9)  # the disk is down to its reserve

    refused = alice.post(f"/tickets/{number}/reply", {"text": text})
    assert refused.status == 503
    assert "could not be saved just now" in refused.text
    assert "Still broken &lt;script&gt;alert(1)&lt;/script&gt; &amp; worse</textarea>" in (
        refused.text
    )
    assert "<script>alert(1)" not in refused.text
    assert len(ticket(daemon.services, number)["messages"]) == 2  # the mail and our ack

    daemon.services.store.room = None  # room again: the same form goes through
    sent = alice.post(f"/tickets/{number}/reply", {"text": text})
    assert (sent.status, sent.location) == (303, f"/tickets/{number}?sent=1")
    wait_for(
        lambda: any(
            "Still broken" in m["body_text"] for m in ticket(daemon.services, number)["messages"]
        ),
        what="the reply in the ticket",
    )


@pytest.mark.parametrize("config_values", [{"portal_replies_per_hour": 3}], indirect=True)
def test_a_script_posting_replies_is_stopped_at_the_hourly_limit(
    daemon: RunningDaemon, clock: ManualClock
) -> None:
    """A logged-in session (a script, a stolen cookie) posted replies without end, each a
    stored mail and a notice to agents. Past `[limits] portal_replies_per_hour` it gets
    429 with Retry-After, its text given back, and nothing is stored; an hour on, the
    customer writes again. The limit here is 3 (20 by default)."""
    number = mail_in(daemon, "Alice Customer <alice@customer.test>", "Printer broken")
    customer(daemon.services, ALICE)
    alice = logged_in(daemon, ALICE)
    alice.get(f"/tickets/{number}")
    for n in range(3):
        sent = alice.post(f"/tickets/{number}/reply", {"text": f"Reply {n}"})
        assert (sent.status, sent.location) == (303, f"/tickets/{number}?sent=1")

    refused = alice.post(f"/tickets/{number}/reply", {"text": "Reply 3 <b>& more</b>"})
    assert refused.status == 429
    assert 0 < int(refused.headers["Retry-After"]) <= 3601  # the hour, rounded up
    assert "many replies in the last hour" in refused.text
    assert "Reply 3 &lt;b&gt;&amp; more&lt;/b&gt;</textarea>" in refused.text

    def replies() -> list[str]:
        texts = [m["body_text"] for m in ticket(daemon.services, number)["messages"]]
        return [t.strip() for t in texts if t.startswith("Reply")]

    # Processed before the clock moves: an hour passing under a message's processing
    # reads as processing that took an hour (`[workers] message_seconds`).
    wait_for(lambda: len(replies()) >= 3, what="the first replies")
    clock.advance(timedelta(hours=1))
    alice.get(f"/tickets/{number}")
    sent = alice.post(f"/tickets/{number}/reply", {"text": "Reply 4"})
    assert (sent.status, sent.location) == (303, f"/tickets/{number}?sent=1")

    # The refused one was never stored: the ticket holds the others, and it never came.
    found = wait_for(lambda: len(replies()) >= 4 and replies(), what="the replies")
    assert sorted(found) == ["Reply 0", "Reply 1", "Reply 2", "Reply 4"]


@pytest.mark.parametrize("config_values", [{"portal_replies_per_hour": 1}], indirect=True)
def test_a_refused_reply_never_takes_the_write_lock(daemon: RunningDaemon) -> None:
    """Each reply POST opened a write transaction to find its ticket, before anything
    was refused: a session posting empty or over-limit replies took SQLite's one write
    lock each time, and held incoming mail behind it; with the lock held elsewhere, the
    POST waited for it. Now they are answered at once with the lock held."""
    number = mail_in(daemon, ALICE, "Printer broken")
    customer(daemon.services, ALICE)
    alice = logged_in(daemon, ALICE)
    alice.get(f"/tickets/{number}")
    assert alice.post(f"/tickets/{number}/reply", {"text": "First"}).status == 303
    with daemon.services.db.transaction():  # holds the write lock (SQLite) meanwhile
        empty = alice.post(f"/tickets/{number}/reply", {"text": "  "})
        assert (empty.status, empty.location) == (303, f"/tickets/{number}")
        assert alice.post(f"/tickets/{number}/reply", {"text": "Second"}).status == 429


def test_a_colleagues_web_reply_is_proven_by_the_portal(daemon: RunningDaemon) -> None:
    """Bob sees Carol's ticket through his organization; his web reply counts as verified."""
    services = daemon.services
    with services.db.transaction() as session:
        services.accounts(session).add_organization("acme.test", "Acme", services.clock.now())
    carols = mail_in(daemon, "Carol <carol@acme.test>", "Carol's VPN")
    answers_our_mail(daemon, "carol@acme.test", carols)
    set_status(daemon, carols, "resolved")
    customer(services, "bob@acme.test")

    bob = logged_in(daemon, "bob@acme.test")
    bob.get(f"/tickets/{carols}")
    assert bob.post(f"/tickets/{carols}/reply", {"text": "Thanks, confirmed."}).status == 303

    def replied() -> dict[str, Any] | None:
        messages = ticket(services, carols)["messages"]
        return next((m for m in messages if "confirmed" in m["body_text"]), None)

    message = wait_for(replied, what="Bob's web reply in Carol's ticket")
    assert (message["from"], message["flag"]) == ("bob@acme.test", "")
    assert message["proof"] in {"reply_token", "message_id"}  # a secret of this ticket
    assert ticket(services, carols)["status"] == "closed"


def test_a_long_message_shows_its_head_and_never_half_a_link(daemon: RunningDaemon) -> None:
    """A 20 MB mail was shown whole: each load of its page held serve's event loop, which
    also answers SMTP, for about 150 ms. Now the page shows its first characters; a
    set-password link the cut crosses is removed whole, not cut into a readable half."""
    link = invitation(daemon.services, ALICE)
    secret = link.rpartition("token=")[2]
    head = "x" * (portal.MAX_SHOWN_CHARS - 40) + " "
    body = head + link + " " + "y" * 300_000
    raw = make_mail(subject="Log attached inline", sender=ALICE, body=body)
    known = len(tickets(daemon.services))
    daemon.send(raw, sender=ALICE)
    [found] = wait_for(lambda: tickets(daemon.services)[known:], what="the ticket")
    customer(daemon.services, ALICE)

    page = logged_in(daemon, ALICE).get(f"/tickets/{found['number']}")
    assert page.status == 200
    assert head.strip() in page.text
    assert secret[:8] not in page.text and "token=" not in page.text
    assert "y" * 100 not in page.text
    assert re.search(r"and \d{6} more characters, not shown here", page.text)
    assert len(page.text) < portal.MAX_SHOWN_CHARS + 20_000


def test_a_long_thread_shows_its_newest_messages(
    daemon: RunningDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(portal, "MAX_SHOWN_MESSAGES", 3)
    number = mail_in(daemon, ALICE, "Printer broken")
    ack = outbox_mail(next(r for r in outbox_rows(daemon.services) if r.ticket_id == number))
    address = ack["Reply-To"].addresses[0].addr_spec
    for n in range(1, 5):
        reply = make_mail(subject=f"Re: {ack['Subject']}", sender=ALICE, to=address,
                          body=f"Update number {n}.", In_Reply_To=ack["Message-ID"])  # fmt: skip
        daemon.send(reply, sender=ALICE, recipients=(address,))
        wait_for(lambda n=n: any(m["body_text"].startswith(f"Update number {n}.")
                                 for m in ticket(daemon.services, number)["messages"]),
                 what=f"reply {n}")  # fmt: skip
    customer(daemon.services, ALICE)

    page = logged_in(daemon, ALICE).get(f"/tickets/{number}").text
    shown = re.findall(r"Update number (\d)\.", page)
    assert shown == ["2", "3", "4"]
    assert "The printer on floor 2 prints only blank pages." not in page
    assert re.search(r"\d earlier messages of this ticket are not shown here", page)


def test_a_thread_of_long_messages_fits_one_page(daemon: RunningDaemon) -> None:
    """Red team, web: each message was cut to its first 100,000 characters, and a page
    showed up to 200 of them. A customer (anyone who mails in gets an account) mailed
    200 replies of 100,000 `"` into her own ticket: each load of its page was 100 MB of
    HTML (a `"` is escaped as `&#34;`), rendered on serve's event loop (a /healthz sent
    meanwhile waited 1.2 s) and held whole in memory until sent. Now a page shows the
    newest messages up to a budget of characters; older ones are left to the mailbox."""
    number = mail_in(daemon, ALICE, "Printer broken")
    with daemon.services.db.transaction() as session:
        found = session.get(Ticket, number)
        assert found is not None
        for n in range(30):
            text = f"Reply {n:02d}. " + '"' * portal.MAX_SHOWN_CHARS
            new = NewMessage(message_id=f"long-{n}@customer.test", direction="in",
                             kind="customer", from_addr=ALICE, from_name="", subject="",
                             body_text=text, created_at=daemon.services.clock.now())  # fmt: skip
            Tickets(session).add_message(found, new)
    customer(daemon.services, ALICE)

    page = logged_in(daemon, ALICE).get(f"/tickets/{number}")
    assert page.status == 200
    assert len(page.text) < 6 * portal.MAX_PAGE_CHARS + 20_000  # `"`: 5 characters more
    assert "Reply 29." in page.text  # the newest, and its first characters
    assert '"' * 100 in page.text.replace("&#34;", '"')
    assert "Reply 00." not in page.text
    assert re.search(r"\d+ earlier messages of this ticket are not shown here", page.text)


def test_a_thread_of_many_attachments_fits_one_page(daemon: RunningDaemon) -> None:
    """The same, with file names: a mail may carry 500 parts (`[limits] max_mime_parts`),
    each named with 255 `"`. 200 such mails made the page about 140 MB of links, whatever
    the characters of text it showed. Their names count against the page's budget too."""
    number = mail_in(daemon, ALICE, "Printer broken")
    name = '"' * 255
    files = tuple(
        (name, "text/plain", b"x") for _ in range(daemon.services.settings.limits.max_mime_parts)
    )
    with daemon.services.db.transaction() as session:
        found = session.get(Ticket, number)
        assert found is not None
        for n in range(10):
            new = NewMessage(message_id=f"files-{n}@customer.test", direction="in",
                             kind="customer", from_addr=ALICE, from_name="", subject="",
                             body_text=f"Reply {n:02d}.", created_at=daemon.services.clock.now(),
                             attachments=files)  # fmt: skip
            Tickets(session).add_message(found, new)
    customer(daemon.services, ALICE)

    alice = logged_in(daemon, ALICE)
    page = alice.get(f"/tickets/{number}")
    assert page.status == 200
    assert len(page.text) < 6 * portal.MAX_PAGE_CHARS + 20_000
    assert "Reply 09." in page.text and "Reply 00." not in page.text
    listed = re.findall(rf'href="(/tickets/{number}/attachments/\d+)"', page.text)
    assert len(listed) >= len(files)  # the newest message's files, each downloadable
    status, data, _ = alice.get_bytes(listed[-1])
    assert (status, data) == (200, b"x")
    assert re.search(r"\d+ earlier messages of this ticket are not shown here", page.text)


def test_a_list_of_long_subjects_fits_one_page(daemon: RunningDaemon) -> None:
    """Red team, web: a subject is stored whole, up to one header field's 32 KB
    (`[limits] max_header_line`), and the list showed up to 500 of them whole. A customer
    who opened 100 tickets with subjects of 15,000 `" ` got a list of 9 MB of HTML each
    load (500 such tickets: 45 MB), rendered on serve's event loop; the search results
    showed 50 of them the same way. A list now shows the first characters of each."""
    long = ('" ' * 15_000).strip()
    number = mail_in(daemon, ALICE, long)  # mail carries such a subject, stored whole
    assert len(ticket(daemon.services, number)["subject"]) >= len(long)
    with daemon.services.db.transaction() as session:
        alice = Tickets(session).person(ALICE, "", daemon.services.clock.now())
        for n in range(99):
            opened = Tickets(session).open(
                alice, f"{n:02d} {long}", "en", daemon.services.clock.now()
            )
            Tickets(session).add_message(opened, NewMessage(message_id=f"long-{n}@customer.test",
                                         direction="in", kind="customer", from_addr=ALICE,
                                         from_name="", subject=opened.subject, body_text="printer",
                                         created_at=daemon.services.clock.now()))  # fmt: skip
    customer(daemon.services, ALICE)
    client = logged_in(daemon, ALICE)

    listed = client.get("/tickets")
    assert listed.status == 200
    assert listed.text.count('href="/tickets/') >= 100
    assert len(listed.text) < 100 * 2_000 + 20_000
    found = client.get("/tickets?q=printer")
    assert found.status == 200 and found.text.count('href="/tickets/') >= 50
    assert len(found.text) < 50 * 2_000 + 20_000
    page = client.get(f"/tickets/{number}")  # one ticket's own page names it whole
    assert page.text.count("&#34;") >= 2 * 15_000  # in its title and its heading
