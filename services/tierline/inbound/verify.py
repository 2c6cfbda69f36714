"""Each tool's own webhook signature, checked over the raw body before anything parses it.

Every comparison is constant-time (`hmac.compare_digest`, or the Standard Webhooks library's).
A failure says why only to the logs and the delivery record; the HTTP answer is the same for
every failure and for a source that does not exist.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import secrets
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Literal

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tierline.webhooks.signing import new_secret

SourceType = Literal["jira", "zendesk", "github", "generic"]
SOURCE_TYPES: tuple[SourceType, ...] = ("jira", "zendesk", "github", "generic")
# Zendesk signs a timestamp with the body: one further from our clock than this is refused,
# so a captured delivery cannot be replayed later. Five minutes, as Standard Webhooks uses.
ZENDESK_TOLERANCE_SECONDS = 300
MAX_DELIVERY_ID = 200


class Unverified(Exception):
    """The request does not carry a valid signature for the source (reason for logs only)."""


def new_source_secret(kind: SourceType) -> str:
    """A fresh secret in the form the tool takes: `whsec_` for Standard Webhooks, else text."""
    return new_secret() if kind == "generic" else secrets.token_urlsafe(32)


def _hex_hmac(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def _same(expected: str, given: str) -> bool:
    return hmac.compare_digest(expected.encode(), given.encode("utf-8", "surrogateescape"))


def _hub_signature(
    header: str, live: Sequence[str], headers: Mapping[str, str], body: bytes
) -> None:
    """GitHub's and Jira's `sha256=<hex HMAC-SHA256 of the body>`."""
    given = headers.get(header, "")
    scheme, _, digest = given.partition("=")
    if scheme != "sha256" or not digest:
        raise Unverified(f"no sha256 signature in {header}")
    if not any(_same(_hex_hmac(s, body), digest.lower()) for s in live):
        raise Unverified("signature does not match")


def _zendesk(live: Sequence[str], headers: Mapping[str, str], body: bytes, now: float) -> None:
    """base64(HMAC-SHA256(timestamp + body)), with a timestamp close to our clock."""
    given = headers.get("X-Zendesk-Webhook-Signature", "")
    stamp = headers.get("X-Zendesk-Webhook-Signature-Timestamp", "")
    if not given or not stamp:
        raise Unverified("no Zendesk signature or timestamp")
    signed = stamp.encode("utf-8", "surrogateescape") + body
    expected = (
        base64.b64encode(hmac.new(s.encode(), signed, hashlib.sha256).digest()).decode()
        for s in live
    )
    if not any(_same(e, given) for e in expected):
        raise Unverified("signature does not match")
    at = timestamp_seconds(stamp)
    if at is None or abs(now - at) > ZENDESK_TOLERANCE_SECONDS:
        raise Unverified("timestamp missing or outside the window")


def timestamp_seconds(stamp: str) -> float | None:
    """Seconds since the epoch of an RFC 3339 time or a number of seconds; None if neither."""
    try:
        seconds = float(stamp)
    except ValueError:
        pass
    else:  # "nan" would compare as inside any window
        return seconds if math.isfinite(seconds) else None
    try:
        parsed = datetime.fromisoformat(stamp.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.timestamp() if parsed.tzinfo is not None else None


def _standard(live: Sequence[str], headers: Mapping[str, str], body: bytes) -> None:
    """Standard Webhooks, with the same library vendors use on our outbound webhooks."""
    plain = dict(headers)
    for secret in live:
        try:
            Webhook(secret).verify(body, plain, json_parse=False)
            return
        except (WebhookVerificationError, ValueError, TypeError, OverflowError):
            # The library lets malformed headers and bodies through as ValueError and friends.
            continue
    raise Unverified("no valid Standard Webhooks signature")


DELIVERY_HEADERS: dict[SourceType, str] = {
    "jira": "X-Atlassian-Webhook-Identifier",
    "zendesk": "X-Zendesk-Webhook-Invocation-Id",
    "github": "X-GitHub-Delivery",
    "generic": "webhook-id",
}


def verify(
    kind: SourceType, live: Sequence[str], headers: Mapping[str, str], body: bytes, now: float
) -> None:
    """Raise Unverified unless one of the live secrets signed this body (and headers)."""
    if not live:
        raise Unverified("the source has no readable secret")
    if kind == "jira":
        _hub_signature("X-Hub-Signature", live, headers, body)
    elif kind == "github":
        _hub_signature("X-Hub-Signature-256", live, headers, body)
    elif kind == "zendesk":
        _zendesk(live, headers, body, now)
    else:
        _standard(live, headers, body)


def delivery_id(kind: SourceType, headers: Mapping[str, str], body_id: object, body: bytes) -> str:
    """The tool's id for this delivery, stable across its retries.

    Zendesk's event `id` in the body is preferred (one per event, whatever the invocation);
    without any id the body's hash stands in, so identical retries still count once.
    """
    candidates = [body_id] if kind == "zendesk" else []
    candidates.append(headers.get(DELIVERY_HEADERS[kind]))
    for value in candidates:
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value).strip():
            return str(value).strip()[:MAX_DELIVERY_ID]
    return "sha256:" + hashlib.sha256(body).hexdigest()


def claimed_delivery_id(kind: SourceType, headers: Mapping[str, str]) -> str:
    """The id an unverified request claims, for the record of the refusal (proves nothing)."""
    return (headers.get(DELIVERY_HEADERS[kind]) or "-")[:MAX_DELIVERY_ID]
