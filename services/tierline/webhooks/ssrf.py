"""SSRF guard: webhook targets must be http(s) URLs whose host resolves to allowed addresses only.

By default only public unicast addresses are allowed. `allow_private` (a development setting)
adds loopback and private ranges (RFC 1918, unique-local IPv6, shared 100.64/10) and nothing
else: link-local addresses and cloud metadata endpoints are never allowed, because a webhook
sender that can reach 169.254.169.254 hands out the machine's cloud credentials. IPv6 forms
that embed an IPv4 address (IPv4-mapped, NAT64, 6to4, IPv4-compatible) are judged by the IPv4
address inside.

Checked when a subscription is created or changed and again on every connection the sender
opens: the sender's connector resolves through `GuardedResolver`, so it connects only to the
addresses that passed the check (a DNS answer that changes between check and connect, the
rebinding trick, cannot slip a forbidden address in).
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
ALLOW_PRIVATE_SETTING = "TIERLINE_WEBHOOKS_ALLOW_PRIVATE_TARGETS"

# Instance metadata services outside the link-local range (which is refused as a whole):
# Alibaba Cloud, AWS over IPv6, Google Cloud over IPv6, Azure's WireServer (a public address).
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("100.100.100.200", "fd00:ec2::254", "fd20:ce::254", "168.63.129.16")
)
# Names that resolve to a metadata service inside clouds (lower case, no trailing dot).
METADATA_HOSTS = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "instance-data",
        "instance-data.ec2.internal",
    }
)
# What `allow_private` adds to the public internet.
PRIVATE_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "127.0.0.0/8",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "::1/128",
        "fc00::/7",
    )
)
NAT64 = ipaddress.ip_network("64:ff9b::/96")
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


class TargetRefused(OSError):
    """The URL is not an allowed webhook target; `reason` says why in words for clients.

    `hint` is set only when allowing private targets would accept the URL (a loopback or
    private address while they are not allowed), so clients get that advice only then.
    """

    def __init__(self, reason: str, *, hint: str | None = None) -> None:
        self.reason = reason
        self.hint = hint
        super().__init__(reason)


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for, if it is one of the embedding forms."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in NAT64 or (address in IPV4_COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def refusal(address: IPAddress, *, allow_private: bool) -> TargetRefused | None:
    """Why the address is not an allowed target (reason: what it is), or None when allowed."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = embedded_ipv4(address)
        if inner is not None:
            return refusal(inner, allow_private=allow_private)
    if address in METADATA_ADDRESSES:
        return TargetRefused(f"a cloud metadata address ({address}), never a webhook target")
    if address.is_link_local:
        return TargetRefused(
            f"a link-local address ({address}, where cloud metadata services live), never a "
            f"webhook target, even with {ALLOW_PRIVATE_SETTING}"
        )
    if any(address in network for network in PRIVATE_NETWORKS):
        if allow_private:
            return None
        return TargetRefused(
            f"a non-public address ({address})",
            hint=f"set {ALLOW_PRIVATE_SETTING}=true for local targets",
        )
    if address_allowed(address):
        return None
    return TargetRefused(f"a non-public address ({address}), never a webhook target")


def address_allowed(address: IPAddress) -> bool:
    """Public unicast only: no private, loopback, link-local, multicast or reserved ranges."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = embedded_ipv4(address)
        if inner is not None:
            return address_allowed(inner)
    return (
        address.is_global
        and address not in METADATA_ADDRESSES
        and not (
            address.is_private
            or address.is_loopback
            or address.is_link_local
            or address.is_multicast
            or address.is_reserved
            or address.is_unspecified
        )
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
        shown = f"{parsed.scheme}://" if parsed.scheme else "a URL without a scheme"
        raise TargetRefused(f"only http and https URLs are allowed, not {shown}")
    if not parsed.host:
        raise TargetRefused("the URL has no host")
    check_host_name(parsed.host)
    return parsed


def check_host_name(host: str) -> None:
    """Refuse metadata service names before anything resolves them."""
    if host.lower().rstrip(".") in METADATA_HOSTS:
        raise TargetRefused(f"{host} is a cloud metadata service, never a webhook target")


def check_addresses(host: str, addresses: list[str], *, allow_private: bool = False) -> None:
    """Refuse when the host resolves to nothing or to any address that is not allowed."""
    if not addresses:
        raise TargetRefused(f"{host} does not resolve")
    for text in addresses:
        address = ipaddress.ip_address(text.split("%", 1)[0])
        refused = refusal(address, allow_private=allow_private)
        if refused is not None:
            verb = "is" if literal_address(host) is not None else "resolves to"
            raise TargetRefused(f"{host} {verb} {refused.reason}", hint=refused.hint)


async def check_target(url: str, resolver: Resolver, *, allow_private: bool) -> URL:
    """Validate a target URL: its shape, its host name and every address it resolves to."""
    parsed = parse_target(url)
    host = parsed.host
    assert host is not None
    literal = literal_address(host)
    if literal is not None:
        check_addresses(host, [str(literal)], allow_private=allow_private)
        return parsed
    try:
        addresses = await resolver(host, parsed.port or 443)
    except OSError:
        raise TargetRefused(f"{host} does not resolve") from None
    check_addresses(host, addresses, allow_private=allow_private)
    return parsed


async def system_resolver(host: str, port: int) -> list[str]:
    """The operating system's answer for a host name."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


class GuardedResolver(AbstractResolver):
    """An aiohttp resolver that refuses hosts resolving to addresses that are not allowed."""

    def __init__(self, inner: AbstractResolver | None = None, *, allow_private: bool = False):
        self._inner = inner if inner is not None else DefaultResolver()
        self._allow_private = allow_private

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Resolve with the inner resolver, then check the name and every address."""
        check_host_name(host)
        results = await self._inner.resolve(host, port, family)
        check_addresses(host, [r["host"] for r in results], allow_private=self._allow_private)
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
