"""The SSRF guard with stub resolvers: no test sends traffic anywhere but loopback.

Every address class is checked with private targets allowed and not, at subscription time
(`check_target`) and at send time (the sender's resolver and its literal-address check).
"""

from __future__ import annotations

import ipaddress
import socket
import uuid
from datetime import UTC, datetime
from typing import cast

import asyncpg
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from tierline.webhooks.deliveries import Claimed
from tierline.webhooks.sender import Sender, SenderConfig
from tierline.webhooks.signing import new_secret
from tierline.webhooks.ssrf import (
    GuardedResolver,
    TargetRefused,
    address_allowed,
    check_target,
)

OK = "allowed"
HINT = "set TIERLINE_WEBHOOKS_ALLOW_PRIVATE_TARGETS=true for local targets"
LINK_LOCAL = "link-local address"
METADATA = "cloud metadata address"
NEVER = "never a webhook target"

# (class, address, outcome without private targets, outcome with them): OK, or a phrase the
# refusal must contain. Refusals that allowing private targets would lift carry the HINT.
ADDRESS_CLASSES = [
    ("public IPv4", "93.184.216.34", OK, OK),
    ("public IPv6", "2606:4700:4700::1111", OK, OK),
    ("IPv4-mapped public", "::ffff:93.184.216.34", OK, OK),
    ("loopback IPv4", "127.0.0.1", HINT, OK),
    ("loopback IPv4, not .1", "127.8.8.8", HINT, OK),
    ("loopback IPv6", "::1", HINT, OK),
    ("IPv4-mapped loopback", "::ffff:127.0.0.1", HINT, OK),
    ("RFC 1918 10/8", "10.0.0.1", HINT, OK),
    ("RFC 1918 172.16/12", "172.16.5.4", HINT, OK),
    ("RFC 1918 192.168/16", "192.168.1.1", HINT, OK),
    ("IPv4-mapped private", "::ffff:10.0.0.1", HINT, OK),
    ("unique-local IPv6", "fd12:3456::1", HINT, OK),
    ("shared 100.64/10", "100.64.0.1", HINT, OK),
    ("link-local IPv4 (AWS/GCP/Azure metadata)", "169.254.169.254", LINK_LOCAL, LINK_LOCAL),
    ("link-local IPv4 (ECS task metadata)", "169.254.170.2", LINK_LOCAL, LINK_LOCAL),
    ("link-local IPv6", "fe80::1", LINK_LOCAL, LINK_LOCAL),
    ("IPv4-mapped link-local", "::ffff:169.254.169.254", LINK_LOCAL, LINK_LOCAL),
    ("NAT64 link-local", "64:ff9b::a9fe:a9fe", LINK_LOCAL, LINK_LOCAL),
    ("6to4 link-local", "2002:a9fe:a9fe::1", LINK_LOCAL, LINK_LOCAL),
    ("IPv4-compatible link-local", "::169.254.169.254", LINK_LOCAL, LINK_LOCAL),
    ("Alibaba metadata", "100.100.100.200", METADATA, METADATA),
    ("AWS IPv6 metadata", "fd00:ec2::254", METADATA, METADATA),
    ("GCP IPv6 metadata", "fd20:ce::254", METADATA, METADATA),
    ("Azure WireServer", "168.63.129.16", METADATA, METADATA),
    ("unspecified IPv4", "0.0.0.0", NEVER, NEVER),
    ("unspecified IPv6", "::", NEVER, NEVER),
    ("multicast IPv4", "224.0.0.251", NEVER, NEVER),
    ("multicast IPv6", "ff02::1", NEVER, NEVER),
    ("reserved 240/4", "240.0.0.1", NEVER, NEVER),
    ("broadcast", "255.255.255.255", NEVER, NEVER),
    ("documentation", "192.0.2.10", NEVER, NEVER),
    ("benchmarking", "198.18.0.1", NEVER, NEVER),
]
CASES = [
    pytest.param(address, allow, strict if not allow else relaxed, id=f"{name}-private={allow}")
    for name, address, strict, relaxed in ADDRESS_CLASSES
    for allow in (False, True)
]
METADATA_NAMES = [
    "metadata.google.internal",
    "METADATA.Google.Internal.",
    "metadata",
    "metadata.goog",
    "instance-data",
    "instance-data.ec2.internal",
]


