"""Vendors, governance and API keys."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from aiohttp import web
from pydantic import BaseModel

from tierline.api.keys import KEY_CACHE, POOL, REFERENCE
from tierline.api.problems import Problem
from tierline.api.registry import RouteTable, json_response, principal, read_model
from tierline.api.schemas import ApiKeyOut, ApiKeyPage, CreateApiKey, GovernanceOut
from tierline.domain.calendar import BusinessCalendar
from tierline.domain.governance import Governance, Vendor
from tierline.store import api_keys as key_store
from tierline.store import vendors as vendor_store

routes = RouteTable()
READERS = ("admin", "integration", "vendor", "viewer")


class VendorPage(BaseModel):
    """Vendors visible to the caller."""

    items: list[Vendor]
    next_cursor: str | None = None


@routes.route(
    "POST",
    "/v1/vendors",
    summary="Register a vendor",
    tag="vendors",
    request=Vendor,
    response=Vendor,
    status=201,
    roles=("admin",),
    errors=(400, 401, 403, 409, 422),
)
async def create_vendor(request: web.Request) -> web.Response:
    vendor, _ = await read_model(request, Vendor)
    reference = request.app[REFERENCE]
    if isinstance(vendor.calendar, str):
        await reference.refresh()
        assert reference.governance is not None
        if vendor.calendar not in reference.governance.calendars:
            raise Problem(
                422,
                "validation-failed",
                f"calendar {vendor.calendar!r} is not defined in the governance document",
                errors=[{"pointer": "#/calendar", "field": "calendar", "detail": "unknown"}],
            )
    _check_timezone(vendor)
    try:
        await vendor_store.insert_vendor(request.app[POOL], vendor)
    except vendor_store.DuplicateVendor:
        raise Problem(409, "duplicate", f"vendor {vendor.id!r} exists already") from None
    await reference.refresh()
    return json_response(vendor, status=201, headers={"Location": f"/v1/vendors/{vendor.id}"})


def _check_timezone(vendor: Vendor) -> None:
    from tierline.domain.calendar import CalendarSpec

    try:
        CalendarSpec(timezone=vendor.timezone)
    except ValueError as exc:
        raise Problem(
            422,
            "validation-failed",
            f"unknown time zone {vendor.timezone!r}",
            errors=[{"pointer": "#/timezone", "field": "timezone", "detail": str(exc)[:200]}],
        ) from None


@routes.route(
    "GET",
    "/v1/vendors",
    summary="List vendors",
    tag="vendors",
    response=VendorPage,
    roles=READERS,
    errors=(401,),
)
async def list_vendors(request: web.Request) -> web.Response:
    who = principal(request)
    vendors = await vendor_store.list_vendors(request.app[POOL])
    visible = [v for v in vendors if who.may_see(v.id)]
    return json_response(VendorPage(items=visible))


@routes.route(
    "GET",
    "/v1/vendors/{vendor_id}",
    summary="One vendor",
    tag="vendors",
    response=Vendor,
    roles=READERS,
    errors=(401, 404),
)
async def get_vendor(request: web.Request) -> web.Response:
    vendor_id = request.match_info["vendor_id"]
    vendor = await vendor_store.get_vendor(request.app[POOL], vendor_id)
    if vendor is None or not principal(request).may_see(vendor_id):
        raise Problem(404, "not-found", "no such vendor")
    return json_response(vendor)


async def _governance_body(request: web.Request) -> dict[str, object]:
    version, governance = await vendor_store.current_governance(request.app[POOL])
    return {"version": version, **governance.model_dump(mode="json")}


@routes.route(
    "GET",
    "/v1/governance",
    summary="The governance ladder and SLA policy",
    tag="governance",
    response=GovernanceOut,
    roles=READERS,
    errors=(401,),
)
async def get_governance(request: web.Request) -> web.Response:
    return json_response(await _governance_body(request))


@routes.route(
    "PUT",
    "/v1/governance",
    summary="Replace the governance document (records a policy-changed event)",
    tag="governance",
    request=Governance,
    response=GovernanceOut,
    roles=("admin",),
    errors=(400, 401, 403, 422),
)
async def put_governance(request: web.Request) -> web.Response:
    governance, _ = await read_model(request, Governance)
    for name, spec in governance.calendars.items():
        try:
            BusinessCalendar(spec).add(datetime(2026, 1, 1, tzinfo=UTC), 1)
        except ValueError as exc:
            raise Problem(
                422,
                "validation-failed",
                f"calendar {name!r}: {exc}",
                errors=[
                    {
                        "pointer": f"#/calendars/{name}",
                        "field": f"calendars.{name}",
                        "detail": str(exc),
                    }
                ],
            ) from None
    async with request.app[POOL].acquire() as conn:
        await vendor_store.replace_governance(conn, governance, datetime.now(UTC))
    await request.app[REFERENCE].refresh()
    return json_response(await _governance_body(request))


@routes.route(
    "POST",
    "/v1/api-keys",
    summary="Create an API key (the key is shown once)",
    tag="api-keys",
    request=CreateApiKey,
    response=ApiKeyOut,
    status=201,
    roles=("admin",),
    errors=(400, 401, 403, 422),
)
async def create_api_key(request: web.Request) -> web.Response:
    body, _ = await read_model(request, CreateApiKey)
    if (body.role == "vendor") != (body.vendor_id is not None):
        raise Problem(
            422,
            "validation-failed",
            "vendor_id is required for role vendor and not allowed otherwise",
            errors=[{"pointer": "#/vendor_id", "field": "vendor_id", "detail": "mismatch"}],
        )
    pool = request.app[POOL]
    if body.vendor_id is not None and await vendor_store.get_vendor(pool, body.vendor_id) is None:
        raise Problem(422, "unknown-vendor", f"vendor {body.vendor_id!r} is not registered")
    key, secret = await key_store.create_api_key(
        pool, name=body.name, role=body.role, vendor_id=body.vendor_id
    )
    return json_response(ApiKeyOut.of(key, secret), status=201)


@routes.route(
    "GET",
    "/v1/api-keys",
    summary="List API keys (never the keys themselves)",
    tag="api-keys",
    response=ApiKeyPage,
    roles=("admin",),
    errors=(401, 403),
)
async def list_api_keys(request: web.Request) -> web.Response:
    keys = await key_store.list_api_keys(request.app[POOL])
    return json_response(ApiKeyPage(items=[ApiKeyOut.of(k) for k in keys]))


@routes.route(
    "DELETE",
    "/v1/api-keys/{key_id}",
    summary="Revoke an API key at once",
    tag="api-keys",
    status=204,
    roles=("admin",),
    errors=(401, 403, 404, 409),
)
async def revoke_api_key(request: web.Request) -> web.Response:
    try:
        key_id = uuid.UUID(request.match_info["key_id"])
    except ValueError:
        raise Problem(404, "not-found", "no such API key") from None
    try:
        revoked = await key_store.revoke_api_key(request.app[POOL], key_id)
    except key_store.LastAdminKey:
        raise Problem(
            409,
            "last-admin-key",
            "this is the last active admin key; create another admin key before revoking it",
        ) from None
    if not revoked:
        raise Problem(404, "not-found", "no such API key")
    # Other processes hear of it by NOTIFY; this one must not serve it even for a moment.
    request.app[KEY_CACHE].invalidate()
    return web.Response(status=204)
