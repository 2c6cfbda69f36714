"""Webhook endpoints: subscriptions, secret rotation, the delivery log and manual redelivery."""

from __future__ import annotations

import uuid

import structlog
from aiohttp import web

from tierline.api.idempotency import Rendered, answer_once
from tierline.api.keys import POOL, SETTINGS, UNITS
from tierline.api.paging import (
    PAGE_QUERY,
    VENDOR_PAGE_QUERY,
    cut_page,
    decode_cursor,
    page_limit,
    vendor_page,
)
from tierline.api.problems import Problem
from tierline.api.registry import (
    Query,
    RouteTable,
    json_response,
    principal,
    read_model,
)
from tierline.service_layer.issues import Principal
from tierline.store import vendors as vendor_store
from tierline.store.unit_of_work import PostgresUnitOfWork
from tierline.webhooks import deliveries as delivery_store
from tierline.webhooks import subscriptions as sub_store
from tierline.webhooks.models import (
    CreateWebhook,
    DeliveryOut,
    DeliveryPage,
    UpdateWebhook,
    WebhookOut,
    WebhookPage,
)
from tierline.webhooks.signing import new_secret
from tierline.webhooks.ssrf import Resolver, TargetRefused, check_target, system_resolver

log = structlog.get_logger(__name__)

routes = RouteTable()
# The host resolver for target checks; tests put a stub here.
RESOLVER: web.AppKey[Resolver] = web.AppKey("webhooks_resolver")
READERS = ("admin", "integration", "vendor", "viewer")
MANAGERS = ("admin", "integration", "vendor")
STATUSES = ("pending", "failed", "delivered", "dead")


