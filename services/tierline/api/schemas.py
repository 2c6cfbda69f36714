"""Response and request bodies that are not domain commands."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tierline.domain.calendar import CalendarSpec
from tierline.domain.clocks import ClockKind, ClockState
from tierline.domain.events import Category, Status
from tierline.domain.governance import Governance, Priority
from tierline.domain.issue import Issue
from tierline.store.api_keys import ApiKey, Role
from tierline.store.vendors import VendorRecord


class ClockOut(BaseModel):
    """One SLA clock as clients see it."""

    id: str
    kind: ClockKind
    tier: int
    state: ClockState
    started_at: datetime
    due_at: datetime | None
    breached_at: datetime | None
    target_seconds: float
    elapsed_seconds: float
    warned: list[float]


class IssueOut(BaseModel):
    """An issue resource."""

    id: str
    vendor_id: str
    title: str
    description: str | None
    category: Category
    priority: Priority
    status: Status
    tier: int
    assignee: str | None
    external_ref: str | None
    reported_by: str | None
    version: int
    created_at: datetime
    updated_at: datetime
    sla: list[ClockOut]

    @classmethod
    def of(cls, issue: Issue) -> IssueOut:
        """The resource view of the write side's snapshot."""
        return cls(
            **issue.model_dump(exclude={"clocks", "status_before_hold", "clock_seq"}),
            sla=[
                ClockOut(**k.model_dump(include=set(ClockOut.model_fields))) for k in issue.clocks
            ],
        )


ISSUE_OUT_FIELDS = tuple(name for name in IssueOut.model_fields if name != "sla")
CLOCK_OUT_FIELDS = tuple(ClockOut.model_fields)


def issue_body(issue: Issue) -> dict[str, Any]:
    """`IssueOut.of(issue).model_dump(mode="json")`, from one dump of the snapshot: every
    command's answer is rendered, and building and validating the two models cost more than
    the rest of the rendering (tests/unit/test_issue_body.py keeps the two equal)."""
    raw = issue.model_dump(mode="json")
    body = {name: raw[name] for name in ISSUE_OUT_FIELDS}
    body["sla"] = [{name: clock[name] for name in CLOCK_OUT_FIELDS} for clock in raw["clocks"]]
    return body


class CloudEventOut(BaseModel):
    """An event in CloudEvents structured form."""

    model_config = ConfigDict(extra="allow")
    specversion: str
    id: str
    source: str
    type: str
    subject: str
    time: datetime
    sequence: str
    datacontenttype: str
    vendorid: str | None = Field(
        default=None,
        description="the issue's vendor (CloudEvents extension; absent on governance events)",
    )
    inboundsource: str | None = Field(
        default=None,
        description="the inbound source whose webhook caused the event (absent otherwise)",
    )
    inbounddelivery: str | None = Field(
        default=None,
        description="the tool's delivery id of that webhook (absent otherwise)",
    )
    data: dict[str, Any]


class EventPage(BaseModel):
    """An issue's history."""

    items: list[CloudEventOut]
    next_cursor: str | None = None


class CreateApiKey(BaseModel):
    """Body of `POST /v1/api-keys`."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    role: Role
    vendor_id: str | None = None


class ApiKeyOut(BaseModel):
    """A key's metadata; `key` appears only in the creation response."""

    id: str
    name: str
    role: Role
    vendor_id: str | None
    prefix: str
    created_at: datetime
    revoked_at: datetime | None
    key: str | None = None

    @classmethod
    def of(cls, key: ApiKey, secret: str | None = None) -> ApiKeyOut:
        """The view of a stored key."""
        return cls(
            id=str(key.id),
            name=key.name,
            role=key.role,
            vendor_id=key.vendor_id,
            prefix=key.prefix,
            created_at=key.created_at,
            revoked_at=key.revoked_at,
            key=secret,
        )


class ApiKeyPage(BaseModel):
    """Every key's metadata."""

    items: list[ApiKeyOut]
    next_cursor: str | None = None


class GovernanceOut(Governance):
    """The governance document with its version (also its ETag)."""

    version: int


class GovernanceUpdate(Governance):
    """A new governance document; what `GET /v1/governance` returns is accepted as it is."""

    version: int | None = Field(
        default=None,
        description="read-only: when sent, it must be the current version, as If-Match",
    )


class VendorOut(BaseModel):
    """A vendor as the API shows it: what was registered, its version and its effective zone."""

    model_config = ConfigDict(title="VendorOut")
    id: str
    name: str
    timezone: str
    calendar: str | CalendarSpec | None
    version: int = Field(
        description="Starts at 1 and grows with each change; the ETag, and what If-Match names",
        json_schema_extra={"readOnly": True},
    )
    effective_timezone: str = Field(
        description=(
            "The zone business hours are counted in: the calendar's own zone, else the vendor's"
        ),
        json_schema_extra={"readOnly": True},
    )

    @classmethod
    def of(cls, record: VendorRecord, governance: Governance) -> VendorOut:
        """The resource view of a stored vendor under the governance document in force."""
        vendor = record.vendor
        return cls(
            id=vendor.id,
            name=vendor.name,
            timezone=vendor.timezone,
            calendar=vendor.calendar,
            version=record.version,
            effective_timezone=vendor.effective_timezone(governance),
        )


class VendorPage(BaseModel):
    """Vendors visible to the caller."""

    items: list[VendorOut]
    next_cursor: str | None = None


class Health(BaseModel):
    """Liveness/readiness answer."""

    status: str
    checks: dict[str, str] = {}
