"""Who really sent a message: the From header is only words until something proves it.

Two things prove the From domain, and nothing else does:
- maildesk's own check: a DKIM signature (dkimpy) that verifies for a domain aligned
  with the From domain (DMARC's relaxed alignment: the same organizational domain, by
  the Public Suffix List);
- an Authentication-Results header (RFC 8601) written by our own MTA. It is believed
  only when the message reached us through that MTA: relayed to the SMTP/LMTP listener
  by a `[trust] mta_hosts` peer, or by a route only the MTA feeds (the IMAP mailbox,
  the `deliver` pipe). Of those headers only the topmost one with a trusted authserv-id
  counts, and the MTA must strip copies of its id arriving from outside (RFC 8601 §5).
  It is read by its grammar: text the MTA quotes from the sender (an address in a
  comment or a quoted string) is never a result.

The From domain's DMARC policy tells "failed" (the domain asks receivers to distrust
unaligned mail: p=quarantine or p=reject) from "merely unproven". maildesk checks no
SPF itself: a domain whose mail passes DMARC by SPF alone needs an MTA in front that
stamps its results. DNS answers are cached briefly; a lookup that times out proves
nothing and fails nothing. Nothing here knows tickets.
"""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
import logging
import re
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from typing import NamedTuple

import dkim
import dkim.util
import dns.exception
import dns.resolver
from publicsuffixlist import PublicSuffixList

from maildesk import dkimbody
from maildesk.config import TrustSettings

log = logging.getLogger("maildesk.mailauth")

# Routes whose mail was delivered by our MTA by construction.
_MTA_ROUTES = frozenset({"imap", "deliver"})
# A message with more signatures than this is checked on the first ones only:
# each one costs a DNS lookup and an RSA verification.
_MAX_SIGNATURES = 5
# A DKIM-Signature field longer than this is no signature we check. Real ones are
# under 2 KB (an RSA-4096 b= is 684 characters); dkimpy reads the field's tags with
# regular expressions that are quadratic in a run of whitespace (31 KB of folding
# in each of five fields cost 12 s of CPU, before any DNS lookup).
MAX_SIGNATURE_FIELD = 4096
# dkimpy finds the fields a signature's h= names by scanning the header block from the
# bottom once for each distinct name, once the key is in: 700 names over the 60,000 fields
# of a 256 KB block cost 5.6 s of CPU for one signature, with the sender's own key in DNS.
# Real signatures name a dozen fields over a few hundred: a signature that would take more
# comparisons than this is not checked (1,000,000: about 0.1 s).
MAX_FIELD_SCANS = 1_000_000
# Fields RFC 5322 allows once. DKIM signs a field's instances from the bottom up
# (RFC 6376 §5.4.2) and a reader reads the top one, so an instance added above a
# signed one is a stranger's words under a good signature: a replayed mail of a
# customer's, with a Subject tag and a Cc of his own on top, joined her ticket as
# her proven mail and made him a participant. A mail with two proves nothing.
_ONCE = frozenset(
    {
        b"from",
        b"sender",
        b"reply-to",
        b"to",
        b"cc",
        b"bcc",
        b"subject",
        b"date",
        b"message-id",
        b"in-reply-to",
        b"references",
    }
)
# The fields whose words grant something when proven: a Cc of proven mail becomes a
# participant, and a Subject tag, In-Reply-To, References or Message-ID name the
# ticket it acts on. A signature vouches for them only when its h= covers each
# instance (Microsoft 365 signs no Cc, In-Reply-To or References: a replay can add
# them).
VOUCHED = (b"cc", b"subject", b"in-reply-to", b"references", b"message-id")
# The property naming the domain each method's result is about (RFC 8601 §2.7).
_RESULT_DOMAIN = {"dkim": "header.d", "dmarc": "header.from"}
# Authentication-Results outside a comment: white space, a comment's start, a quoted
# string, ";" or "=", a word, or a stray character. A quote never closed is no value.
# The quoted string's repeat is possessive (`*+`): backing off a pair or a character
# can never expose the closing quote, so `re` need not keep a way back per character
# (for a quote never closed, 32 KB of pairs measured 25 times 4 KB inside the suite).
_TOKEN = re.compile(
    r'(?P<space>\s+)|(?P<comment>\()|"(?P<quoted>(?:[^"\\]|\\.)*+)"|(?P<special>[;=])'
    r'|(?P<word>[^\s()";=\\]+)|(?P<stray>[\\)]|".*)',
    re.DOTALL,
)
# Inside a comment (RFC 5322 ccontent): a quote is only text, a pair is escaped.
_COMMENT_TOKEN = re.compile(r"[^()\\]+|\\.?|[()]", re.DOTALL)
_POLICY = re.compile(r"(?:^|;)\s*p\s*=\s*([a-z]+)", re.IGNORECASE)
# A domain name we align: ASCII labels (RFC 8616: DKIM's d= holds A-labels, and a From
# address we parse has an ASCII domain), `_` for the odd signing domain.
_DOMAIN = re.compile(r"(?:[a-z0-9_-]{1,63}\.)*[a-z0-9_-]{1,63}")


