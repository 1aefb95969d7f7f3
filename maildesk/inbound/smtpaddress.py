"""The address of MAIL FROM and RCPT TO, parsed as aiosmtpd parses it, once per string.

aiosmtpd 1.4's `_getaddr` defines a `typing.Protocol` class on every call (a
class creation per MAIL and per RCPT: a tenth of serve's CPU under a flood), then
runs the email package's address parser. `parsed_once` overrides only
`_getaddr`, with the same parser and the same results, and keeps the last few
thousand parses: a flood repeats the same RCPT TO (the support address) and
often the same MAIL FROM. Written against aiosmtpd 1.4.6;
tests/inbound/test_smtpaddress.py compares it with aiosmtpd's own.
"""

from __future__ import annotations

from email._header_value_parser import get_addr_spec, get_angle_addr
from email.errors import HeaderParseError
from functools import lru_cache

from aiosmtpd.smtp import SMTP


@lru_cache(maxsize=4096)
def parse(arg: str) -> tuple[str | None, str | None]:
    """(address, the rest of the argument), or (None, None) if it does not parse."""
    try:
        if arg.lstrip().startswith("<"):
            angle, rest = get_angle_addr(arg)
            return angle.addr_spec, rest
        spec, rest = get_addr_spec(arg)
    except HeaderParseError:
        return None, None
    return spec.addr_spec, rest


def parsed_once(protocol: type[SMTP]) -> type[SMTP]:
    """`protocol` (SMTP or LMTP) with the cached address parser."""

    class ParsedOnce(protocol):  # type: ignore[valid-type,misc]
        def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
            if not arg:
                return "", ""
            address, rest = parse(arg)
            if address is None:
                return None, None
            if self.local_part_limit and len(address.rpartition("@")[0]) > self.local_part_limit:
                return None, None
            return address, rest

    return ParsedOnce
