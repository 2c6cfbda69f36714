"""The isolation matrix: every route of the route table, called by every kind of outsider.

Two vendors share one running stack (all roles): the victim B owns issues with external refs,
comments, events, read-model rows, a scorecard, webhooks with delivered and dead deliveries, a
vendor API key, Idempotency-Keys it used and list cursors minted for it; the intruder A owns the
same kinds of objects. Each route of `tierline.api.app.all_routes()` is then called by four
principals, with B's ids filled into its path:

- A's vendor key: B's objects answer 404 exactly as missing ones do; routes that do not grant
  `vendor` answer 403; lists, filters (`vendor_id=B`) and B's cursors show none of B's data;
  B's external refs answer 409 `external-ref-conflict`; `vendor_id` B in a body answers 422
  `unknown-vendor`, like a vendor that does not exist; B's Idempotency-Keys replayed by A never
  return B's stored answers.
- a `viewer` key: every write answers 403 (and changes nothing), reads answer 200.
- an `integration` key: admin-only routes answer 403.
- no key: every non-public route answers 401 problem `unauthenticated`.

Every answer to A, to a refused viewer or integration call and to an anonymous call is searched
(body and headers) for B's identifying strings: ids, titles, texts, external refs, webhook URLs,
secrets, key ids and names, B's vendor id and name. A string the request itself carried is not
counted (an echo discloses nothing).

Size when written: 37 routes x 4 principals = 148 cells holding 213 cases (vendor 79, viewer
55, integration 24, no key 55), 331 requests with the twins that compare an answer about B's
object with one about a missing object; the test prints the current figures. `MATRIX` must
name every route with the roles it grants: `test_every_route_is_in_the_matrix` fails for a
route that is missing or whose roles changed, so a new route is covered or breaks the build.
The rules are in docs/isolation.md.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from tests.fixtures import inbound, infra
from tests.fixtures.board import BoardSession
from tests.fixtures.stack import Stack, running_stack, stack_settings
from tests.fixtures.tenants import (
    Receiver,
    Tenant,
    call,
    leaked,
    receiver_running,
    seed_inbound,
    seed_tenant,
)
from tierline.api.app import all_routes
from tierline.api.registry import Operation
from tierline.domain import commands as c

pytestmark = [pytest.mark.postgres, pytest.mark.kafka]

ALL_ROLES = frozenset({"admin", "integration", "vendor", "viewer"})
ADMIN = frozenset({"admin"})
WRITERS = frozenset({"admin", "integration", "vendor"})
PRINCIPALS = ("vendor", "viewer", "integration", "anonymous")
PARAM = re.compile(r"{(\w+)}")


@dataclass(frozen=True)
class World:
    """Both tenants and what the routes need to address them."""

    victim: Tenant
    intruder: Tenant
    governance: dict[str, Any]


@dataclass(frozen=True)
class Request:
    """One HTTP request of the matrix."""

    method: str
    path: str
    body: Any = None
    query: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    def sent(self) -> str:
        """Everything the request carries, for telling echoes from leaks."""
        parts = [self.path, json.dumps(self.body), *self.query.values(), *self.headers.values()]
        return "\n".join(parts)


@dataclass(frozen=True)
class Case:
    """A request and the answer the contract requires."""

    name: str
    request: Request
    status: int
    problem: str | None = None
    twin: Request | None = None  # the same request about something that does not exist
    empty: bool = False  # a page that must have no items
    owner: str | None = None  # the vendor every item (or the created object) must belong to
    search: bool = True  # search the answer for the victim's strings


Targets = Callable[[World], list[dict[str, str]]]
Body = Callable[[World], Any]
Cases = Callable[[World], list[Case]]


@dataclass(frozen=True)
class Entry:
    """How the matrix calls one route: the roles it grants, B's objects, a valid body."""

    roles: frozenset[str] | None  # None: public
    targets: Targets | None = None  # path parameters naming B's objects; default: by name
    body: Body | None = None  # a body that would succeed for an allowed caller
    vendor: Cases | None = None  # what A's vendor key tries beyond B's objects
    replay: tuple[int, str] = (404, "not-found")  # A replaying B's Idempotency-Keys
    public: Cases | None = None  # public routes with a path: what anyone tries (default: GET)


def ghost(value: str) -> str:
    """A value of the same shape that names nothing."""
    try:
        uuid.UUID(value)
    except ValueError:
        return f"ghost-{uuid.uuid4().hex[:8]}"
    return str(uuid.uuid4())


def issue_body(vendor_id: str) -> dict[str, Any]:
    return {"vendor_id": vendor_id, "title": "Intruder", "category": "quality", "priority": "P3"}


def hook_body(vendor_id: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"url": "http://127.0.0.1:9/intruder", "event_types": ["*"]}
    return body if vendor_id is None else {**body, "vendor_id": vendor_id}


