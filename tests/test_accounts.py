"""Accounts: the invitation offered once, single-use expiring links, passwords, organizations."""

from __future__ import annotations

import email
import email.policy
import json
import re
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from click.testing import CliRunner

from maildesk.accounts import check_login
from maildesk.cli import main
from maildesk.clock import ManualClock
from maildesk.models import Person
from maildesk.services import Services
from tests.conftest import make_mail
from tests.helpers import outbox_rows, receive

LINK = re.compile(r"http://\S+/account/set-password\?token=\S+")


def acknowledgement_text(services: Services, index: int) -> str:
    raw = outbox_rows(services)[index].raw
    part = email.message_from_bytes(raw, policy=email.policy.default).get_body(("plain",))
    assert part is not None
    return str(part.get_content())  # type: ignore[attr-defined]


def token_of(url: str) -> str:
    return parse_qs(urlsplit(url).query)["token"][0]


def test_first_acknowledgement_offers_an_account_later_ones_do_not(services: Services) -> None:
    receive(services, make_mail(subject="First"))
    receive(services, make_mail(subject="Second"))

    first, second = acknowledgement_text(services, 0), acknowledgement_text(services, 1)
    assert LINK.search(first)
    assert not LINK.search(second)


def test_link_is_single_use_and_a_newer_link_replaces_it(services: Services) -> None:
    receive(services, make_mail())
    found = LINK.search(acknowledgement_text(services, 0))
    assert found
    token = token_of(found.group(0))
    with services.db.transaction() as session:
        accounts = services.accounts(session)
        who = accounts.read_invitation(token)
        assert who is not None and who.email == "alice@customer.test"
        newer = token_of(accounts.invitation_url(who))
        assert accounts.read_invitation(token) is None  # replaced by the newer link
        assert accounts.set_password(who, "correct horse battery") == []
        assert accounts.read_invitation(newer) is None  # used up by setting a password


def test_link_expires_after_invitation_days(services: Services, clock: ManualClock) -> None:
    with services.db.transaction() as session:
        accounts = services.accounts(session)
        alice = Person(email="alice@customer.test", name="", created_at=clock.now())
        session.add(alice)
        session.flush()
        token = token_of(accounts.invitation_url(alice))
    clock.advance(timedelta(days=6, hours=23))
    with services.db.transaction() as session:
        assert services.accounts(session).read_invitation(token) is not None
    clock.advance(timedelta(hours=2))
    with services.db.transaction() as session:
        assert services.accounts(session).read_invitation(token) is None


def test_tampered_link_is_refused(services: Services) -> None:
    receive(services, make_mail())
    found = LINK.search(acknowledgement_text(services, 0))
    assert found
    token = token_of(found.group(0))
    with services.db.transaction() as session:
        accounts = services.accounts(session)
        assert accounts.read_invitation(token[:-2] + ("AA" if token[-2:] != "AA" else "BB")) is None


def test_password_rules_and_argon2id_hash(services: Services) -> None:
    with services.db.transaction() as session:
        accounts = services.accounts(session)
        bob = Person(email="bob@customer.test", name="", created_at=services.clock.now())
        session.add(bob)
        session.flush()
        assert accounts.set_password(bob, "short") == ["at least 12 characters"]
        assert accounts.set_password(bob, "password1234") == ["not a common password"]
        assert accounts.set_password(bob, "a long and private phrase") == []
        assert bob.password_hash is not None and bob.password_hash.startswith("$argon2id$")
        assert "a long and private phrase" not in bob.password_hash
    db = services.db
    assert check_login(db, "BOB@customer.test", "a long and private phrase") is not None
    assert check_login(db, "bob@customer.test", "wrong password here") is None
    assert check_login(db, "nobody@customer.test", "a long and private phrase") is None


def test_organizations_group_by_domain_but_never_free_mail(config_file: Path) -> None:
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(main, ["--config", str(config_file), *args])
        assert result.exit_code == 0, result.output
        return result.output

    run("init")
    run("orgs", "add", "customer.test", "--name", "Customer Ltd")
    refused = runner.invoke(
        main, ["--config", str(config_file), "orgs", "add", "gmail.com", "--name", "Google"]
    )
    assert refused.exit_code != 0 and "public mail provider" in refused.output
    # Written another way, it is still the provider's (before, "GMAIL.com." was added).
    refused = runner.invoke(
        main, ["--config", str(config_file), "orgs", "add", " GMAIL.com.", "--name", "Google"]
    )
    assert refused.exit_code != 0 and "public mail provider" in refused.output
    run("people", "invite", "alice@customer.test")
    run("people", "invite", "carol@gmail.com")
    people = {p["email"]: p for p in json.loads(run("people", "list", "--json"))}
    assert people["alice@customer.test"]["organization"] == "customer.test"
    assert people["carol@gmail.com"]["organization"] is None
    assert people["alice@customer.test"]["invited_at"] is not None
    assert [o["domain"] for o in json.loads(run("orgs", "list", "--json"))] == ["customer.test"]
    queued = json.loads(run("outbox", "list", "--json"))
    assert [(r["kind"], r["recipients"]) for r in queued] == [
        ("invitation", ["alice@customer.test"]),
        ("invitation", ["carol@gmail.com"]),
    ]