def host_of(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def assert_outcome(refused: TargetRefused | None, expected: str, address: str) -> None:
    """OK means no refusal; otherwise the reason names the address and the expected phrase."""
    if expected == OK:
        assert refused is None, refused.reason if refused else None
        return
    assert refused is not None, f"{address} was allowed"
    if expected == HINT:
        assert "non-public address" in refused.reason
        assert refused.hint == HINT
    else:
        assert expected in refused.reason
        assert refused.hint is None, "allowing private targets would not help"
        assert "TIERLINE_WEBHOOKS_ALLOW_PRIVATE_TARGETS=true" not in refused.reason


def resolving_to(address: str) -> AbstractResolver:
    """An aiohttp resolver that answers every name with `address` (a rebinding DNS)."""

    class Fixed(AbstractResolver):
        async def resolve(
            self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
        ) -> list[ResolveResult]:
            fam = socket.AF_INET6 if ":" in address else socket.AF_INET
            return [
                ResolveResult(hostname=host, host=address, port=port, family=fam, proto=0, flags=0)
            ]

        async def close(self) -> None:
            return None

    return Fixed()


async def refusal_of(check: object) -> TargetRefused | None:
    try:
        await check  # type: ignore[misc]
    except TargetRefused as exc:
        return exc
    return None


@pytest.mark.parametrize(("address", "allow_private", "expected"), CASES)
async def test_literal_address_at_subscription_time(
    address: str, allow_private: bool, expected: str
) -> None:
    url = f"http://{host_of(address)}:8080/hook"
    refused = await refusal_of(
        check_target(url, resolver_never_called, allow_private=allow_private)
    )
    assert_outcome(refused, expected, address)
    if refused is not None:
        # As the URL parser normalises it (IPv4-mapped forms come out in hex).
        assert refused.reason.startswith(f"{URL(url).host} is ")


@pytest.mark.parametrize(("address", "allow_private", "expected"), CASES)
async def test_name_resolving_to_address_at_subscription_time(
    address: str, allow_private: bool, expected: str
) -> None:
    async def resolver(host: str, port: int) -> list[str]:
        return ["93.184.216.34", address]

    url = "https://hooks.example.com/tierline"
    refused = await refusal_of(check_target(url, resolver, allow_private=allow_private))
    assert_outcome(refused, expected, address)
    if refused is not None:
        assert refused.reason.startswith("hooks.example.com resolves to ")


@pytest.mark.parametrize(("address", "allow_private", "expected"), CASES)
async def test_send_time_resolution_is_checked_again(
    address: str, allow_private: bool, expected: str
) -> None:
    guarded = GuardedResolver(resolving_to(address), allow_private=allow_private)
    refused = await refusal_of(guarded.resolve("hooks.example.com", 443))
    assert_outcome(refused, expected, address)


def claimed(url: str) -> Claimed:
    return Claimed(
        id=uuid.uuid4(),
        lease_token=uuid.uuid4(),
        subscription_id=uuid.uuid4(),
        event_id=uuid.uuid4(),
        failures=0,
        url=url,
        secret=new_secret(),
        previous_secret=None,
        body="{}",
        event_time=datetime.now(UTC),
    )


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/latest",
        "http://[fe80::1]/",
        "http://100.100.100.200/latest/meta-data/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://rebound.example.com/",
    ],
)
async def test_sender_with_private_targets_allowed_still_refuses_metadata(url: str) -> None:
    """The development setting must not open the metadata service; DNS may change after
    the subscription was checked, so the sender checks what the name resolves to now."""
    sender = Sender(
        cast(asyncpg.Pool, None),
        "",
        SenderConfig(retry_schedule=(5.0,), allow_private=True),
        resolver=resolving_to("169.254.169.254"),
        draw=lambda: 0.5,
    )
    async with sender.http_client():
        result = await sender.send(claimed(url))
    assert result.status_code is None
    assert result.error is not None and result.error.startswith("target refused: ")
    assert "metadata" in result.error or "link-local" in result.error
    assert (result.status, result.outcome) == ("failed", "retry")