def open_issue_cases(w: World) -> list[Case]:
    b, a = w.victim, w.intruder
    foreign = issue_body(b.vendor_id)
    cases = [
        Case(
            "vendor_id=B",
            Request("POST", "/v1/issues", foreign),
            422,
            "unknown-vendor",
            twin=Request("POST", "/v1/issues", issue_body(ghost(b.vendor_id))),
        ),
        Case(
            "B's Idempotency-Key on A's own issue",
            Request(
                "POST",
                "/v1/issues",
                issue_body(a.vendor_id),
                headers={"Idempotency-Key": b.replays[0].key},
            ),
            201,
            owner=a.vendor_id,
        ),
    ]
    for ref in b.external_refs:
        mine = {**issue_body(a.vendor_id), "external_ref": ref}
        theirs = {**foreign, "external_ref": ref}
        cases.append(
            Case(
                f"B's external_ref {ref}",
                Request("POST", "/v1/issues", mine),
                409,
                "external-ref-conflict",
            )
        )
        cases.append(
            Case(
                f"B's external_ref {ref}, vendor_id=B",
                Request("POST", "/v1/issues", theirs),
                422,
                "unknown-vendor",
            )
        )
    return cases


def list_issue_cases(w: World) -> list[Case]:
    b, a = w.victim, w.intruder
    get = "/v1/issues"
    return [
        Case("no filter", Request("GET", get, query={"limit": "500"}), 200, owner=a.vendor_id),
        Case("vendor_id=B", Request("GET", get, query={"vendor_id": b.vendor_id}), 200, empty=True),
        Case(
            "vendor_id=A,B",
            Request("GET", get, query={"vendor_id": f"{a.vendor_id},{b.vendor_id}"}),
            200,
            owner=a.vendor_id,
        ),
        Case(
            "B's cursor",
            Request("GET", get, query={"cursor": b.list_cursor, "limit": "1"}),
            422,
            "validation-failed",
        ),
        Case(
            "B's cursor, vendor_id=B",
            Request("GET", get, query={"cursor": b.list_cursor, "vendor_id": b.vendor_id}),
            422,
            "validation-failed",
        ),
    ]


def list_webhook_cases(w: World) -> list[Case]:
    b, a = w.victim, w.intruder
    get = "/v1/webhooks"
    return [
        Case("no filter", Request("GET", get), 200, owner=a.vendor_id),
        Case(
            "vendor_id=B",
            Request("GET", get, query={"vendor_id": b.vendor_id}),
            200,
            owner=a.vendor_id,
        ),
        Case(
            "B's cursor",
            Request("GET", get, query={"cursor": b.webhook_cursor}),
            200,
            owner=a.vendor_id,
        ),
    ]


def create_webhook_cases(w: World) -> list[Case]:
    b = w.victim
    return [
        Case(
            "vendor_id=B",
            Request("POST", "/v1/webhooks", hook_body(b.vendor_id)),
            422,
            "unknown-vendor",
            twin=Request("POST", "/v1/webhooks", hook_body(ghost(b.vendor_id))),
        ),
        # Unbound (global) subscriptions get every vendor's events: a vendor key's is bound.
        Case(
            "no vendor_id",
            Request("POST", "/v1/webhooks", hook_body(None)),
            201,
            owner=w.intruder.vendor_id,
        ),
    ]


def update_webhook_cases(w: World) -> list[Case]:
    mine = w.intruder.webhook_ids[0]
    move = Request("PATCH", f"/v1/webhooks/{mine}", {"vendor_id": w.victim.vendor_id})
    return [Case("A's webhook moved to vendor B", move, 422, "validation-failed")]


def delivery_cases(w: World) -> list[Case]:
    mine = w.intruder.webhook_ids[0]
    path = f"/v1/webhooks/{mine}/deliveries"
    return [
        Case(
            f"A's webhook, B's event {e}",
            Request("GET", path, query={"event_id": e}),
            200,
            empty=True,
        )
        for e in w.victim.event_ids[:2]
    ]


def retry_targets(w: World) -> list[dict[str, str]]:
    return [{"webhook_id": w.victim.webhook_ids[1], "delivery_id": w.victim.dead_delivery_id}]


def retry_cases(w: World) -> list[Case]:
    mine = w.intruder.webhook_ids[1]
    dead = w.victim.dead_delivery_id
    path = "/v1/webhooks/{}/deliveries/{}/retry"
    return [
        Case(
            "A's webhook, B's delivery",
            Request("POST", path.format(mine, dead)),
            404,
            "not-found",
            twin=Request("POST", path.format(mine, ghost(dead))),
        )
    ]


def read(path: str) -> Cases:
    """A route every reader may call, with nothing of B's in its path."""
    return lambda w: [Case("read", Request("GET", path), 200)]


