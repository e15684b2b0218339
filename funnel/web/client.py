"""Who is asking: the visitor's IP address, and the key her form posts are counted under.

`client_ip(request, config)` is the one place that decides the address a route uses,
both for the rate limit and for the consent evidence a form post leaves, so the two
never disagree. Forwarded headers are anyone's to write, so they are read only from a
trusted proxy, and from the right. IPv6 addresses are counted by their /64 block: one
home gets a whole /64 and can rotate through it. The walk is in `client_ip`'s
docstring.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable

from starlette.requests import Request

from funnel.config import Config

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: what `client_ip` answers when the server does not know the peer (a Unix socket, a test client)
UNKNOWN = "unknown"
#: the prefix an IPv6 visitor is counted under
IPV6_PREFIX = 64


def client_ip(request: Request, config: Config) -> str:
    """The visitor's IP address as text, or "unknown"; forwarded headers only through trusted proxies.

    Forwarded headers are anyone's to write. They are read only when the direct
    peer (the TCP connection) is one of `serve.trusted_proxies` (default: the
    loopback addresses, where the README's reverse proxy runs), and then from
    the right: each proxy appends the address it saw, so the right-most address
    that is not itself a trusted proxy is the visitor; anything to its left is
    what the visitor (or a proxy we do not know) wrote, and is ignored. An entry
    that is not an address ("unknown", an obfuscated name, junk) ends the walk
    at the last address known to be real. `X-Forwarded-For` is read when present,
    else RFC 7239 `Forwarded` (Caddy and nginx set or append the former); a
    proxy that writes only `Forwarded` must drop any `X-Forwarded-For` the
    visitor sent.
    """
    peer = parse_address(request.client.host) if request.client else None
    if peer is None:
        return request.client.host if request.client and request.client.host else UNKNOWN
    networks = _networks(config.serve.trusted_proxies)
    if not _trusted(peer, networks):
        return str(peer)
    current = peer
    for hop in reversed(_forwarded_hops(request)):
        address = parse_address(hop)
        if address is None:
            break  # junk or a hidden name: nothing left of it can be trusted
        current = address
        if not _trusted(address, networks):
            break
    return str(current)


def rate_key(ip: str) -> str:
    """The rate limiter's bucket for an address: IPv4 whole, IPv6 by its /64; anything else as it is."""
    address = parse_address(ip)
    if address is None:
        return ip
    if address.version == 6:
        return str(ipaddress.IPv6Network((int(address), IPV6_PREFIX), strict=False))
    return str(address)


def parse_address(text: str) -> IPAddress | None:
    """An IP address from a header or socket: optional quotes, [brackets], :port; IPv4-mapped IPv6 as IPv4."""
    value = text.strip().strip('"').strip()
    if value.startswith("["):  # [2001:db8::1] or [2001:db8::1]:4711
        value = value[1:].partition("]")[0]
    elif value.count(":") == 1:  # 203.0.113.1:4711 (an IPv6 address has two or more)
        value = value.partition(":")[0]
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # a dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d
    return address


def _forwarded_hops(request: Request) -> list[str]:
    """The forwarded chain, left (the first claim) to right (the last proxy's): X-Forwarded-For, else Forwarded."""
    listed = request.headers.getlist("x-forwarded-for")
    if listed:
        return [hop.strip() for header in listed for hop in header.split(",") if hop.strip()]
    hops: list[str] = []
    for header in request.headers.getlist("forwarded"):
        for element in header.split(","):
            for pair in element.split(";"):
                name, _, value = pair.partition("=")
                if name.strip().lower() == "for":
                    hops.append(value.strip())
    return hops


def _trusted(address: IPAddress, networks: Iterable[IPNetwork]) -> bool:
    return any(address.version == network.version and address in network for network in networks)


@functools.lru_cache(maxsize=8)
def _networks(entries: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    """`serve.trusted_proxies` as networks (validated when the config loaded)."""
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)