@dataclass(frozen=True)
class Authentication:
    """What is proven about the From domain of one message."""

    # How the From domain is proven: dkim | mta-dkim | mta-dmarc; "" when it is not.
    method: str = ""
    # The From domain asks receivers to distrust this message (DMARC fail).
    dmarc_failed: bool = False
    # Our MTA evaluated DMARC, SPF included, and it failed: the From's domain disowns
    # the mail. (Our own check does no SPF: its `dmarc_failed` cannot say so.)
    disowned: bool = False
    # Fields of `VOUCHED` the message holds that no proving signature covers: anyone
    # may have written them, proof or not.
    unsigned: frozenset[str] = frozenset()

    @property
    def proven(self) -> bool:
        return bool(self.method)

    def vouches_for(self, field: str) -> bool:
        """Whether the proof covers the message's `field` (lower case) too."""
        return self.proven and field not in self.unsigned

    def vouches_for_all(self, fields: Iterable[str]) -> bool:
        return all(self.vouches_for(field) for field in fields)


def organizational_domain(domain: str) -> str:
    """The registrable part of a domain, for DMARC's relaxed alignment (RFC 7489 §3.2).

    One label below the longest public suffix, private ones included: `mail.example.co.uk`
    is `example.co.uk`, while `evil.uk.com` and `firm.uk.com` are two owners (CentralNic
    sells names under uk.com), as are two github.io sites. A public suffix or a single
    label is its own; anything but ASCII labels (IDNs as A-labels) has none: "".
    """
    name = domain.strip().lower().removesuffix(".")
    if len(name) > 253 or not _DOMAIN.fullmatch(name):
        return ""
    return _public_suffixes().privatesuffix(name) or name


def aligned(signing_domain: str, from_domain: str) -> bool:
    """DMARC's relaxed alignment: the same organizational domain."""
    org = organizational_domain(from_domain)
    return bool(org) and organizational_domain(signing_domain) == org


@cache
def _public_suffixes() -> PublicSuffixList:
    # The list the package bundles (about 60 ms to load, on first use): nothing is
    # fetched at run time, and a newer release of the package is a newer list.
    return PublicSuffixList()