COMMAND_BODIES: dict[str, dict[str, Any]] = {
    "acknowledge": {"note": "seen"},
    "assign": {"assignee": "intruder"},
    "comments": {"body": "intruder was here"},
    "priority": {"priority": "P1"},
    "escalate": {"reason": "intruder"},
    "deescalate": {"reason": "intruder"},
    "hold": {"reason": "intruder"},
    "resume": {},
    "resolve": {"resolution": "intruder"},
    "reopen": {"reason": "intruder"},
    "close": {},
}


def _command_entries() -> dict[tuple[str, str], Entry]:
    entries = {}
    for model in c.ISSUE_COMMANDS:
        body = COMMAND_BODIES.get(model.route)
        if body is not None:
            entries[("POST", f"/v1/issues/{{issue_id}}/{model.route}")] = Entry(
                WRITERS, body=lambda w, body=body: body
            )
    return entries


MATRIX: dict[tuple[str, str], Entry] = {
    ("GET", "/healthz"): Entry(None),
    ("GET", "/readyz"): Entry(None),
    ("GET", "/metrics"): Entry(None),
    ("GET", "/openapi.json"): Entry(None),
    ("POST", "/v1/vendors"): Entry(
        ADMIN, body=lambda w: {"id": f"made-{uuid.uuid4().hex[:8]}", "name": "Made"}
    ),
    ("GET", "/v1/vendors"): Entry(ALL_ROLES, vendor=read("/v1/vendors")),
    ("GET", "/v1/vendors/{vendor_id}"): Entry(ALL_ROLES),
    ("PATCH", "/v1/vendors/{vendor_id}"): Entry(ADMIN, body=lambda w: {"name": "Renamed"}),
    ("GET", "/v1/governance"): Entry(ALL_ROLES, vendor=read("/v1/governance")),
    ("PUT", "/v1/governance"): Entry(ADMIN, body=lambda w: w.governance),
    ("POST", "/v1/api-keys"): Entry(ADMIN, body=lambda w: {"name": "escalated", "role": "admin"}),
    ("GET", "/v1/api-keys"): Entry(ADMIN),
    ("DELETE", "/v1/api-keys/{key_id}"): Entry(ADMIN),
    ("POST", "/v1/issues"): Entry(
        WRITERS,
        body=lambda w: issue_body(w.victim.vendor_id),
        vendor=open_issue_cases,
        replay=(422, "unknown-vendor"),
    ),
    ("GET", "/v1/issues/{issue_id}"): Entry(ALL_ROLES),
    ("GET", "/v1/issues/{issue_id}/events"): Entry(ALL_ROLES),
    **_command_entries(),
    ("GET", "/v1/issues"): Entry(ALL_ROLES, vendor=list_issue_cases),
    ("GET", "/v1/vendors/{vendor_id}/scorecard"): Entry(ALL_ROLES),
    ("POST", "/v1/webhooks"): Entry(
        WRITERS,
        body=lambda w: hook_body(w.victim.vendor_id),
        vendor=create_webhook_cases,
        replay=(422, "unknown-vendor"),
    ),
    ("GET", "/v1/webhooks"): Entry(ALL_ROLES, vendor=list_webhook_cases),
    ("GET", "/v1/webhooks/{webhook_id}"): Entry(ALL_ROLES),
    ("PATCH", "/v1/webhooks/{webhook_id}"): Entry(
        WRITERS,
        body=lambda w: {"description": "hijacked", "active": True},
        vendor=update_webhook_cases,
    ),
    ("DELETE", "/v1/webhooks/{webhook_id}"): Entry(WRITERS),
    ("POST", "/v1/webhooks/{webhook_id}/rotate-secret"): Entry(WRITERS),
    ("GET", "/v1/webhooks/{webhook_id}/deliveries"): Entry(ALL_ROLES, vendor=delivery_cases),
    ("POST", "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/retry"): Entry(
        WRITERS, targets=retry_targets, vendor=retry_cases
    ),
}

# --- inbound sources and the inbound receiver ----------------------------------------------------
# Sources are managed by admins only; every reader sees them, a vendor key only its vendor's.
# The receiver is public (signed by the tool, not by a key): for B's source, an unsigned
# delivery or one signed with A's secret answers 401 exactly as for a source that does not exist.


def source_targets(w: World) -> list[dict[str, str]]:
    return [{"source_id": s} for s in w.victim.source_ids]


def list_source_cases(w: World) -> list[Case]:
    get = "/v1/inbound-sources"
    return [
        Case("no filter", Request("GET", get), 200, owner=w.intruder.vendor_id),
        Case(
            "vendor_id=B",
            Request("GET", get, query={"vendor_id": w.victim.vendor_id}),
            200,
            owner=w.intruder.vendor_id,
        ),
    ]


def jira_delivery(w: World) -> dict[str, Any]:
    return inbound.jira_created(f"GOV-{uuid.uuid4().hex[:6].upper()}")


