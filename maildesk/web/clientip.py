"""Which address a web request comes from, for per-IP limits.

The TCP peer, unless the peer is one of `[web] trusted_proxies` (addresses or
CIDRs): then X-Forwarded-For is read from the right, each trusted proxy's
entry naming the hop before it, and the first hop that is not a trusted proxy
is the client. Entries further left were written by the client itself and are
never believed. IPv6 clients are counted by their /64, which one attacker
usually holds whole.

A proxy missing from `trusted_proxies` is every client's address: behind it, all
share one count, and ten requests for "send me a new link" stopped everyone's. Its
X-Forwarded-For is not believed (anyone can write one), but the first request that
carries one (or Forwarded) from a peer we do not trust gets one WARNING, naming the
setting, once per process (one web application, one ClientAddress): a log line per
request would bury the log, and a client that sends the header itself gets the same
single line.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence

from aiohttp import web

from maildesk.peers import Address, key, parse

__all__ = ["Address", "ClientAddress", "Network", "key", "networks", "parse"]

log = logging.getLogger("maildesk.web")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_HOPS = 20


def networks(entries: Sequence[str]) -> list[Network]:
    """Addresses or CIDRs as written in the config (an address is a network of one)."""
    return [ipaddress.ip_network(entry.strip(), strict=False) for entry in entries]


class ClientAddress:
    def __init__(self, trusted_proxies: Sequence[str]) -> None:
        self.trusted: list[Network] = networks(trusted_proxies)
        self._told_of_proxy = False

    def is_proxy(self, address: Address) -> bool:
        return any(address in network for network in self.trusted)

    def of(self, request: web.Request) -> str:
        peer = parse(request.remote or "")
        if peer is None:
            return request.remote or "unknown"
        if not self.is_proxy(peer):
            if not self._told_of_proxy and _forwarded(request):
                self._told_of_proxy = True
                log.warning(
                    "a request from %(peer)s carries X-Forwarded-For or Forwarded, and"
                    " %(peer)s is not in [web] trusted_proxies: the header is ignored. If"
                    " %(peer)s is a reverse proxy of yours, every client behind it counts as"
                    ' that one address for the per-address limits (logins, "send me a new'
                    ' link", connections): add it to [web] trusted_proxies, and have it send'
                    " X-Forwarded-For (the header read from a trusted proxy). Said once.",
                    {"peer": str(peer)},
                )
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


def _forwarded(request: web.Request) -> bool:
    return "X-Forwarded-For" in request.headers or "Forwarded" in request.headers
