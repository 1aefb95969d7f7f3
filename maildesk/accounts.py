"""Customer accounts: invitation links, passwords, organizations. No HTTP here.

An invitation token is signed (itsdangerous), names the person, expires after
`[web] invitation_days`, and carries a random nonce whose sha256 is the only
thing stored: issuing a new link or setting a password replaces or clears it,
so every older link stops working. Passwords are hashed with argon2id.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import urlencode

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from itsdangerous import BadSignature
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from maildesk.clock import Clock
from maildesk.db import Database
from maildesk.models import Organization, Person, WebSession, email_domain
from maildesk.outbound.headers import a_label
from maildesk.redaction import redact_links
from maildesk.signing import signed_serializer

MIN_PASSWORD_LENGTH = 12
# A domain as addresses are stored: lower-case ASCII labels (a Unicode one as its A-label).
_STORED_DOMAIN = re.compile(r"(?:[a-z0-9_-]{1,63}\.)+[a-z0-9-]{1,63}")
# Domains of public mail providers: sharing one never makes people colleagues.
FREE_MAIL_DOMAINS = frozenset(
    (Path(__file__).parent / "data" / "free-mail-domains.txt").read_text().split()
)
COMMON_PASSWORDS = frozenset(
    line.strip().lower()
    for line in (Path(__file__).parent / "data" / "common-passwords.txt").read_text().splitlines()
    if line.strip()
)

__all__ = [
    "Accounts",
    "Login",
    "check_login",
    "hash_password",
    "password_problems",
    "redact_links",
]

_hasher = PasswordHasher()  # argon2id with the library's current recommended parameters


@dataclass(frozen=True)
class Invitation:
    person_id: int
    email: str


class Accounts:
    def __init__(
        self, session: Session, clock: Clock, secret: str, base_url: str, invitation_days: int
    ) -> None:
        self.session = session
        self.clock = clock
        self.base_url = base_url.rstrip("/")
        self.invitation_days = invitation_days
        self._signer = signed_serializer(secret, "maildesk.invitation", clock)

    # -- invitations -----------------------------------------------------------

    def invitation_url(self, person: Person) -> str:
        """A fresh set-password link for `person`; every older link stops working."""
        nonce = secrets.token_urlsafe(16)
        person.invite_hash = _sha256(nonce)
        person.invited_at = self.clock.now()
        token = self._sign({"p": person.id, "n": nonce})
        return f"{self.base_url}/account/set-password?{urlencode({'token': token})}"

    def read_invitation(self, token: str) -> Person | None:
        """The person a still-valid link is for; None if tampered, expired or used."""
        data = self._load(token)
        if data is None:
            return None
        person = self.session.get(Person, data.get("p"))
        nonce = data.get("n")
        if person is None or not person.invite_hash or not isinstance(nonce, str):
            return None
        return person if hmac.compare_digest(person.invite_hash, _sha256(nonce)) else None

    def _sign(self, data: dict[str, object]) -> str:
        return str(self._signer.dumps(data))

    def _load(self, token: str) -> dict[str, object] | None:
        try:
            data = self._signer.loads(token, max_age=self.invitation_days * 86400)
        except BadSignature:  # tampered, expired, or not ours
            return None
        return data if isinstance(data, dict) else None

    # -- passwords -------------------------------------------------------------

    def set_password(self, person: Person, password: str, hashed: str | None = None) -> list[str]:
        """Set the password if it follows the rules; returns what is wrong otherwise.
        `hashed`: `hash_password(password)`, made before the transaction (argon2id is
        tens of milliseconds that no write transaction should hold its lock for)."""
        problems = password_problems(password, person.email)
        if problems:
            return problems
        person.password_hash = hashed or _hasher.hash(password)
        person.invite_hash = None  # the link is used up
        person.session_version += 1
        # Every portal login of this person ends: whoever knew the old password is out.
        self.session.execute(delete(WebSession).where(WebSession.person_id == person.id))
        return []

    # -- organizations ---------------------------------------------------------

    def organization_of(self, person: Person) -> Organization | None:
        domain = email_domain(person.email)
        if domain in FREE_MAIL_DOMAINS:
            return None
        return self.session.scalar(select(Organization).where(Organization.domain == domain))

    def add_organization(self, domain: str, name: str, now: datetime) -> Organization:
        """Add (or rename) the organization of `domain`, kept as addresses are stored
        (`organization_domain`); ValueError for no domain or a public mail provider's."""
        domain = organization_domain(domain)
        if domain in FREE_MAIL_DOMAINS:
            raise ValueError(f"{domain} is a public mail provider: it never groups people")
        org = self.session.scalar(select(Organization).where(Organization.domain == domain))
        if org is None:
            org = Organization(domain=domain, name=name, created_at=now)
            self.session.add(org)
        else:
            org.name = name
        self.session.flush()
        return org


