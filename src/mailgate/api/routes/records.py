"""The event stream (long-poll) and the audit trail."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from mailgate.api import pagination
from mailgate.api.deps import Admin, Caller
from mailgate.api.schemas.common import problems
from mailgate.api.schemas.records import AuditOut, AuditPage, EventOut, EventPage
from mailgate.domain.errors import InvalidInput

router = APIRouter(tags=["events", "audit"])


@router.get(
    "/v1/events",
    response_model=EventPage,
    responses=problems(401, 403, 422, 503),
    summary="Events after a cursor, oldest first; `wait` holds the request until one arrives",
)
async def list_events(
    request: Request,
    admin: Admin,
    caller: Caller,
    after: Annotated[int, Query(ge=0, description="Return events with an id above this one.")] = 0,
    types: Annotated[str | None, Query(description="Comma-separated event types to keep.")] = None,
    wait: Annotated[float, Query(ge=0, description="Seconds to wait for a first event (long-poll).")] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> EventPage:
    max_wait: float = request.app.state.max_wait
    if wait > max_wait:
        raise InvalidInput(f"wait may be at most {max_wait:g} seconds", field="wait")
    wanted = [t.strip() for t in types.split(",") if t.strip()] if types else []
    items = await admin.events(caller, after=after, types=wanted, limit=limit, wait=wait)
    last = items[-1].id if items else None
    return EventPage(
        items=[EventOut.of(e) for e in items],
        next_cursor=str(last) if last is not None and len(items) >= limit else None,
    )


@router.get(
    "/v1/audit",
    response_model=AuditPage,
    responses=problems(401, 403, 422, 503),
    summary="The audit trail, oldest first",
)
async def list_audit(
    admin: Admin,
    caller: Caller,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = pagination.DEFAULT_LIMIT,
) -> AuditPage:
    items = await admin.audit_page(caller, after=pagination.decode_int(cursor), limit=limit)
    return AuditPage(
        items=[AuditOut.of(a) for a in items],
        next_cursor=pagination.next_cursor(list(items), limit, items[-1].seq if items else None),
    )
