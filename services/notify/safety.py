"""Where a webhook may go: http(s) only, and never to an address inside the deployment unless
configured (`JETMEDIA_WEBHOOK_ALLOW_NETWORKS`).

A callback URL comes from whoever submitted a job: without these checks it could make the stage
call the cloud metadata service (169.254.169.254), an admin port on loopback or anything on the
private network. The host is resolved once here and every address checked (one bad address
refuses the URL: a name that also resolves inward is not trusted); the caller connects to exactly
these addresses (services/notify/send.py), so a second DNS answer cannot swap them.

The host checked is the host as the HTTP client (aiohttp, through yarl) reads the URL, not as
urllib does: the two disagree on some non-ASCII hosts (`http://127.0.0.\U0001ccf1/` is the literal
127.0.0.1 to yarl's IDNA 2008 and an unresolvable name to Python's IDNA 2003), and aiohttp connects
to an IP literal without asking the resolver, so a check of urllib's reading could pass a name that
the client then treats as a loopback literal.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

import yarl

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT: inside someone's network too
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052's well-known prefix + an IPv4 address
NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")  # RFC 8215: a site's own translation prefixes


class Unsafe(Exception):
    """The URL may not be called; the message says why (no connection was made)."""


class Unresolved(Exception):
    """The host did not resolve now: retried like a receiver that does not answer."""


@dataclass(frozen=True)
class Checked:
    scheme: str
    host: str  # as in the URL (Host header, TLS server name)
    port: int
    addresses: tuple[IPAddress, ...]  # every address the host resolved to, each allowed


def networks(cidrs: tuple[str, ...] | list[str]) -> tuple[Network, ...]:
    """JETMEDIA_WEBHOOK_ALLOW_NETWORKS as networks; ValueError names a bad entry."""
    found = []
    for cidr in cidrs:
        try:
            found.append(ipaddress.ip_network(cidr.strip(), strict=False))
        except ValueError as exc:
            raise ValueError(f"JETMEDIA_WEBHOOK_ALLOW_NETWORKS: {cidr!r} is not a network ({exc})") from None
    return tuple(found)


def why_refused(address: IPAddress, allowed: tuple[Network, ...]) -> str | None:
    """The kind of address that is refused (loopback, link-local, private, ...), or None."""
    if any(address in network for network in allowed):
        return None
    if isinstance(address, ipaddress.IPv6Address) and (inner := _embedded_ipv4(address)) is not None:
        return why_refused(inner, allowed)
    if isinstance(address, ipaddress.IPv6Address) and address in NAT64_LOCAL:
        return "private"  # a site's own NAT64 prefix: where it leads is the site's business
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local (cloud metadata)" if str(address) == "169.254.169.254" else "link-local"
    if address.is_multicast:
        return "multicast"
    if address.is_reserved:
        return "reserved"
    if address.is_private or (isinstance(address, ipaddress.IPv4Address) and address in SHARED):
        return "private"
    if not address.is_global:  # documentation, benchmarking, ... ranges
        return "reserved"
    return None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one reaches: ::ffff:10.0.0.1 (mapped), 64:ff9b::a00:1 (NAT64,
    what DNS64 answers in an IPv6-only network: judged by the IPv4 behind it, neither refused as
    reserved for a public receiver nor passed for a private one), 2002:a00:1:: (6to4)."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


async def check(url: str, allowed: tuple[Network, ...]) -> Checked:
    """Resolve the URL's host once and check every address; Unsafe says why not."""
    try:
        parts = urlsplit(url)
        port = parts.port
        host = yarl.URL(url).raw_host  # what aiohttp connects to (module docstring)
    except ValueError as exc:  # UnicodeError too: a host IDNA cannot encode
        raise Unsafe(f"not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise Unsafe(f"scheme {scheme or '(none)'!r} is not http or https")
    if not host:
        raise Unsafe("the URL names no host")
    if parts.username is not None or parts.password is not None:
        raise Unsafe("user:password@ in a webhook URL is not supported")
    port = port or (443 if scheme == "https" else 80)
    try:
        addresses: tuple[IPAddress, ...] = (ipaddress.ip_address(host),)
    except ValueError:
        addresses = await _resolve(host, port)
    for address in addresses:
        if (kind := why_refused(address, allowed)) is not None:
            shown = host if str(address) == host else f"{host} resolves to {address}, which"
            raise Unsafe(f"{shown} is a {kind} address; refused (allow it with JETMEDIA_WEBHOOK_ALLOW_NETWORKS)")
    return Checked(scheme, host, port, addresses)


async def _resolve(host: str, port: int) -> tuple[IPAddress, ...]:
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise Unresolved(f"cannot resolve {host}: {exc.strerror or exc}") from None
    except UnicodeError:  # a label over 63 characters: no DNS answer can ever come
        raise Unsafe(f"{host[:100]!r} is not a valid host name (a label longer than 63 characters?)") from None
    found: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in found:
            found.append(address)
    if not found:
        raise Unresolved(f"{host} resolves to no address")
    return tuple(found)