def _uuid_param(request: web.Request, name: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(request.match_info[name])
    except ValueError:
        raise Problem(404, "not-found", f"no such {what}") from None


async def _visible_subscription(request: web.Request) -> sub_store.Subscription:
    """The path's subscription when the caller may see it; 404 otherwise (also cross-vendor)."""
    sub_id = _uuid_param(request, "webhook_id", "webhook")
    sub = await sub_store.get_subscription(request.app[POOL], sub_id)
    if sub is None or not _may_manage(principal(request), sub):
        raise Problem(404, "not-found", "no such webhook")
    return sub


def _may_manage(who: Principal, sub: sub_store.Subscription) -> bool:
    """Vendor keys see only subscriptions bound to their vendor."""
    return who.role != "vendor" or sub.vendor_id == who.vendor_id


async def _check_url(request: web.Request, url: str) -> None:
    """422 unless the URL is an allowed target (public address, http or https)."""
    settings = request.app[SETTINGS]
    resolver = request.app.get(RESOLVER, system_resolver)
    try:
        await check_target(url, resolver, allow_private=settings.webhooks_allow_private_targets)
    except TargetRefused as exc:
        raise Problem(
            422,
            "webhook-target-not-allowed",
            exc.reason + (f"; {exc.hint}" if exc.hint else ""),
            errors=[{"pointer": "#/url", "field": "url", "detail": exc.reason}],
        ) from None


async def _subscription_vendor(request: web.Request, body: CreateWebhook) -> str | None:
    """The vendor the new subscription is bound to; vendor keys are bound to their own."""
    who = principal(request)
    vendor_id = body.vendor_id
    if who.role == "vendor":
        if vendor_id is not None and vendor_id != who.vendor_id:
            raise Problem(422, "unknown-vendor", f"vendor {vendor_id!r} is not registered")
        vendor_id = who.vendor_id
    pool = request.app[POOL]
    if vendor_id is not None and await vendor_store.get_vendor(pool, vendor_id) is None:
        raise Problem(422, "unknown-vendor", f"vendor {vendor_id!r} is not registered")
    return vendor_id


@routes.route(
    "POST",
    "/v1/webhooks",
    idempotent=True,
    headers=("Location",),
    summary="Subscribe a URL to events (the signing secret is shown once)",
    tag="webhooks",
    request=CreateWebhook,
    response=WebhookOut,
    status=201,
    roles=MANAGERS,
    errors=(400, 401, 403, 422),
)
async def create_webhook(request: web.Request) -> web.Response:
    body, payload = await read_model(request, CreateWebhook)
    vendor_id = await _subscription_vendor(request, body)
    await _check_url(request, body.url)

    async def work(uow: PostgresUnitOfWork) -> Rendered:
        secret = new_secret()
        sub = await sub_store.insert_subscription(
            uow.connection,
            url=body.url,
            event_types=body.event_types,
            vendor_id=vendor_id,
            description=body.description,
            secret=secret,
        )
        log.info("webhook_subscription_created", webhook_id=str(sub.id), vendor_id=vendor_id)
        answer = WebhookOut.of(sub, secret).model_dump(mode="json")
        return 201, answer, {"Location": f"/v1/webhooks/{sub.id}"}

    return await answer_once(request, payload, request.app[UNITS], work, secret_field="secret")


@routes.route(
    "GET",
    "/v1/webhooks",
    summary="List subscriptions (vendor keys see their vendor's only)",
    tag="webhooks",
    response=WebhookPage,
    roles=READERS,
    query=VENDOR_PAGE_QUERY,
    errors=(401, 422),
)
async def list_webhooks(request: web.Request) -> web.Response:
    subs, cursor = await vendor_page(
        request, request.app[POOL], sub_store.list_subscriptions, lambda s: (s.created_at, s.id)
    )
    return json_response(WebhookPage(items=[WebhookOut.of(s) for s in subs], next_cursor=cursor))


@routes.route(
    "GET",
    "/v1/webhooks/{webhook_id}",
    summary="One subscription",
    tag="webhooks",
    response=WebhookOut,
    roles=READERS,
    errors=(401, 404),
)
async def get_webhook(request: web.Request) -> web.Response:
    return json_response(WebhookOut.of(await _visible_subscription(request)))


@routes.route(
    "PATCH",
    "/v1/webhooks/{webhook_id}",
    summary="Change a subscription's URL, types or description, or re-enable it",
    tag="webhooks",
    request=UpdateWebhook,
    response=WebhookOut,
    roles=MANAGERS,
    errors=(400, 401, 403, 404, 422),
)
async def update_webhook(request: web.Request) -> web.Response:
    sub = await _visible_subscription(request)
    body, _ = await read_model(request, UpdateWebhook)
    changes = body.model_dump(exclude_unset=True)
    if "url" in changes:
        await _check_url(request, changes["url"])
    updated = await sub_store.update_subscription(request.app[POOL], sub.id, changes)
    if updated is None:
        raise Problem(404, "not-found", "no such webhook")
    if updated.active and not sub.active:
        # Its queued deliveries are due again.
        await delivery_store.wake_senders(request.app[POOL])
    log.info("webhook_subscription_updated", webhook_id=str(sub.id), fields=sorted(changes))
    return json_response(WebhookOut.of(updated))


@routes.route(
    "DELETE",
    "/v1/webhooks/{webhook_id}",
    summary="Delete a subscription and its delivery log",
    tag="webhooks",
    status=204,
    roles=MANAGERS,
    errors=(401, 403, 404),
)
async def delete_webhook(request: web.Request) -> web.Response:
    sub = await _visible_subscription(request)
    if not await sub_store.delete_subscription(request.app[POOL], sub.id):
        raise Problem(404, "not-found", "no such webhook")
    log.info("webhook_subscription_deleted", webhook_id=str(sub.id))
    return web.Response(status=204)


@routes.route(
    "POST",
    "/v1/webhooks/{webhook_id}/rotate-secret",
    idempotent=True,
    summary="Issue a new signing secret; the previous one keeps signing for 24 hours",
    tag="webhooks",
    response=WebhookOut,
    roles=MANAGERS,
    errors=(401, 403, 404, 422),
)
async def rotate_webhook_secret(request: web.Request) -> web.Response:
    sub = await _visible_subscription(request)

    async def work(uow: PostgresUnitOfWork) -> Rendered:
        secret = new_secret()
        rotated = await sub_store.rotate_secret(uow.connection, sub.id, secret)
        if rotated is None:
            raise Problem(404, "not-found", "no such webhook")
        log.info("webhook_secret_rotated", webhook_id=str(sub.id))
        return 200, WebhookOut.of(rotated, secret).model_dump(mode="json"), {}

    return await answer_once(request, {}, request.app[UNITS], work, secret_field="secret")


@routes.route(
    "GET",
    "/v1/webhooks/{webhook_id}/deliveries",
    summary="The delivery log: each delivery's status, response code, attempts and next attempt",
    tag="webhooks",
    response=DeliveryPage,
    roles=READERS,
    query={
        "status": Query(
            "only deliveries in this state",
            {"type": "string", "enum": ["pending", "failed", "delivered", "dead"]},
        ),
        "event_id": Query("only the delivery of this event", {"type": "string", "format": "uuid"}),
        **PAGE_QUERY,
    },
    errors=(401, 404, 422),
)
async def list_webhook_deliveries(request: web.Request) -> web.Response:
    sub = await _visible_subscription(request)
    limit = page_limit(request)
    status = request.query.get("status")
    if status is not None and status not in STATUSES:
        raise Problem(
            422,
            "validation-failed",
            f"status must be one of {', '.join(STATUSES)}",
            errors=[{"pointer": "#/query/status", "field": "status", "detail": "unknown"}],
        )
    event_id = _event_id_query(request)
    pool = request.app[POOL]
    found = await delivery_store.list_deliveries(
        pool,
        sub.id,
        status=status,
        event_id=event_id,
        before=decode_cursor(request),
        limit=limit + 1,
    )
    found, cursor = cut_page(found, limit, lambda d: (d.created_at, d.id))
    attempts = await delivery_store.attempts_of(pool, [d.id for d in found])
    items = [DeliveryOut.of(d, attempts[d.id]) for d in found]
    return json_response(DeliveryPage(items=items, next_cursor=cursor))


def _event_id_query(request: web.Request) -> uuid.UUID | None:
    raw = request.query.get("event_id")
    if raw is None:
        return None
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise Problem(
            422,
            "validation-failed",
            "event_id must be a UUID",
            errors=[{"pointer": "#/query/event_id", "field": "event_id", "detail": "not a UUID"}],
        ) from None


@routes.route(
    "POST",
    "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/retry",
    summary="Queue a failed or dead delivery again, due now, with a fresh retry schedule",
    tag="webhooks",
    response=DeliveryOut,
    status=202,
    roles=MANAGERS,
    errors=(401, 403, 404, 409),
)
async def retry_webhook_delivery(request: web.Request) -> web.Response:
    sub = await _visible_subscription(request)
    delivery_id = _uuid_param(request, "delivery_id", "delivery")
    pool = request.app[POOL]
    if not sub.active:
        raise Problem(
            409,
            "webhook-disabled",
            f"the webhook is disabled ({sub.disabled_reason or 'by request'}); "
            're-enable it with PATCH {"active": true} first',
        )
    delivery = await delivery_store.requeue(pool, sub.id, delivery_id)
    if delivery is None:
        current = await delivery_store.get_delivery(pool, sub.id, delivery_id)
        if current is None:
            raise Problem(404, "not-found", "no such delivery")
        state = "an attempt is in flight" if current.in_flight else f"it is {current.status}"
        raise Problem(
            409, "delivery-not-retryable", f"only failed or dead deliveries are retried; {state}"
        )
    attempts = await delivery_store.attempts_of(pool, [delivery.id])
    log.info("webhook_delivery_requeued", webhook_id=str(sub.id), delivery_id=str(delivery_id))
    return json_response(DeliveryOut.of(delivery, attempts[delivery.id]), status=202)