@pytest.mark.parametrize("allow_private", [False, True])
@pytest.mark.parametrize("host", METADATA_NAMES)
async def test_metadata_host_names_are_refused_without_resolving(
    host: str, allow_private: bool
) -> None:
    url = f"http://{host}/computeMetadata/v1/"
    refused = await refusal_of(
        check_target(url, resolver_never_called, allow_private=allow_private)
    )
    assert refused is not None
    shown = URL(url).host  # lower case, as the URL parser gives it
    assert refused.reason == f"{shown} is a cloud metadata service, never a webhook target"
    assert refused.hint is None
    guarded = GuardedResolver(resolving_to("93.184.216.34"), allow_private=allow_private)
    with pytest.raises(TargetRefused, match="cloud metadata service"):
        await guarded.resolve(host, 80)


@pytest.mark.parametrize("allow_private", [False, True])
@pytest.mark.parametrize(
    ("url", "scheme"),
    [
        ("file:///etc/passwd", "file://"),
        ("ftp://hooks.example.com/", "ftp://"),
        ("gopher://127.0.0.1/", "gopher://"),
        ("javascript:alert(1)", "javascript://"),
        ("hooks.example.com/no-scheme", "a URL without a scheme"),
    ],
)
async def test_other_schemes_get_their_own_error(
    url: str, scheme: str, allow_private: bool
) -> None:
    refused = await refusal_of(
        check_target(url, resolver_never_called, allow_private=allow_private)
    )
    assert refused is not None
    assert refused.reason == f"only http and https URLs are allowed, not {scheme}"
    assert refused.hint is None, "allowing private targets does not allow other schemes"


@pytest.mark.parametrize("allow_private", [False, True])
async def test_a_name_that_does_not_resolve_is_refused(allow_private: bool) -> None:
    refused = await refusal_of(
        check_target("https://nowhere.example.com/", stub_resolver, allow_private=allow_private)
    )
    assert refused is not None
    assert refused.reason == "nowhere.example.com does not resolve"


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
    raise AssertionError("literal addresses and refused names must not be resolved")


@pytest.mark.parametrize(
    "url", ["https://hooks.example.com/tierline", "http://v6.example.com:8443/x", "http://1.1.1.1/"]
)
async def test_public_targets_pass(url: str) -> None:
    checked = await check_target(url, stub_resolver, allow_private=False)
    assert str(checked) == url


async def test_allow_private_accepts_private_names_but_not_metadata_behind_a_name() -> None:
    checked = await check_target("http://internal.example.com/", stub_resolver, allow_private=True)
    assert checked.host == "internal.example.com"
    with pytest.raises(TargetRefused, match=r"^metadata\.example\.com resolves to a link-local"):
        await check_target("http://metadata.example.com/", stub_resolver, allow_private=True)
    with pytest.raises(TargetRefused, match=r"^mixed\.example\.com resolves to a non-public"):
        await check_target("https://mixed.example.com/", stub_resolver, allow_private=False)


def test_address_allowed_means_public_unicast() -> None:
    allowed = [a for _, a, strict, _ in ADDRESS_CLASSES if strict == OK]
    refused = [a for _, a, strict, _ in ADDRESS_CLASSES if strict != OK]
    assert all(address_allowed(ipaddress.ip_address(a)) for a in allowed)
    assert not any(address_allowed(ipaddress.ip_address(a)) for a in refused)


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
    with pytest.raises(TargetRefused, match=r"internal\.example\.com resolves to a non-public"):
        await guarded.resolve("internal.example.com", 443)
    with pytest.raises(TargetRefused, match=r"mixed\.example\.com resolves to .*127\.0\.0\.1"):
        await guarded.resolve("mixed.example.com", 443)