def receive_cases(w: World) -> list[Case]:
    cases = []
    for source in w.victim.source_ids:
        path = f"/v1/inbound/{source}"
        body = jira_delivery(w)
        raw = inbound.body_of(body)
        forged = inbound.jira_headers(w.intruder.source_secret, raw)
        for name, headers in (("unsigned", {}), ("signed with A's secret", forged)):
            request = Request("POST", path, body, headers=headers)
            ghostly = Request("POST", f"/v1/inbound/{ghost(source)}", body, headers=headers)
            cases.append(Case(name, request, 401, "unauthenticated", twin=ghostly))
    return cases


INBOUND_MATRIX: dict[tuple[str, str], Entry] = {
    ("POST", "/v1/inbound-sources"): Entry(
        ADMIN, body=lambda w: {"name": "intruder", "type": "jira", "vendor_id": w.victim.vendor_id}
    ),
    ("GET", "/v1/inbound-sources"): Entry(ALL_ROLES, vendor=list_source_cases),
    ("GET", "/v1/inbound-sources/{source_id}"): Entry(ALL_ROLES, targets=source_targets),
    ("PATCH", "/v1/inbound-sources/{source_id}"): Entry(
        ADMIN, targets=source_targets, body=lambda w: {"name": "hijacked"}
    ),
    ("DELETE", "/v1/inbound-sources/{source_id}"): Entry(ADMIN, targets=source_targets),
    ("POST", "/v1/inbound-sources/{source_id}/rotate-secret"): Entry(
        ADMIN, targets=source_targets, body=lambda w: {}
    ),
    ("GET", "/v1/inbound-sources/{source_id}/deliveries"): Entry(ALL_ROLES, targets=source_targets),
    ("POST", "/v1/inbound/{source_id}"): Entry(
        None, targets=source_targets, body=jira_delivery, public=receive_cases
    ),
}
MATRIX.update(INBOUND_MATRIX)

# Which of the victim's objects a path parameter names, when a route has just one.
PARAMS: dict[str, Callable[[Tenant], list[str]]] = {
    "issue_id": lambda t: t.issue_ids,
    "vendor_id": lambda t: [t.vendor_id],
    "webhook_id": lambda t: t.webhook_ids,
    "key_id": lambda t: [t.key_id],
}


def operations() -> list[Operation]:
    """Every operation the API serves."""
    return [op for table in all_routes() for op in table.operations]


def granted(op: Operation) -> frozenset[str] | None:
    """The roles an operation grants (None: public, no key needed)."""
    if op.public:
        return None
    return op.roles if op.roles is not None else ALL_ROLES


def targets(op: Operation, entry: Entry, world: World) -> list[dict[str, str]]:
    """Path parameters naming B's objects, one dict per object."""
    if entry.targets is not None:
        return entry.targets(world)
    names = PARAM.findall(op.path)
    if not names:
        return [{}]
    (name,) = names
    return [{name: value} for value in PARAMS[name](world.victim)]


def twin(op: Operation, params: dict[str, str], request: Request) -> Request | None:
    """The same request about objects that do not exist (None when the path names nothing)."""
    if not params:
        return None
    ghostly = op.path.format(**{k: ghost(v) for k, v in params.items()})
    return Request(op.method, ghostly, request.body)


def cases_for(principal: str, op: Operation, world: World) -> list[Case]:
    """The cell (principal, route): what is sent and what must come back."""
    entry = MATRIX[(op.method, op.path)]
    roles = granted(op)
    body = entry.body(world) if entry.body is not None else None
    aimed = [(t, Request(op.method, op.path.format(**t), body)) for t in targets(op, entry, world)]
    if roles is None:
        if entry.public is not None:
            return entry.public(world)
        return [Case("public", Request(op.method, op.path), 200)]
    if principal == "anonymous":
        return [Case("no key", r, 401, "unauthenticated", twin=twin(op, t, r)) for t, r in aimed]
    if principal not in roles or (principal == "viewer" and op.method != "GET"):
        return [Case("refused role", r, 403, "forbidden", twin=twin(op, t, r)) for t, r in aimed]
    if principal != "vendor":
        # Not bound to a vendor: reads of B's objects are theirs to make (and prove the ids
        # real); their writes are allowed and not probed.
        return [Case("read", r, 200, search=False) for _, r in aimed if op.method == "GET"]
    return vendor_cases(op, entry, world, aimed)


def vendor_cases(
    op: Operation, entry: Entry, world: World, aimed: list[tuple[dict[str, str], Request]]
) -> list[Case]:
    """A's vendor key against B: 404 like a missing object, plus the route's own tricks."""
    found: list[Case] = []
    if PARAM.search(op.path):
        for params, request in aimed:
            found.append(
                Case(f"B's {params}", request, 404, "not-found", twin=twin(op, params, request))
            )
    if entry.vendor is not None:
        found += entry.vendor(world)
    status, problem = entry.replay
    for replay in world.victim.replays:
        if (replay.method, replay.template) == (op.method, op.path):
            request = Request(
                op.method, replay.path, replay.body, headers={"Idempotency-Key": replay.key}
            )
            found.append(Case(f"replay of B's key {replay.key}", request, status, problem))
    return found


