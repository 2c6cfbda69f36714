"""Vendors, governance and API keys."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from aiohttp import web
from pydantic import ValidationError

from tierline.api.idempotency import Rendered, answer_once
from tierline.api.keys import KEY_CACHE, POOL, REFERENCE, UNITS
from tierline.api.problems import Problem
from tierline.api.registry import (
    RouteTable,
    etag,
    if_match_version,
    json_response,
    precondition_failed,
    principal,
    read_model,
    validation_problem,
)
from tierline.api.schemas import (
    ApiKeyOut,
    ApiKeyPage,
    CreateApiKey,
    GovernanceOut,
    GovernanceUpdate,
    VendorOut,
    VendorPage,
)
from tierline.domain.calendar import BusinessCalendar
from tierline.domain.governance import Governance, InvalidVendorChange, Vendor, VendorChange
from tierline.service_layer.vendors import (
    VendorNotFound,
    VendorPreconditionFailed,
    VendorService,
)
from tierline.store import api_keys as key_store
from tierline.store import vendors as vendor_store
from tierline.store.unit_of_work import PostgresUnitOfWork
from tierline.store.vendors import VendorRecord

routes = RouteTable()
READERS = ("admin", "integration", "vendor", "viewer")


def _invalid(exc: InvalidVendorChange) -> Problem:
    """A 422 naming the field a vendor or vendor change got wrong."""
    return Problem(
        422,
        "validation-failed",
        exc.detail,
        errors=[{"pointer": f"#/{exc.field}", "field": exc.field, "detail": exc.detail}],
    )


def _vendor_response(
    record: VendorRecord, governance: Governance, status: int = 200
) -> web.Response:
    headers = {"ETag": etag(record.version)}
    if status == 201:
        headers["Location"] = f"/v1/vendors/{record.vendor.id}"
    return json_response(VendorOut.of(record, governance), status=status, headers=headers)


@routes.route(
    "POST",
    "/v1/vendors",
    summary="Register a vendor (a calendar without a timezone runs in the vendor's)",
    tag="vendors",
    request=Vendor,
    response=VendorOut,
    status=201,
    roles=("admin",),
    errors=(409, 422),
    headers=("ETag", "Location"),
    idempotent=True,
)
async def create_vendor(request: web.Request) -> web.Response:
    vendor, payload = await read_model(request, Vendor)
    _, governance = await vendor_store.current_governance(request.app[POOL])
    try:
        vendor.check(governance)
    except InvalidVendorChange as exc:
        raise _invalid(exc) from None

    async def work(uow: PostgresUnitOfWork) -> Rendered:
        await vendor_store.insert_vendor(uow.connection, vendor)
        body = VendorOut.of(VendorRecord(vendor, 1), governance).model_dump(mode="json")
        return 201, body, {"ETag": etag(1), "Location": f"/v1/vendors/{vendor.id}"}

    try:
        answer = await answer_once(request, payload, request.app[UNITS], work)
    except vendor_store.DuplicateVendor:
        raise Problem(409, "duplicate", f"vendor {vendor.id!r} exists already") from None
    await request.app[REFERENCE].refresh()
    return answer


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
    pool = request.app[POOL]
    records = await vendor_store.vendor_records(pool)
    _, governance = await vendor_store.current_governance(pool)
    visible = [VendorOut.of(r, governance) for r in records if who.may_see(r.vendor.id)]
    return json_response(VendorPage(items=visible))


@routes.route(
    "GET",
    "/v1/vendors/{vendor_id}",
    summary="One vendor (ETag: its version)",
    tag="vendors",
    response=VendorOut,
    roles=READERS,
    errors=(404,),
    headers=("ETag",),
)
async def get_vendor(request: web.Request) -> web.Response:
    vendor_id = request.match_info["vendor_id"]
    pool = request.app[POOL]
    record = await vendor_store.vendor_record(pool, vendor_id)
    if record is None or not principal(request).may_see(vendor_id):
        raise Problem(404, "not-found", "no such vendor")
    _, governance = await vendor_store.current_governance(pool)
    return _vendor_response(record, governance)


@routes.route(
    "PATCH",
    "/v1/vendors/{vendor_id}",
    summary=(
        "Change a vendor's name, zone, calendar or holidays (If-Match: its version); running"
        " SLA clocks of its issues are recomputed, keeping their elapsed business time"
    ),
    tag="vendors",
    request=VendorChange,
    response=VendorOut,
    roles=("admin",),
    errors=(404, 412, 422),
    if_match=True,
    headers=("ETag",),
)
async def patch_vendor(request: web.Request) -> web.Response:
    vendor_id = request.match_info["vendor_id"]
    if_match = if_match_version(request)
    change, _ = await read_model(request, VendorChange)
    pool = request.app[POOL]
    service = VendorService(pool, request.app[REFERENCE])
    try:
        record = await service.change(vendor_id, change, if_match)
    except VendorNotFound:
        raise Problem(404, "not-found", "no such vendor") from None
    except VendorPreconditionFailed as exc:
        raise precondition_failed("vendor", exc.current) from None
    except InvalidVendorChange as exc:
        raise _invalid(exc) from None
    except ValidationError as exc:
        raise validation_problem(exc) from None
    _, governance = await vendor_store.current_governance(pool)
    return _vendor_response(record, governance)


async def _governance_response(request: web.Request) -> web.Response:
    version, governance = await vendor_store.current_governance(request.app[POOL])
    body = GovernanceOut(version=version, **governance.model_dump())
    return json_response(body, headers={"ETag": etag(version)})


@routes.route(
    "GET",
    "/v1/governance",
    summary="The governance ladder and SLA policy",
    tag="governance",
    response=GovernanceOut,
    roles=READERS,
    headers=("ETag",),
)
async def get_governance(request: web.Request) -> web.Response:
    return await _governance_response(request)


@routes.route(
    "PUT",
    "/v1/governance",
    summary=(
        "Replace the governance document (records a policy-changed event); what GET returns"
        " is accepted as it is, and If-Match or its `version` guard against lost updates"
    ),
    tag="governance",
    request=GovernanceUpdate,
    response=GovernanceOut,
    roles=("admin",),
    if_match=True,
    headers=("ETag",),
)
async def put_governance(request: web.Request) -> web.Response:
    update, _ = await read_model(request, GovernanceUpdate)
    expected = if_match_version(request)
    if update.version is not None:
        if expected is not None and expected != update.version:
            raise Problem(
                412, "precondition-failed", "If-Match and version name different versions"
            )
        expected = update.version
    governance = Governance(**update.model_dump(exclude={"version"}))
    _check_calendars(governance)
    try:
        async with request.app[POOL].acquire() as conn:
            await vendor_store.replace_governance(
                conn, governance, datetime.now(UTC), expected_version=expected
            )
    except vendor_store.GovernanceMoved as exc:
        raise precondition_failed("governance document", exc.current) from None
    await request.app[REFERENCE].refresh()
    return await _governance_response(request)


def _check_calendars(governance: Governance) -> None:
    """Every named calendar can run a clock (a 422 naming the one that cannot)."""
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


@routes.route(
    "POST",
    "/v1/api-keys",
    summary="Create an API key (the key is shown once)",
    tag="api-keys",
    request=CreateApiKey,
    response=ApiKeyOut,
    status=201,
    roles=("admin",),
    errors=(422,),
    idempotent=True,
)
async def create_api_key(request: web.Request) -> web.Response:
    body, payload = await read_model(request, CreateApiKey)
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

    async def work(uow: PostgresUnitOfWork) -> Rendered:
        key, secret = await key_store.create_api_key(
            uow.connection, name=body.name, role=body.role, vendor_id=body.vendor_id
        )
        return 201, ApiKeyOut.of(key, secret).model_dump(mode="json"), {}

    # A retry shows the key again; the stored answer holds it sealed, like webhook secrets.
    return await answer_once(request, payload, request.app[UNITS], work, secret_field="key")


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