class MailAuth:
    def __init__(self, settings: TrustSettings, legacy_authserv_ids: Iterable[str] = ()) -> None:
        self._settings = settings
        self._authserv_ids = {i.lower() for i in (*settings.authserv_ids, *legacy_authserv_ids)}
        self._mta_networks = [ipaddress.ip_network(h, strict=False) for h in settings.mta_hosts]
        self._resolver = _resolver(settings)

    def via_our_mta(self, source: str, peer: str) -> bool:
        """Did this message reach us through the MTA whose results we believe?"""
        if source in _MTA_ROUTES:
            return True
        if source not in ("smtp", "lmtp") or not peer:
            return False
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(address in network for network in self._mta_networks)

    def check(
        self,
        raw: bytes,
        from_addr: str,
        authentication_results: tuple[str, ...],
        via_our_mta: bool,
    ) -> Authentication:
        from_domain = from_addr.rpartition("@")[2].lower()
        if not from_domain:
            return Authentication()
        if via_our_mta and self._authserv_ids:
            stamped = self._from_mta(authentication_results, from_domain)
            if stamped is not None:
                if not stamped.proven:
                    return stamped
                return _as_read_by_mta(stamped, raw, from_domain)
        if not self._settings.verify_dkim:
            return Authentication()
        # All lookups of one message share one `dns_timeout`: a sender's slow DNS
        # server (or five signatures pointing at it) delays its own mail that long, once.
        lookup = _Lookup(self._resolver, time.monotonic() + self._settings.dns_timeout)
        verified = self._verified_dkim_signatures(raw, lookup)
        proving = [signed.fields for signed in verified if aligned(signed.domain, from_domain)]
        if proving:
            fields = _fields(dkimbody.split(raw)[0])
            if fields is None:
                return Authentication()
            return _as_read(Authentication("dkim"), fields, _either(proving))
        policy = self._dmarc_policy(from_domain, lookup)
        return Authentication(dmarc_failed=policy in ("quarantine", "reject"))

    # -- our MTA's verdict --------------------------------------------------

    def _from_mta(self, headers: tuple[str, ...], from_domain: str) -> Authentication | None:
        """The verdict of the topmost header our MTA wrote; None when it wrote none."""
        for header in headers:
            # Only the header our MTA wrote is read whole: the others may be 256 KB of
            # anyone's text, and reading takes about 1 µs a character.
            if authserv_id(header).lower() not in self._authserv_ids:
                continue
            _, results = parse_authentication_results(header)
            proof, failed = "", False
            for result in results:
                name = _RESULT_DOMAIN.get(result.method)
                domains = [v.rpartition("@")[2] for n, v in result.properties if n == name]
                if not any(aligned(d, from_domain) for d in domains):
                    continue
                if result.method == "dmarc" and result.result == "fail":
                    failed = True
                # A pass names one domain: a result that names two proves neither.
                elif result.result == "pass" and len(domains) == 1:
                    proof = proof or f"mta-{result.method}"
            # The MTA's DMARC verdict on the From domain outweighs a DKIM pass we call
            # aligned: its suffix list and ours may differ, and it saw the whole message.
            if failed:
                return Authentication(dmarc_failed=True, disowned=True)
            return Authentication(proof)
        return None

    # -- our own check ------------------------------------------------------

    def _verified_dkim_signatures(self, raw: bytes, lookup: _Lookup) -> list[_Signed]:
        """The signatures that verify: each one's d= and the fields its h= names."""
        head, body_start = dkimbody.split(raw)
        count = _count_signatures(head)
        if not count:
            return []
        try:
            # The header block alone: dkimpy would copy the body several times over
            # (about 90 MB for 24 MB); its hash is checked in `_verify`, in slices.
            checker = dkim.DKIM(head, minkey=1024)
        except Exception as exc:  # dkimpy raises several types on malformed mail
            log.info("DKIM: cannot read the message: %s", type(exc).__name__)
            return []
        domains = []
        fields = [value for name, value in checker.headers if name.lower() == b"dkim-signature"]
        for index in range(min(count, _MAX_SIGNATURES, len(fields))):
            if len(fields[index]) > MAX_SIGNATURE_FIELD:
                log.info(
                    "DKIM signature %d is %d bytes long: not checked", index, len(fields[index])
                )
                continue
            try:
                include_headers = _verify(checker, index, raw, body_start, lookup)
            except Exception as exc:  # a bad signature is only a signature that failed
                log.info("DKIM signature %d does not verify: %s", index, type(exc).__name__)
                continue
            if include_headers is not None:
                domain = checker.domain.decode("ascii", "replace")
                domains.append(_Signed(domain, Counter(include_headers)))
        return domains

    def _dmarc_policy(self, from_domain: str, lookup: _Lookup) -> str:
        """The DMARC policy (none|quarantine|reject) of the domain or its org domain, or ""."""
        org = organizational_domain(from_domain)
        for name in dict.fromkeys(n for n in (from_domain, org) if n):
            record = lookup.txt(f"_dmarc.{name}.")
            if record and record.lstrip().lower().startswith(b"v=dmarc1"):
                found = _POLICY.search(record.decode("ascii", "replace"))
                return found.group(1).lower() if found else "none"
        return ""


