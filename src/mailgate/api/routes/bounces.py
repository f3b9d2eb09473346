"""Bounce and complaint reports delivered by other means than our MX (a bounce mailbox, a provider's
webhook relay): posted as raw messages, matched by their VERP address, and acted on."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from mailgate.api.deps import Bounces, Caller, media_type
from mailgate.api.schemas.common import problems

router = APIRouter(tags=["bounces"])

_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"message/rfc822": {"schema": {"type": "string", "format": "binary"}}},
    }
}


class BounceOut(BaseModel):
    kind: str
    reason: str
    matched: bool
    delivery_id: str | None
    recipient: str | None
    suppressed: bool
    actions: list[str]


@router.post(
    "/v1/bounces",
    response_model=BounceOut,
    responses=problems(401, 403, 404, 413, 415, 422, 503),
    summary="Process a DSN or ARF report (admin): match it by its VERP address, mark and suppress",
    openapi_extra=_BODY,
)
async def process_bounce(
    request: Request,
    bounces: Bounces,
    caller: Caller,
    to: Annotated[list[str] | None, Query(description="The address(es) the report was delivered to.")] = None,
) -> BounceOut:
    content_type = media_type(request)
    if content_type not in ("message/rfc822", "message/global"):
        raise HTTPException(415, "send the report as message/rfc822")
    outcome = await bounces.process(caller, await request.body(), to or [])
    return BounceOut(
        kind=outcome.kind.value,
        reason=outcome.reason,
        matched=outcome.delivery_id is not None,
        delivery_id=outcome.delivery_id,
        recipient=outcome.recipient,
        suppressed=outcome.suppressed,
        actions=outcome.actions,
    )