@dataclass(frozen=True)
class Answer:
    status: int
    text: str
    headers: str

    def problem_type(self) -> str | None:
        try:
            kind = json.loads(self.text).get("type")
        except (ValueError, AttributeError):
            return None
        return kind.rsplit("/", 1)[-1] if isinstance(kind, str) else None

    def shape(self, *values: str) -> tuple[int, str | None, str]:
        """Status, problem type and detail with the addressed values blanked out."""
        try:
            detail = str(json.loads(self.text).get("detail"))
        except (ValueError, AttributeError):
            detail = self.text
        for value in values:
            detail = detail.replace(value, "<x>")
        return self.status, self.problem_type(), detail


def owned_by(vendor_id: str, data: Any) -> list[str]:
    """Complaints about items (or the object) that belong to another vendor."""
    items = data.get("items", [data])
    others = sorted({str(i.get("vendor_id")) for i in items} - {vendor_id})
    return [f"holds objects of vendor(s) {others}"] if others else []


async def send(http: aiohttp.ClientSession, request: Request) -> Answer:
    async with http.request(
        request.method,
        request.path,
        json=request.body,
        params=request.query,
        headers=request.headers,
    ) as resp:
        text = await resp.text()
        headers = "\n".join(f"{k}: {v}" for k, v in resp.headers.items())
        return Answer(resp.status, text, headers)


async def check(http: aiohttp.ClientSession, case: Case, secrets: dict[str, str]) -> list[str]:
    """What is wrong with the answer to one case (nothing, when it holds)."""
    answer = await send(http, case.request)
    wrong = []
    if answer.status != case.status:
        wrong.append(f"expected {case.status}, got {answer.status}: {answer.text[:200]}")
    elif case.problem is not None and answer.problem_type() != case.problem:
        wrong.append(f"expected problem {case.problem}, got {answer.text[:200]}")
    if case.empty and answer.status == 200 and json.loads(answer.text).get("items"):
        wrong.append(f"expected no items, got {answer.text[:200]}")
    if case.owner is not None and answer.status == case.status:
        wrong += owned_by(case.owner, json.loads(answer.text))
    if case.search:
        found = leaked(secrets, case.request.sent(), answer.text + "\n" + answer.headers)
        if found:
            wrong.append("leaked " + ", ".join(found))
    if case.twin is not None:
        other = await send(http, case.twin)
        addressed = [case.twin.path, case.twin.sent(), case.request.sent()]
        values = re.findall(r"[\w.:-]{6,}", " ".join(addressed))
        if answer.shape(*values) != other.shape(*values):
            wrong.append(
                f"tells B's object from a missing one: {answer.shape(*values)} "
                f"vs {other.shape(*values)}"
            )
    return wrong


# --- the stack -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def isolation_stack(pg_admin_dsn: str, tansu: str) -> AsyncIterator[tuple[Stack, Receiver]]:
    """Every role on a database and topic of its own; webhooks may call loopback and give up
    after two quick retries (so a dead delivery exists for the retry route)."""
    name = await infra.clone_database(pg_admin_dsn)
    settings = stack_settings(
        infra.with_database(pg_admin_dsn, name),
        tansu,
        f"test.{uuid.uuid4().hex[:12]}",
        webhooks_allow_private_targets=True,
        webhooks_retry_schedule=[0.1, 0.1],
        webhooks_timeout=5.0,
    )
    try:
        async with receiver_running() as receiver, running_stack(settings) as running:
            yield running, receiver
    finally:
        await infra.drop_database(pg_admin_dsn, name)


@pytest.fixture(scope="module")
async def world(isolation_stack: tuple[Stack, Receiver]) -> World:
    """Vendors A (intruder) and B (victim), each with every kind of object."""
    stack, receiver = isolation_stack
    async with stack.client() as admin:
        victim = await seed_tenant(stack.api_url, admin, receiver, "bravo")
        intruder = await seed_tenant(stack.api_url, admin, receiver, "alpha")
        for tenant in (victim, intruder):
            await seed_inbound(admin, tenant)
        governance = await call(admin, "GET", "/v1/governance", 200)
    governance.pop("version", None)
    return World(victim=victim, intruder=intruder, governance=governance)


async def snapshot(admin: aiohttp.ClientSession, world: World) -> dict[str, Any]:
    """What no refused call may change: B's issues, webhooks, deliveries; keys, vendors, policy."""
    b = world.victim

    async def look(path: str, **query: str) -> tuple[int, Any]:
        answer = await send(admin, Request("GET", path, query=query))
        return answer.status, json.loads(answer.text) if answer.text else None

    dead = await look(f"/v1/webhooks/{b.webhook_ids[1]}/deliveries", status="dead")
    return {
        "issues": [await look(f"/v1/issues/{i}") for i in b.issue_ids],
        "webhooks": [await look(f"/v1/webhooks/{h}") for h in b.webhook_ids],
        "dead deliveries": dead,
        "keys": await look("/v1/api-keys"),
        "vendors": await look("/v1/vendors"),
        "governance": await look("/v1/governance"),
    }