def organization_domain(written: str) -> str:
    """`written` as the domains of stored addresses are (`people.domain`), which is what
    an organization is matched with: lower case, no root dot or leading `@`, and a
    Unicode domain in its ASCII form (IDNA 2008, `headers.a_label`). An organization
    added as `příklad.cz` was kept so, while its people's addresses are kept as
    `xn--pklad-zsa96e.cz`: it never matched anyone. ValueError if it is no domain."""
    domain = written.strip().lower().removeprefix("@").removesuffix(".")
    if not domain.isascii():
        try:
            domain = a_label(domain)
        except UnicodeError:
            raise ValueError(f"{written!r} is not a domain name") from None
    if len(domain) > 253 or not _STORED_DOMAIN.fullmatch(domain):
        raise ValueError(f"{written!r} is not a domain name")
    return domain


def password_problems(password: str, email: str = "") -> list[str]:
    problems = []
    if len(password) < MIN_PASSWORD_LENGTH:
        problems.append(f"at least {MIN_PASSWORD_LENGTH} characters")
    lowered = password.lower()
    if lowered in COMMON_PASSWORDS or (email and lowered == email.lower()):
        problems.append("not a common password")
    return problems


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@functools.cache
def _dummy_hash() -> str:
    # Made on first use, not at import: argon2id takes 64 MB while it hashes, and
    # every process imports this module (a worker never checks a password).
    return _hasher.hash("maildesk-dummy-password")


def hash_password(password: str) -> str:
    """The argon2id hash `Accounts.set_password` stores for `password`."""
    return str(_hasher.hash(password))


def password_matches(stored: str | None, password: str) -> bool:
    """Whether `password` is the one `stored` hashes; None or "" (no account) takes as
    long to find out, so timing does not reveal who has an account."""
    if not stored:
        _burn(password)
        return False
    try:
        return bool(_hasher.verify(stored, password))
    except (VerificationError, InvalidHashError):
        return False


@dataclass(frozen=True)
class Login:
    """Who logged in, and the password hash that was checked (their row must still hold
    it when the login is recorded: a password changed meanwhile ends the attempt)."""

    person_id: int
    checked_hash: str


def check_login(db: Database, email: str, password: str) -> Login | None:
    """The login `email` and `password` make, None for a wrong one: read in a read
    transaction, checked outside any. argon2id takes 64 MiB and tens of milliseconds;
    checked inside a write transaction, every guess (from anyone, for any address) held
    SQLite's one write lock that long, and the processing of mail waited for it. A hash
    made with older parameters is made again, in a write transaction of its own."""
    email = email.strip().lower()
    with db.reading() as session:
        found = session.execute(
            select(Person.id, Person.password_hash).where(Person.email == email)
        ).first()
    stored = found.password_hash if found is not None else None
    if not password_matches(stored, password):  # burns the time when there is no account
        return None
    assert found is not None and stored
    if _hasher.check_needs_rehash(stored):
        fresh = _hasher.hash(password)
        with db.transaction() as session:
            person = session.get(Person, found.id)
            if person is None or person.password_hash != stored:
                return None
            person.password_hash = stored = fresh
    return Login(found.id, stored)


def _burn(password: str) -> None:
    """Spend the time a real check takes, so timing does not reveal unknown addresses."""
    try:
        _hasher.verify(_dummy_hash(), password)
    except VerificationError:
        pass
