"""The tenant's suppression list: addresses that get status `suppressed` and no delivery."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from mailgate.api import pagination
from mailgate.api.deps import Caller, RequestId, Suppressions, media_type
from mailgate.api.schemas.common import problems
from mailgate.api.schemas.outbound import SuppressionIn, SuppressionOut, SuppressionPage
from mailgate.domain.errors import InvalidInput

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
    items = await suppressions.page(caller, after=pagination.decode(cursor), limit=limit)
    return SuppressionPage(
        items=[SuppressionOut.of(s) for s in items],
        next_cursor=pagination.next_cursor(list(items), limit, items[-1].address if items else None),
    )


class ImportProblem(BaseModel):
    line: int
    problem: str


class ImportResult(BaseModel):
    added: int = Field(description="Addresses newly suppressed.")
    already: int = Field(description="Addresses that were on the list already (their entry is kept).")
    problems: list[ImportProblem] = Field(description="Lines that were skipped, and why (the first 100).")


@router.post(
    "/import",
    response_model=ImportResult,
    responses=problems(401, 403, 413, 415, 422, 503),
    summary="Add the addresses of a CSV (`address[,reason[,detail]]`, optional header row)",
    openapi_extra={
        "requestBody": {"required": True, "content": {"text/csv": {"schema": {"type": "string"}}}},
    },
)
async def import_csv(request: Request, suppressions: Suppressions, caller: Caller, rid: RequestId) -> ImportResult:
    content_type = media_type(request)
    if content_type not in ("text/csv", "text/plain"):
        raise HTTPException(415, "send the list as text/csv")
    try:
        text = (await request.body()).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidInput("the CSV is not UTF-8", field="body") from None
    added, already, found = await suppressions.import_csv(caller, text, request_id=rid)
    return ImportResult(added=added, already=already, problems=[ImportProblem(line=n, problem=p) for n, p in found])


@router.get(
    "/export",
    response_class=StreamingResponse,
    responses={**problems(401, 403, 503), 200: {"content": {"text/csv": {}}, "description": "CSV rows"}},
    summary="The whole suppression list as CSV",
)
async def export_csv(suppressions: Suppressions, caller: Caller) -> StreamingResponse:
    return StreamingResponse(
        suppressions.export_csv(caller),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="suppressions.csv"'},
    )


@router.delete("/{address}", status_code=204, response_class=Response, responses=problems(401, 403, 404, 503))
async def remove(address: str, suppressions: Suppressions, caller: Caller, rid: RequestId) -> Response:
    await suppressions.remove(caller, address, rid)
    return Response(status_code=204)