def session(stack: Stack, key: str | None) -> aiohttp.ClientSession:
    if key is None:
        return aiohttp.ClientSession(stack.api_url)
    return stack.client(key)


# --- the tests -------------------------------------------------------------------------------


def test_every_route_is_in_the_matrix() -> None:
    """A route without an entry, or whose roles differ from the entry's, fails the build."""
    wrong = []
    served = set()
    for op in operations():
        route = (op.method, op.path)
        served.add(route)
        entry = MATRIX.get(route)
        if entry is None:
            wrong.append(f"{op.method} {op.path}: not in MATRIX (see docs/isolation.md)")
            continue
        if granted(op) != entry.roles:
            wrong.append(f"{op.method} {op.path}: grants {granted(op)}, MATRIX says {entry.roles}")
        names = PARAM.findall(op.path)
        if entry.targets is None and (len(names) > 1 or any(n not in PARAMS for n in names)):
            wrong.append(f"{op.method} {op.path}: say which of B's objects {names} name")
        if op.method != "GET" and op.request is not None and entry.body is None:
            wrong.append(f"{op.method} {op.path}: give a valid body, so refusals mean something")
        if op.method != "GET" and entry.roles is not None and "viewer" in entry.roles:
            wrong.append(f"{op.method} {op.path}: a write granted to viewer keys")
        if entry.roles and "vendor" in entry.roles and not names and entry.vendor is None:
            wrong.append(f"{op.method} {op.path}: say what A's vendor key may do here")
    wrong += [f"{m} {p}: in MATRIX but not served" for m, p in MATRIX if (m, p) not in served]
    assert not wrong, "\n".join(wrong)


def test_the_leak_search_finds_strings_and_ignores_echoes() -> None:
    secrets = {"bravo-1234abcd": "vendor id", "f0e1d2c3-0000-4000-8000-000000000000": "issue id"}
    path = "/v1/issues/f0e1d2c3-0000-4000-8000-000000000000"
    answer = json.dumps({"vendor_id": "BRAVO-1234abcd", "instance": path})
    assert leaked(secrets, path, answer) == ["vendor id 'bravo-1234abcd'"]
    assert leaked(secrets, "", "Location: /v1/vendors/bravo%2D1234abcd") == [
        "vendor id 'bravo-1234abcd'"
    ]


async def test_no_vendor_sees_another_vendors_data(
    isolation_stack: tuple[Stack, Receiver], world: World
) -> None:
    """Run every cell; collect every failure into one report."""
    stack, _ = isolation_stack
    b = world.victim
    async with stack.client() as admin:
        # The search must be able to fail: the admin does see B's issue.
        answer = await send(admin, Request("GET", f"/v1/issues/{b.issue_ids[0]}"))
        assert leaked(b.secrets, "", answer.text), "B's strings were not found where they are"
        keys: dict[str, str | None] = {
            "vendor": world.intruder.key,
            "viewer": await stack.new_key("viewer"),
            "integration": await stack.new_key("integration"),
            "anonymous": None,
        }
        before = await snapshot(admin, world)
    failures: list[str] = []
    requests = cells = 0
    per_principal = dict.fromkeys(PRINCIPALS, 0)
    # Deletes last: should one succeed, it must not hide the other routes' answers.
    ordered = sorted(operations(), key=lambda op: op.method == "DELETE")
    for principal in PRINCIPALS:
        async with session(stack, keys[principal]) as http:
            for op in ordered:
                cells += 1
                if (op.method, op.path) not in MATRIX:
                    failures.append(f"{principal:<11} {op.method} {op.path}: not in MATRIX")
                    continue
                for case in cases_for(principal, op, world):
                    per_principal[principal] += 1
                    requests += 1 + (case.twin is not None)
                    for problem in await check(http, case, b.secrets):
                        failures.append(
                            f"{principal:<11} {op.method} {op.path} [{case.name}]: {problem}"
                        )
    async with stack.client() as admin:
        after = await snapshot(admin, world)
        for part, was in before.items():
            if after[part] != was:
                failures.append(f"state changed: {part}: {was} -> {after[part]}")
    async with session(stack, b.key) as own:
        still = await send(own, Request("GET", f"/v1/vendors/{b.vendor_id}"))
        if still.status != 200:
            failures.append(f"B's own key stopped working: {still.status} {still.text[:200]}")
    size = (
        f"{len(operations())} routes x {len(PRINCIPALS)} principals = {cells} cells, "
        f"{sum(per_principal.values())} cases {per_principal}"
    )
    print(f"isolation matrix: {size}, {requests} requests, {len(failures)} failures")
    assert not failures, f"{size}, {requests} requests; failures:\n" + "\n".join(failures)


