"""SSRF guard: webhook targets must be http(s) URLs whose host resolves to public addresses only.

Checked when a subscription is created or changed and again on every connection the sender
opens: the sender's connector resolves through `GuardedResolver`, so it connects only to the
addresses that passed the check (a DNS answer that changes between check and connect, the
rebinding trick, cannot slip a private address in).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# host, port -> the IP addresses (as text) the host resolves to.
Resolver = Callable[[str, int], Awaitable[list[str]]]
SCHEMES = ("http", "https")


class TargetRefused(OSError):
    """The URL is not an allowed webhook target; `reason` says why in words for clients."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def address_allowed(address: IPAddress) -> bool:
    """Public unicast only: no private, loopback, link-local, multicast or reserved ranges."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address_allowed(address.ipv4_mapped)
    return address.is_global and not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


def literal_address(host: str) -> IPAddress | None:
    """The host as an IP address when it is written as one."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def parse_target(url: str) -> URL:
    """The URL when its shape is acceptable (absolute, http or https, with a host)."""
    try:
        parsed = URL(url)
    except (ValueError, TypeError):
        raise TargetRefused("not a valid URL") from None
    if parsed.scheme not in SCHEMES:
        raise TargetRefused("only http and https URLs are allowed")
    if not parsed.host:
        raise TargetRefused("the URL has no host")
    return parsed


def check_addresses(host: str, addresses: list[str]) -> None:
    """Refuse when the host resolves to nothing or to any address that is not public."""
    if not addresses:
        raise TargetRefused(f"{host} does not resolve")
    for text in addresses:
        address = ipaddress.ip_address(text.split("%", 1)[0])
        if not address_allowed(address):
            raise TargetRefused(f"{host} resolves to a non-public address ({address})")


async def check_target(url: str, resolver: Resolver, *, allow_private: bool) -> URL:
    """Validate a target URL (resolving its host unless private targets are allowed)."""
    parsed = parse_target(url)
    if allow_private:
        return parsed
    host = parsed.host
    assert host is not None
    literal = literal_address(host)
    if literal is not None:
        check_addresses(host, [str(literal)])
        return parsed
    try:
        addresses = await resolver(host, parsed.port or 443)
    except OSError:
        raise TargetRefused(f"{host} does not resolve") from None
    check_addresses(host, addresses)
    return parsed


async def system_resolver(host: str, port: int) -> list[str]:
    """The operating system's answer for a host name."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


class GuardedResolver(AbstractResolver):
    """An aiohttp resolver that refuses hosts resolving to non-public addresses."""

    def __init__(self, inner: AbstractResolver | None = None) -> None:
        self._inner = inner if inner is not None else DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Resolve with the inner resolver, then check every address."""
        results = await self._inner.resolve(host, port, family)
        check_addresses(host, [r["host"] for r in results])
        return results

    async def close(self) -> None:
        """Close the inner resolver."""
        await self._inner.close()


def refusal_detail(exc: BaseException) -> str | None:
    """The refusal reason when `exc` (or what it wraps) is a TargetRefused."""
    seen: set[int] = set()
    current: Any = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, TargetRefused):
            return current.reason
        seen.add(id(current))
        current = getattr(current, "os_error", None) or current.__cause__ or current.__context__
    return None