@dataclass
class _Lookup:
    """TXT lookups for one message, all within one deadline (dkimpy's `dnsfunc`)."""

    resolver: dns.resolver.Resolver
    deadline: float

    def txt(self, name: bytes | str, timeout: float = 0) -> bytes | None:
        """One TXT record, its strings joined; None when there is none or no time left."""
        if isinstance(name, bytes):
            name = name.decode("ascii", "replace")
        left = self.deadline - time.monotonic()
        if left <= 0:
            log.info("DNS lookup of %s skipped: this message's DNS time is spent", name)
            return None
        try:
            answer = self.resolver.resolve(name, "TXT", raise_on_no_answer=False, lifetime=left)
        except (dns.exception.DNSException, ValueError) as exc:
            log.info("DNS lookup of %s failed: %s", name, type(exc).__name__)
            return None
        for rrset in answer.response.answer:
            for item in rrset:
                strings = getattr(item, "strings", None)
                if strings is not None:
                    return b"".join(strings)
        return None


def _verify(
    checker: dkim.DKIM, index: int, raw: bytes, body_start: int, lookup: _Lookup
) -> list[bytes] | None:
    """dkimpy's `verify` of signature `index`, but for the body hash, which
    `dkimbody` computes from `raw` (dkimpy holds the header block only): the fields
    its h= names (lower case, each as often as named) when it verifies, else None."""
    prepared = checker.verify_headerprep(index)
    if not prepared:
        return None
    sig, include_headers, signatures = prepared
    scans = len(set(include_headers)) * len(checker.headers)
    if scans > MAX_FIELD_SCANS:
        log.info("DKIM signature %d would take %d field comparisons: not checked", index, scans)
        return None
    policy = dkim.CanonicalizationPolicy.from_c_value(sig.get(b"c", b"simple/simple"))
    length = int(sig[b"l"]) if b"l" in sig else None
    relaxed = policy.body_algorithm.name == b"relaxed"
    if length is not None and dkimbody.longer_than(raw, body_start, relaxed, length):
        # Text after the signed part may be anyone's (a "Thanks, solved" appended to
        # a replayed mail): such a signature proves nothing (RFC 6376 §8.2).
        log.info("DKIM signature %d signs only the first %d bytes of the body", index, length)
        return None
    digest = dkimbody.body_hash(
        raw,
        body_start,
        relaxed,
        dkim.HASH_ALGORITHMS[sig[b"a"]],
        length,
    )
    if digest != base64.b64decode(re.sub(rb"\s+", b"", sig[b"bh"])):
        log.info("DKIM signature %d: the body hash does not match", index)
        return None
    # Without bh=, dkimpy checks the header signature only (the header it hashes
    # is the DKIM-Signature field as written, bh= included).
    header_only = {tag: value for tag, value in sig.items() if tag != b"bh"}
    if not checker.verify_sig(header_only, include_headers, signatures[index], lookup.txt):
        return None
    return [name.lower() for name in include_headers]


class _Signed(NamedTuple):
    domain: str  # d=
    fields: Counter[bytes]  # h=, lower case: how many instances of each it covers
    length: int | None = None  # l=: the body bytes it signs, when not all
    relaxed: bool = False  # its body canonicalization (c=)


def _fields(head: bytes) -> list[tuple[bytes, bytes]] | None:
    """The header block's fields, (lower-case name, value), top first; None when
    dkimpy cannot read it (what a verifier read of it, we cannot tell)."""
    try:
        fields, _ = dkim.rfc822_parse(head)
    except Exception as exc:  # dkimpy's parser refuses some malformed blocks
        log.info("the header block cannot be read for its signatures: %s", type(exc).__name__)
        return None
    return [(name.lower(), value) for name, value in fields]


