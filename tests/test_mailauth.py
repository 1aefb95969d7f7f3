"""What proves a From domain (maildesk/mailauth.py), attacked from outside.

An attacker owns a name next to the victim's under a suffix that sells names
(evil.uk.com beside firm.uk.com), or writes text our MTA copies into its
Authentication-Results header: neither may prove the victim's From domain.
"""

from __future__ import annotations

import random

import pytest

from maildesk.config import TrustSettings
from maildesk.mailauth import (
    Authentication,
    MailAuth,
    MethodResult,
    aligned,
    organizational_domain,
    parse_authentication_results,
)

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
    assert mta_verdict(header) == Authentication(dmarc_failed=True, disowned=True)
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
        assert mta_verdict(header) == Authentication(dmarc_failed=True, disowned=True)


# -- text the sender chose, copied by our MTA into its header ---------------------------------

AGENT = "agent@example.test"

INJECTED = {
    # rspamd-like SPF comment naming the sender's quoted envelope address.
    "in an SPF comment": "mx.example.test; dkim=none; spf=pass (mx.example.test: domain of "
    '"dkim=pass header.d=example.test"@evil.test designates 192.0.2.1 as permitted sender) '
    "smtp.mailfrom=evil.test",
    "after a ';' in a comment": "mx.example.test; spf=none (sender said: x; "
    "dkim=pass header.d=example.test as sent) smtp.mailfrom=evil.test",
    "after a nested comment": "mx.example.test; spf=none (a (b) ; "
    "dkim=pass header.d=example.test as sent) smtp.mailfrom=evil.test",
    "after an escaped parenthesis": "mx.example.test; spf=none (a \\) ; "
    "dkim=pass header.d=example.test as sent) smtp.mailfrom=evil.test",
    "in a quoted MAIL FROM": "mx.example.test; spf=pass "
    'smtp.mailfrom="dkim=pass header.d=example.test"@evil.test',
    "after a ';' in a quoted MAIL FROM": "mx.example.test; spf=pass "
    'smtp.mailfrom="x;dkim=pass header.d=example.test"@evil.test',
    "after an escaped quote": "mx.example.test; spf=pass "
    'smtp.mailfrom="x\\";dkim=pass header.d=example.test"@evil.test',
    "in a quoted reason": 'mx.example.test; dkim=fail reason="x; dkim=pass header.d=example.test" '
    "header.d=evil.test",
    "inside another resinfo": "mx.example.test; spf=pass smtp.mailfrom=evil.test "
    "dkim=pass header.d=example.test",
    "as a second domain of one result": "mx.example.test; dkim=pass header.d=evil.test "
    "header.d=example.test",
    "as a property of the next result": "mx.example.test; dkim=pass header.d=evil.test; "
    "dmarc=none header.from=example.test",
}


@pytest.mark.parametrize("where", sorted(INJECTED))
def test_a_pass_written_by_the_sender_proves_nothing(where: str) -> None:
    assert mta_verdict(INJECTED[where], AGENT) == Authentication()


@pytest.mark.parametrize(
    ("header", "method"),
    [
        # OpenDKIM: a ';' in a comment before the domain.
        (
            "mx.example.test; dkim=pass (2048-bit key; unprotected) header.d=example.test "
            'header.i=@example.test header.b="AbC+/=2"',
            "mta-dkim",
        ),
        # rspamd, with an SPF comment naming the (honest) sender.
        (
            "mx.example.test; dkim=pass header.d=example.test header.s=dkim header.b=AbC=; "
            "dmarc=pass (policy=reject) header.from=example.test; spf=pass (mx.example.test: "
            "domain of agent@example.test designates 192.0.2.1 as permitted sender) "
            "smtp.mailfrom=agent@example.test",
            "mta-dkim",
        ),
        # Gmail-like: a DKIM result naming only header.i; DMARC proves it.
        (
            "mx.example.test; dkim=pass header.i=@example.test header.s=20230601 "
            "header.b=AbCd; dmarc=pass (p=NONE sp=NONE dis=NONE) header.from=example.test",
            "mta-dmarc",
        ),
        # A version, folding, white space around "=", a comment first, upper case.
        (
            "(ours)\r\n MX.Example.Test 1 ;\r\n\tDKIM = Pass Header.D = Example.TEST",
            "mta-dkim",
        ),
        ('"mx.example.test"; dmarc=pass header.from="example.test"', "mta-dmarc"),
    ],
)
def test_our_mtas_pass_as_mtas_write_it(header: str, method: str) -> None:
    assert mta_verdict(header, AGENT).method == method


def test_the_results_of_a_header() -> None:
    header = (
        "mx.example.test; dkim/1=pass (good (really)) header.d=example.test; "
        'spf=pass smtp.mailfrom="a b;c"@evil.test; none; =pass; dmarc=fail header.from='
    )
    assert parse_authentication_results(header) == (
        "mx.example.test",
        (
            MethodResult("dkim", "pass", (("header.d", "example.test"),)),
            MethodResult("spf", "pass", (("smtp.mailfrom", "a b;c@evil.test"),)),
            MethodResult("dmarc", "fail", (("header.from", ""),)),
        ),
    )


def test_garbage_parses_to_nothing_without_an_error() -> None:
    for header in (
        "",
        ";;;",
        "(" * 100_000,
        "(" * 50_000 + ")" * 50_000,
        '"' * 100_001,
        "\\" * 100_000,
        "mx.example.test; dkim=pass header.d=(example.test",
        'mx.example.test; dkim=pass header.d="example.test',
        "mx.example.test; dkim=pass header.d=\\example.test",
    ):
        _authserv_id, results = parse_authentication_results(header)
        assert all(r.properties in ((), (("header.d", ""),)) for r in results), header
    alphabet = '();="\\ ;.@a=dkimpasheder'
    rng = random.Random(7)
    for _ in range(2_000):
        header = "".join(rng.choice(alphabet) for _ in range(rng.randrange(60)))
        parse_authentication_results(header)  # never raises