async def test_webhooks_deliver_only_their_vendors_events(
    isolation_stack: tuple[Stack, Receiver], world: World
) -> None:
    """A's webhooks never queue or receive B's events (fan-out is scoped by vendor)."""
    stack, receiver = isolation_stack
    a, b = world.intruder, world.victim
    async with stack.client() as admin:
        for hook in a.webhook_ids:
            page = await call(admin, "GET", f"/v1/webhooks/{hook}/deliveries", 200)
            queued = {d["event_id"] for d in page["items"]}
            assert queued, "A's webhook has deliveries of A's own events"
            assert not queued & set(b.event_ids), "B's events were queued for A's webhook"
    endpoints = [url.rsplit("/", 1)[1] for url, what in a.secrets.items() if what == "webhook URL"]
    received = [body for name in endpoints for body in receiver.received.get(name, [])]
    assert received, "A's endpoints received A's events"
    for body in received:
        assert not leaked(b.secrets, "", body.decode()), "A's endpoint received B's data"


# --- the board (/board/): the same rules through session cookies ------------------------------
#
# Board pages sign in with a key once and then carry a session cookie; their forms carry the
# session's CSRF token. Each board route is called with a session of A's vendor key, of a
# viewer and of an integration key, and without a session: A sees B's issues and vendor pages
# as missing (404, like a ghost id), gets B's issue actions refused with 404, and finds none of
# B's strings on the overview, its live part or the vendor list; viewers get 403 for every
# action; anonymous GETs are sent to the sign-in page and anonymous POSTs answer 401. A route
# missing from BOARD_MATRIX fails `test_every_board_route_is_in_the_matrix`.


@dataclass(frozen=True)
class BoardEntry:
    """How the matrix calls one board route: who may, the form it posts, extra vendor cases."""

    roles: frozenset[str] | None  # None: anyone, signed in or not
    form: dict[str, str] | None = None  # POST fields besides the CSRF token
    params: dict[str, str] | None = None  # fixed path parameters (else B's objects)
    vendor: Callable[[World], list[tuple[str, str, int]]] | None = None  # (name, path, status)


def _board_actions() -> dict[tuple[str, str], BoardEntry]:
    from tierline.board.issues import ACTIONS

    fields = {"note": "seen", "body": "intruder", "reason": "intruder", "resolution": "intruder"}
    return {
        ("POST", f"/board/issues/{{issue_id}}/{a.command.route}"): BoardEntry(
            WRITERS, form={"version": "1", **({a.field: fields[a.field]} if a.field else {})}
        )
        for a in ACTIONS
    }


def _filtered_overview(w: World) -> list[tuple[str, str, int]]:
    b = w.victim.vendor_id
    return [
        ("overview, vendor=B", f"/board/?vendor={b}", 422),
        ("live overview, vendor=B", f"/board/live/overview?vendor={b}", 422),
    ]


BOARD_MATRIX: dict[tuple[str, str], BoardEntry] = {
    ("GET", "/board"): BoardEntry(None),
    ("GET", "/board/static/{name}"): BoardEntry(None, params={"name": "board.css"}),
    ("GET", "/board/signin"): BoardEntry(None),
    ("POST", "/board/signin"): BoardEntry(None, form={"api_key": "tl_not-a-key"}),
    ("POST", "/board/signout"): BoardEntry(ALL_ROLES, form={}),
    ("GET", "/board/"): BoardEntry(ALL_ROLES, vendor=_filtered_overview),
    ("GET", "/board/live/overview"): BoardEntry(ALL_ROLES),
    ("GET", "/board/vendors"): BoardEntry(ALL_ROLES),
    ("GET", "/board/vendors/{vendor_id}"): BoardEntry(ALL_ROLES),
    ("GET", "/board/vendors/{vendor_id}/report"): BoardEntry(ALL_ROLES),
    ("GET", "/board/issues/{issue_id}"): BoardEntry(ALL_ROLES),
    **_board_actions(),
}


def board_pages() -> list[Any]:
    from tierline.board import routes

    return list(routes().pages)


PAGE_TITLE = re.compile(r"<h1>(.*?)</h1>", re.S)


