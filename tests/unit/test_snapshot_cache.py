"""The one-statement write path's snapshot cache: least recently used out, newest version in."""

from __future__ import annotations

from datetime import UTC, datetime

from tierline.domain.issue import Issue
from tierline.store.one_statement import CacheTrust, SnapshotCache

NOW = datetime(2026, 12, 1, 10, tzinfo=UTC)


def issue(issue_id: str, version: int = 1) -> Issue:
    return Issue(
        id=issue_id,
        vendor_id="acme-it",
        title="t",
        category="quality",
        priority="P3",
        status="open",
        tier=1,
        version=version,
        created_at=NOW,
        updated_at=NOW,
    )


def test_the_least_recently_used_issue_goes_first() -> None:
    cache = SnapshotCache(size=2)
    cache.put(issue("a"))
    cache.put(issue("b"))
    assert cache.get("a") is not None  # "a" is now the most recent
    cache.put(issue("c"))
    assert cache.get("b") is None
    assert cache.get("a") is not None and cache.get("c") is not None
    assert len(cache) == 2


def test_a_newer_version_replaces_the_cached_one() -> None:
    cache = SnapshotCache(size=4)
    cache.put(issue("a", 1))
    cache.put(issue("a", 2))
    cached = cache.get("a")
    assert cached is not None and cached.version == 2
    assert len(cache) == 1


def test_size_zero_caches_nothing() -> None:
    cache = SnapshotCache(size=0)
    cache.put(issue("a"))
    assert cache.get("a") is None


def test_a_forgotten_issue_is_read_again() -> None:
    cache = SnapshotCache(size=2)
    cache.put(issue("a"))
    cache.forget("a")
    cache.forget("never-cached")
    assert cache.get("a") is None and len(cache) == 0


def test_trust_ends_when_cached_issues_go_stale_and_comes_back_when_current() -> None:
    trust = CacheTrust(weight=0.05, limit=0.2)
    assert trust.trusted
    outcomes = []
    for _ in range(200):  # another process writes every other command on the same issues
        trust.record(stale=True)
        outcomes.append(trust.trusted)
        trust.record(stale=False)
    assert not trust.trusted
    assert outcomes.index(False) < 20, "stopped trusting too late"
    for _ in range(100):  # reads find the cache current again
        trust.record(stale=False)
    assert trust.trusted
    rare = CacheTrust()
    for n in range(1000):  # one stale issue in 50 (the SLA engine now and then) keeps trust
        rare.record(stale=n % 50 == 0)
        assert rare.trusted
