"""The SSRF guard with stub resolvers: no test sends traffic anywhere but loopback."""

from __future__ import annotations

import ipaddress
import socket

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from tierline.webhooks.ssrf import (
    GuardedResolver,
    TargetRefused,
    address_allowed,
    check_target,
)

REFUSED = [
    "10.0.0.1",
    "172.16.5.4",
    "192.168.1.1",
    "127.0.0.1",
    "127.8.8.8",
    "169.254.169.254",
    "100.64.0.1",
    "0.0.0.0",
    "224.0.0.251",
    "239.1.2.3",
    "240.0.0.1",
    "255.255.255.255",
    "::1",
    "::",
    "fe80::1",
    "fc00::1",
    "fd12:3456::1",
    "ff02::1",
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "192.0.2.10",
    "198.18.0.1",
]
ALLOWED = ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111", "::ffff:93.184.216.34"]

NAMES = {
    "hooks.example.com": ["93.184.216.34"],
    "internal.example.com": ["10.1.2.3"],
    "metadata.example.com": ["169.254.169.254"],
    "mixed.example.com": ["93.184.216.34", "127.0.0.1"],
    "v6.example.com": ["2606:4700:4700::1111"],
}


async def stub_resolver(host: str, port: int) -> list[str]:
    """Answers from NAMES; unknown names do not resolve."""
    if host not in NAMES:
        raise socket.gaierror(socket.EAI_NONAME, "unknown")
    return NAMES[host]


async def resolver_never_called(host: str, port: int) -> list[str]:
    raise AssertionError("allow_private must skip resolution")


@pytest.mark.parametrize("address", REFUSED)
def test_non_public_addresses_are_refused(address: str) -> None:
    assert not address_allowed(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_are_allowed(address: str) -> None:
    assert address_allowed(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "url", ["https://hooks.example.com/tierline", "http://v6.example.com:8443/x", "http://1.1.1.1/"]
)
async def test_public_targets_pass(url: str) -> None:
    await check_target(url, stub_resolver, allow_private=False)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://internal.example.com/hook", "non-public"),
        ("https://metadata.example.com/latest", "non-public"),
        ("https://mixed.example.com/", "non-public"),
        ("http://127.0.0.1:8080/", "non-public"),
        ("http://[::1]/", "non-public"),
        ("http://[fe80::1]/", "non-public"),
        ("https://nowhere.example.com/", "does not resolve"),
        ("ftp://hooks.example.com/", "only http and https"),
        ("file:///etc/passwd", "only http and https"),
        ("hooks.example.com/no-scheme", "only http and https"),
    ],
)
async def test_disallowed_targets_are_refused(url: str, reason: str) -> None:
    with pytest.raises(TargetRefused, match=reason):
        await check_target(url, stub_resolver, allow_private=False)


async def test_allow_private_accepts_loopback_without_resolving() -> None:
    await check_target("http://internal.example.com/", resolver_never_called, allow_private=True)
    await check_target("http://127.0.0.1:9/", resolver_never_called, allow_private=True)
    with pytest.raises(TargetRefused):
        await check_target("gopher://127.0.0.1/", resolver_never_called, allow_private=True)


class StubAiohttpResolver(AbstractResolver):
    """An aiohttp resolver answering from NAMES."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(hostname=host, host=a, port=port, family=family, proto=0, flags=0)
            for a in await stub_resolver(host, port)
        ]

    async def close(self) -> None:
        return None


async def test_guarded_resolver_refuses_at_connect_time() -> None:
    guarded = GuardedResolver(StubAiohttpResolver())
    assert [r["host"] for r in await guarded.resolve("hooks.example.com", 443)] == ["93.184.216.34"]
    with pytest.raises(TargetRefused):
        await guarded.resolve("internal.example.com", 443)
    with pytest.raises(TargetRefused):
        await guarded.resolve("mixed.example.com", 443)