def board_cases(principal: str, method: str, path: str, world: World) -> list[Case]:
    """What one principal's call of one board route must answer."""
    entry = BOARD_MATRIX[(method, path)]
    names = PARAM.findall(path)
    targets = [entry.params or {}]
    if names and entry.params is None:
        (name,) = names
        targets = [{name: value} for value in PARAMS[name](world.victim)]
    aimed = [(t, Request(method, path.format(**t), entry.form)) for t in targets]
    if entry.roles is None:
        return [Case("public", r, public_status(principal, method, path)) for _, r in aimed]
    if principal == "anonymous":
        status = 303 if method == "GET" else 401
        return [Case("no session", r, status, twin=twin_board(t, r)) for t, r in aimed]
    if principal not in entry.roles:
        return [Case("refused role", r, 403, twin=twin_board(t, r)) for t, r in aimed]
    if principal != "vendor":
        return [Case("read", r, 200, search=False) for _, r in aimed if method == "GET"]
    if method == "POST" and not names:
        return []  # signing out is A's own business
    found = [
        Case(f"B's {t}" if t else "read", r, 404 if t else 200, twin=twin_board(t, r))
        for t, r in aimed
    ]
    if entry.vendor is not None:
        found += [Case(name, Request("GET", p), status) for name, p, status in entry.vendor(world)]
    return found


def public_status(principal: str, method: str, path: str) -> int:
    """Public routes: /board and the signed-in sign-in page redirect; a wrong key is 401."""
    if method == "POST":
        return 401  # the form's key is not a key
    if path == "/board" or (path == "/board/signin" and principal != "anonymous"):
        return 303
    return 200


def twin_board(params: dict[str, str], request: Request) -> Request | None:
    if not params:
        return None
    path = request.path
    for value in params.values():
        path = path.replace(value, ghost(value))
    return Request(request.method, path, request.body)


async def board_check(http: BoardSession, case: Case, secrets: dict[str, str]) -> list[str]:
    """What is wrong with one board answer (nothing, when it holds)."""
    answer = Answer(*await http.send(case.request.method, case.request.path, case.request.body))
    wrong = []
    if answer.status != case.status:
        wrong.append(f"expected {case.status}, got {answer.status}: {answer.text[:200]}")
    if answer.status >= 500:
        wrong.append("a 5xx")
    if case.search:
        found = leaked(secrets, case.request.sent(), answer.text + "\n" + answer.headers)
        if found:
            wrong.append("leaked " + ", ".join(found))
    if case.twin is not None:
        other = Answer(*await http.send(case.twin.method, case.twin.path, case.twin.body))
        mine, theirs = PAGE_TITLE.findall(answer.text), PAGE_TITLE.findall(other.text)
        if (answer.status, mine) != (other.status, theirs):
            wrong.append(
                f"tells B's object from a missing one: {answer.status} {mine} vs "
                f"{other.status} {theirs}"
            )
    return wrong


def test_every_board_route_is_in_the_matrix() -> None:
    """A board route without an entry, or whose roles differ from the entry's, fails."""
    wrong = []
    served = set()
    for page in board_pages():
        route = (page.method, page.path)
        served.add(route)
        entry = BOARD_MATRIX.get(route)
        if entry is None:
            wrong.append(f"{page.method} {page.path}: not in BOARD_MATRIX")
            continue
        if page.roles != entry.roles:
            wrong.append(f"{page.method} {page.path}: grants {page.roles}, matrix {entry.roles}")
        if page.method == "POST" and entry.form is None:
            wrong.append(f"{page.method} {page.path}: give a valid form")
        viewer_writes = entry.roles is not None and "viewer" in entry.roles
        if page.method != "GET" and viewer_writes and page.path != "/board/signout":
            wrong.append(f"{page.method} {page.path}: a write granted to viewer keys")
    wrong += [
        f"{m} {p}: in BOARD_MATRIX but not served" for m, p in BOARD_MATRIX if (m, p) not in served
    ]
    assert not wrong, "\n".join(wrong)


async def test_no_vendor_sees_another_vendors_data_on_the_board(
    isolation_stack: tuple[Stack, Receiver], world: World
) -> None:
    """Every board route, every principal; B's objects unchanged afterwards."""
    stack, _ = isolation_stack
    b = world.victim
    keys: dict[str, str | None] = {
        "vendor": world.intruder.key,
        "viewer": await stack.new_key("viewer"),
        "integration": await stack.new_key("integration"),
        "anonymous": None,
    }
    async with stack.client() as admin:
        before = await snapshot(admin, world)
    failures: list[str] = []
    cases = requests = 0
    for principal in PRINCIPALS:
        session = await BoardSession(stack.api_url).start(keys[principal])
        try:
            for page in sorted(board_pages(), key=lambda p: p.path == "/board/signout"):
                for case in board_cases(principal, page.method, page.path, world):
                    cases += 1
                    requests += 1 + (case.twin is not None)
                    for problem in await board_check(session, case, b.secrets):
                        failures.append(
                            f"{principal:<11} {page.method} {page.path} [{case.name}]: {problem}"
                        )
        finally:
            await session.close()
    async with stack.client() as admin:
        after = await snapshot(admin, world)
    failures += [f"state changed: {part}" for part, was in before.items() if after[part] != was]
    size = f"{len(board_pages())} board routes x {len(PRINCIPALS)} principals, {cases} cases"
    print(f"board isolation matrix: {size}, {requests} requests, {len(failures)} failures")
    assert not failures, f"{size}; failures:\n" + "\n".join(failures)
