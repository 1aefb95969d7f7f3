"""What proves a From domain (maildesk/mailauth.py), attacked from outside.

An attacker owns a name next to the victim's under a suffix that sells names
(evil.uk.com beside firm.uk.com), or writes text our MTA copies into its
Authentication-Results header: neither may prove the victim's From domain.
"""

from __future__ import annotations

import pytest

from maildesk.config import TrustSettings
from maildesk.mailauth import Authentication, MailAuth, aligned, organizational_domain

FIRM = "agnes@firm.uk.com"


@pytest.mark.parametrize(
    ("domain", "organizational"),
    [
        ("example.com", "example.com"),
        ("mail.example.com", "example.com"),
        ("Mail.Example.COM.", "example.com"),
        ("a.b.mail.example.com", "example.com"),
        ("mail.example.co.uk", "example.co.uk"),
        ("co.uk", "co.uk"),
        ("mail.firm.uk.com", "firm.uk.com"),
        ("evil.uk.com", "evil.uk.com"),
        ("alice.github.io", "alice.github.io"),
        ("shop.info.pl", "shop.info.pl"),
        ("mail.firm.krakow.pl", "firm.krakow.pl"),
        ("a.b.kiev.ua", "b.kiev.ua"),
        ("www.firm.priv.at", "firm.priv.at"),
        ("mail.xn--bcher-kva.de", "xn--bcher-kva.de"),  # bücher.de
        ("mail.example.xn--p1ai", "example.xn--p1ai"),  # .рф
        ("mail.example.test", "example.test"),  # not on the list: one label kept
        ("localhost", "localhost"),
        # No domain names: they align with nothing.
        ("", ""),
        ("a..example.com", ""),
        ("example.com..", ""),
        ("bücher.de", ""),
        ("exa mple.com", ""),
        ("x" * 64 + ".com", ""),
    ],
)
def test_organizational_domain(domain: str, organizational: str) -> None:
    assert organizational_domain(domain) == organizational


@pytest.mark.parametrize(
    ("signer", "from_domain"),
    [
        ("example.com", "example.com"),
        ("mail.example.com", "example.com"),
        ("example.com", "support.example.com"),
        ("EXAMPLE.com.", "example.com"),
        ("example.co.uk", "mail.example.co.uk"),
        ("mail.firm.uk.com", "firm.uk.com"),
        ("xn--bcher-kva.de", "mail.xn--bcher-kva.de"),
        ("customer.test", "customer.test"),
    ],
)
def test_the_same_organization_is_aligned(signer: str, from_domain: str) -> None:
    assert aligned(signer, from_domain)


@pytest.mark.parametrize(
    ("signer", "from_domain"),
    [
        # Names sold to anyone under a second-level suffix: neighbours, not one owner.
        ("evil.uk.com", "firm.uk.com"),
        ("uk.com", "firm.uk.com"),
        ("evil.us.com", "firm.us.com"),
        ("evil.de.com", "firm.de.com"),
        ("evil.info.pl", "firm.info.pl"),
        ("evil.krakow.pl", "firm.krakow.pl"),
        ("evil.kiev.ua", "firm.kiev.ua"),
        ("evil.priv.at", "firm.priv.at"),
        ("mallory.github.io", "alice.github.io"),
        ("evil.co.uk", "example.co.uk"),
        ("co.uk", "example.co.uk"),
        ("example.com", "example.net"),
        ("evil.test", "example.test"),
        # Only A-labels align (From domains are ASCII; DKIM's d= holds A-labels).
        ("xn--bcher-kva.de", "bücher.de"),
        ("", ""),
        ("example.com", ""),
    ],
)
def test_neighbours_are_not_aligned(signer: str, from_domain: str) -> None:
    assert not aligned(signer, from_domain)


def mta_verdict(header: str, from_addr: str = FIRM) -> Authentication:
    """What a header our MTA wrote proves (no DKIM or DNS of maildesk's own)."""
    auth = MailAuth(TrustSettings(authserv_ids=("mx.example.test",), verify_dkim=False))
    return auth.check(b"", from_addr, (header,), via_our_mta=True)


def test_our_mta_proves_a_signature_of_the_same_organization() -> None:
    assert mta_verdict("mx.example.test; dkim=pass header.d=mail.firm.uk.com").method == (
        "mta-dkim"
    )
    assert mta_verdict("mx.example.test; dmarc=pass header.from=firm.uk.com").method == (
        "mta-dmarc"
    )


def test_a_neighbours_signature_proves_nothing() -> None:
    """The MTA truthfully says evil.uk.com signed; that is not firm.uk.com."""
    header = (
        "mx.example.test; dkim=pass header.d=evil.uk.com header.s=s1; "
        "dmarc=fail (p=reject dis=none) header.from=firm.uk.com"
    )
    assert mta_verdict(header) == Authentication(dmarc_failed=True)
    assert mta_verdict("mx.example.test; dkim=pass header.d=evil.uk.com").method == ""


def test_our_mtas_dmarc_fail_outweighs_a_signature_we_call_aligned() -> None:
    """The MTA's DMARC check failed the From domain: a signature of a domain maildesk
    thinks aligned (the MTA's suffix list may know better) does not prove it."""
    for header in (
        "mx.example.test; dkim=pass header.d=mail.firm.uk.com; "
        "dmarc=fail (p=reject) header.from=firm.uk.com",
        "mx.example.test; dmarc=fail (p=reject) header.from=firm.uk.com; "
        "dkim=pass header.d=firm.uk.com",
    ):
        assert mta_verdict(header) == Authentication(dmarc_failed=True)