def _signature(value: bytes) -> _Signed | None:
    """The d=, h=, l= and c= of a DKIM-Signature field, verified or not; None if unread."""
    if len(value) > MAX_SIGNATURE_FIELD:
        return None
    try:
        tags = dkim.util.parse_tag_value(value)
        length = int(tags[b"l"]) if b"l" in tags else None
    except Exception as exc:
        log.info("a DKIM-Signature field cannot be read: %s", type(exc).__name__)
        return None
    domain = tags.get(b"d", b"").decode("ascii", "replace").strip()
    names = re.split(rb"\s*:\s*", tags.get(b"h", b"").strip().lower())
    body = tags.get(b"c", b"simple/simple").partition(b"/")[2].strip().lower()
    return _Signed(domain, Counter(name for name in names if name), length, body == b"relaxed")


def _as_read_by_mta(stamped: Authentication, raw: bytes, from_domain: str) -> Authentication:
    """Our MTA's proof, as far as the signatures in the mail say it holds.

    Which one it checked, it does not say: what every aligned one covers is what the
    proof covers, and one that signs only part of the body proves nothing. With no
    signature in the mail at all, the verdict rests on SPF: the domain's own server
    sent all of it. A signature or a header block we cannot read covers nothing.
    """
    if not stamped.proven:
        return stamped
    head, body_start = dkimbody.split(raw)
    fields = _fields(head)
    if fields is None:
        return Authentication()
    signatures = [_signature(value) for name, value in fields if name == b"dkim-signature"]
    if not signatures:
        return _as_read(stamped, fields, None)
    if any(signed is None for signed in signatures):
        return _as_read(stamped, fields, Counter())
    ours = [s for s in signatures if s is not None and aligned(s.domain, from_domain)]
    for signed in ours:
        if signed.length is not None and dkimbody.longer_than(
            raw, body_start, signed.relaxed, signed.length
        ):
            log.info("a signature of %s signs only the start of the body", signed.domain)
            return Authentication()
    return _as_read(stamped, fields, _common([s.fields for s in ours]) if ours else None)


def _common(signed: list[Counter[bytes]]) -> Counter[bytes]:
    """What every one of `signed` covers (none of them: nothing)."""
    if not signed:
        return Counter()
    covered = signed[0]
    for other in signed[1:]:
        covered &= other
    return covered


def _either(signed: list[Counter[bytes]]) -> Counter[bytes]:
    """What any one of `signed` covers: each is a proof of its own."""
    covered: Counter[bytes] = Counter()
    for other in signed:
        covered |= other
    return covered


def _as_read(
    proof: Authentication, fields: list[tuple[bytes, bytes]], covered: Counter[bytes] | None
) -> Authentication:
    """`proof`, as far as it holds for the message as maildesk reads it (top fields
    first): none when a field allowed once is there twice, and without the fields of
    `VOUCHED` that `covered` does not cover, instance by instance (None: all)."""
    counts = Counter(name for name, _ in fields)
    repeated = sorted(name.decode() for name in _ONCE if counts[name] > 1)
    if repeated:
        log.info("%s more than once: the signature proves nothing of this mail", repeated)
        return Authentication()
    if covered is None:
        return proof
    unsigned = frozenset(name.decode() for name in VOUCHED if counts[name] > covered[name])
    return dataclasses.replace(proof, unsigned=unsigned)


@dataclass(frozen=True)
class MethodResult:
    """One resinfo of an Authentication-Results header: `dkim=pass header.d=example.com`."""

    method: str  # lower case, without a version: dkim, dmarc, spf...
    result: str  # lower case: pass, fail, none...
    # (lower-cased "ptype.property", value) as written, a quoted part unquoted.
    properties: tuple[tuple[str, str], ...] = ()


