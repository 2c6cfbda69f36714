"""The one idempotency mechanism of the API: `Idempotency-Key` answered once, for every route.

`answer_once` opens a unit of work, claims the key in it, runs the route's work in the same
unit, and stores the rendered answer there too: the answer is recorded if and only if the
effects commit. A retry with the same key and body gets the stored answer; the same key with
another body is 422 `idempotency-key-reused`. Secrets in an answer (a webhook's signing secret,
a new API key) are stored sealed with the secret key and unsealed for the retry, so the table
never holds them in the clear. A unit of work that lost a race is run again; with `last_try`,
the final run uses that factory instead (the locking unit of work behind an optimistic one).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web
from prometheus_client import Counter

from tierline import secretbox
from tierline.api.problems import Problem
from tierline.api.registry import json_response, principal, request_hash
from tierline.service_layer.issues import RETRIES, RetryUnitOfWork
from tierline.service_layer.unit_of_work import (
    IdempotencyKeyReused,
    StreamVersionConflict,
    UnitOfWork,
)

# (status, JSON-ready body, headers): what the route answers and what a retry gets back.
Rendered = tuple[int, Any, dict[str, str]]
U = TypeVar("U", bound=UnitOfWork)
RUNS_AGAIN = Counter(
    "tierline_unit_of_work_retries_total",
    "Units of work run again after losing a race (a moved head, a key or ref taken meanwhile)",
)


async def answer_once(
    request: web.Request,
    payload: Any,
    units: Callable[[], U],
    work: Callable[[U], Awaitable[Rendered]],
    *,
    secret_field: str | None = None,
    last_try: Callable[[], U] | None = None,
    lock_first: Callable[[U], Awaitable[object]] | None = None,
) -> web.Response:
    """Run `work` in a unit of work, at most once per `Idempotency-Key` of the caller.

    `lock_first` runs in the `last_try` unit before the key is claimed: the one-statement unit
    moves the issue's head before it stores the key, so the locking unit beside it must lock
    the head before the key too, or the two can deadlock.
    """
    key = request.headers.get("Idempotency-Key")
    who = principal(request)
    # Only a keyed request is ever compared with a stored one (canonical JSON costs CPU).
    fingerprint = request_hash(request, payload) if key is not None else ""
    for attempt in range(RETRIES):
        final = last_try is not None and attempt == RETRIES - 1
        try:
            uow = last_try() if final and last_try is not None else units()
            async with uow:
                if final and lock_first is not None:
                    await lock_first(uow)
                if key is not None:
                    stored = await uow.idempotency.claim(who.key_id, key, fingerprint)
                    if stored is not None:
                        body = _unsealed(stored.body, secret_field)
                        return json_response(body, status=stored.status, headers=stored.headers)
                status, body, headers = await work(uow)
                if key is not None:
                    sealed = _sealed(body, secret_field)
                    await uow.idempotency.complete(who.key_id, key, status, sealed, headers)
            return json_response(body, status=status, headers=headers)
        except (RetryUnitOfWork, StreamVersionConflict):
            RUNS_AGAIN.inc()
            continue
        except IdempotencyKeyReused:
            raise Problem(
                422, "idempotency-key-reused", "the key was used for another request"
            ) from None
    raise RuntimeError("the unit of work kept losing races")


def _sealed(body: Any, field: str | None) -> Any:
    if field is None or not isinstance(body, dict) or not isinstance(body.get(field), str):
        return body
    return {**body, field: secretbox.current().seal(body[field])}


def _unsealed(body: Any, field: str | None) -> Any:
    if field is None or not isinstance(body, dict) or not isinstance(body.get(field), str):
        return body
    return {**body, field: secretbox.current().open(body[field])}
