"""Which address a web request comes from, for per-IP limits.

The TCP peer, unless the peer is one of `[web] trusted_proxies` (addresses or
CIDRs): then X-Forwarded-For is read from the right, each trusted proxy's
entry naming the hop before it, and the first hop that is not a trusted proxy
is the client. Entries further left were written by the client itself and are
never believed. IPv6 clients are counted by their /64, which one attacker
usually holds whole.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from aiohttp import web

from maildesk.peers import Address, key, parse

__all__ = ["Address", "ClientAddress", "Network", "key", "networks", "parse"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_HOPS = 20


def networks(entries: Sequence[str]) -> list[Network]:
    """Addresses or CIDRs as written in the config (an address is a network of one)."""
    return [ipaddress.ip_network(entry.strip(), strict=False) for entry in entries]


class ClientAddress:
    def __init__(self, trusted_proxies: Sequence[str]) -> None:
        self.trusted: list[Network] = networks(trusted_proxies)

    def is_proxy(self, address: Address) -> bool:
        return any(address in network for network in self.trusted)

    def of(self, request: web.Request) -> str:
        peer = parse(request.remote or "")
        if peer is None:
            return request.remote or "unknown"
        if not self.is_proxy(peer):
            return key(peer)
        headers = request.headers.getall("X-Forwarded-For", [])
        hops = [hop for value in headers for hop in value.split(",")]
        client = peer
        for hop in reversed(hops[-MAX_HOPS:]):
            address = parse(hop)
            if address is None:  # a proxy we trust wrote nonsense: stop at what it is
                break
            client = address
            if not self.is_proxy(address):
                break
        return key(client)