def parse_authentication_results(header: str) -> tuple[str, tuple[MethodResult, ...]]:
    """The authserv-id and the results of one Authentication-Results header (RFC 8601).

    Our MTA copies text the sender chose into it: the MAIL FROM address, an SPF
    explanation, in comments or quoted strings, where `;` and `dkim=pass` are only
    text. Comments (nested, with escapes) are dropped and a quoted string is one
    value; a result is read only at the start of a resinfo, its properties only in
    that resinfo. A resinfo that does not read so (a character out of place, a comment
    or quote never closed) is skipped, never guessed at.
    Linear in the header's length, and never recursive.
    """
    blocks: list[list[_Token]] = [[]]
    for token in _tokens(header):
        if token.kind == ";":
            blocks.append([])
        else:
            blocks[-1].append(token)
    results = (_resinfo(block) for block in blocks[1:])
    return authserv_id(header), tuple(r for r in results if r is not None)


def authserv_id(header: str) -> str:
    """Who wrote an Authentication-Results header (its first word), read without the rest."""
    first = next(_tokens(header), None)
    return first.text if first is not None and first.kind in ("word", "quoted") else ""


class _Token(NamedTuple):
    kind: str  # word | quoted | ; | = | stray (out of place, or a comment or quote never closed)
    text: str
    spaced: bool  # white space or a comment comes before it


def _tokens(header: str) -> Iterator[_Token]:
    position, spaced = 0, True
    while position < len(header):
        match = _TOKEN.match(header, position)
        assert match is not None  # one alternative matches any character
        position = match.end()
        kind = match.lastgroup or ""
        if kind == "comment":
            position, closed = _comment_end(header, position)
            kind = "space" if closed else "stray"
        if kind == "space":
            spaced = True
            continue
        if kind == "quoted":
            text = re.sub(r"\\(.)", r"\1", match["quoted"], flags=re.DOTALL)
        else:
            text = match.group()
        yield _Token(text if kind == "special" else kind, text, spaced)
        spaced = False


def _comment_end(header: str, position: int) -> tuple[int, bool]:
    """Where the comment opened just before `position` ends, and whether it is closed."""
    depth = 1
    while depth and position < len(header):
        match = _COMMENT_TOKEN.match(header, position)
        assert match is not None
        position = match.end()
        if match.group() == "(":
            depth += 1
        elif match.group() == ")":
            depth -= 1
    return position, depth == 0


def _resinfo(block: list[_Token]) -> MethodResult | None:
    """`method=result` and its properties `ptype.property=value`, or None."""
    kinds = [token.kind for token in block]
    if kinds[:3] != ["word", "=", "word"] or "stray" in kinds:
        return None
    properties = []
    index = 3
    while index + 1 < len(block):
        name, equals = block[index], block[index + 1]
        index += 1
        if name.kind != "word" or equals.kind != "=":
            continue
        # The value: the pieces written together after "=" (`"a b"@example.com`, `ab==`).
        index += 1
        pieces: list[str] = []
        while index < len(block) and (not pieces or not block[index].spaced):
            pieces.append(block[index].text)
            index += 1
        properties.append((name.text.lower(), "".join(pieces)))
    method = block[0].text.partition("/")[0].lower()
    return MethodResult(method, block[2].text.lower(), tuple(properties))


def _count_signatures(head: bytes) -> int:
    return len(re.findall(rb"(?im)^dkim-signature:", head))


def _resolver(settings: TrustSettings) -> dns.resolver.Resolver:
    try:
        resolver = dns.resolver.Resolver(configure=not settings.dns_servers)
    except dns.resolver.NoResolverConfiguration:
        log.warning("no DNS resolver configured: DKIM and DMARC cannot be checked")
        resolver = dns.resolver.Resolver(configure=False)
    if settings.dns_servers:
        resolver.nameservers = []
        for server in settings.dns_servers:
            host, _, port = server.rpartition(":") if server.count(":") == 1 else (server, "", "")
            resolver.nameservers.append(host)
            if port:
                resolver.port = int(port)
    resolver.lifetime = settings.dns_timeout
    resolver.timeout = settings.dns_timeout
    resolver.cache = dns.resolver.LRUCache(1000)
    return resolver
