"""The tenant's suppression list: addresses that get status `suppressed` and no delivery."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from mailgate.api import pagination
from mailgate.api.deps import Caller, RequestId, Suppressions
from mailgate.api.schemas.common import problems
from mailgate.api.schemas.outbound import SuppressionIn, SuppressionOut, SuppressionPage

router = APIRouter(prefix="/v1/suppressions", tags=["suppressions"])


@router.post("", status_code=201, response_model=SuppressionOut, responses=problems(401, 403, 422, 503))
async def add(body: SuppressionIn, suppressions: Suppressions, caller: Caller, rid: RequestId) -> SuppressionOut:
    return SuppressionOut.of(await suppressions.add(caller, body.address, reason=body.reason, request_id=rid))


@router.get("", response_model=SuppressionPage, responses=problems(401, 403, 422, 503))
async def list_suppressions(
    suppressions: Suppressions,
    caller: Caller,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = pagination.DEFAULT_LIMIT,
) -> SuppressionPage:
    items = await suppressions.list(caller, after=pagination.decode(cursor), limit=limit)
    return SuppressionPage(
        items=[SuppressionOut.of(s) for s in items],
        next_cursor=pagination.next_cursor(list(items), limit, items[-1].address if items else None),
    )


@router.delete("/{address}", status_code=204, response_class=Response, responses=problems(401, 403, 404, 503))
async def remove(address: str, suppressions: Suppressions, caller: Caller, rid: RequestId) -> Response:
    await suppressions.remove(caller, address, rid)
    return Response(status_code=204)
