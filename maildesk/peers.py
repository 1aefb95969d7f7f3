"""Which client a peer address counts as, for the per-client caps of SMTP and the web.

An IPv6 client is counted by its /64, which one attacker usually holds whole: counted
by address, one host had as many as it liked. An IPv4 address seen through an IPv6
socket (`::ffff:192.0.2.7`) counts as that IPv4 address, never as the one /64 all
such addresses share.
"""

from __future__ import annotations

import ipaddress

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse(text: str) -> Address | None:
    """An address from a peer or an X-Forwarded-For entry (`[v6]:port` and `v4:port` too)."""
    text = text.strip()
    if text.startswith("[") and "]" in text:
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:
        text = text.split(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def key(address: Address) -> str:
    """The rate-limit key of an address: itself, or its /64 for IPv6."""
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)
