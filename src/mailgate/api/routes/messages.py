"""Sending: accept (202 once durable), read per-recipient status and attempts, cancel."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from mailgate.api import pagination
from mailgate.api.deps import Caller, Outbound, RequestId, media_type
from mailgate.api.schemas.common import problems
from mailgate.api.schemas.outbound import (
    BatchAccepted,
    BatchIn,
    MessageOut,
    QueuedDelivery,
    QueueOut,
    QueueRetried,
    SendAccepted,
    SendIn,
)
from mailgate.domain.delivery import DeliveryStatus
from mailgate.observability.logging import request_id_var
from mailgate.outbound.service import AttachmentIn, BatchRecipient, OutboundService, SendRequest

RAW_TYPES = ("message/rfc822", "message/global")
_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "JSON (`SendIn`), or a complete message as `message/rfc822`: its envelope comes from the "
        "`mail_from` and `to` query parameters, else from its From and To/Cc/Bcc headers; Bcc is removed "
        "before sending.",
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/SendIn"}},
            "message/rfc822": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}

router = APIRouter(tags=["messages"])


@router.post(
    "/v1/messages",
    status_code=202,
    response_model=SendAccepted,
    responses=problems(401, 403, 409, 413, 415, 422, 503),
    summary="Send a message; 202 means it is stored and queued, one delivery per recipient",
    openapi_extra=_BODY_DOC,
)
async def send(
    request: Request,
    caller: Caller,
    idempotency_key: Annotated[
        str | None, Header(max_length=200, description="Same key within 24 h: the first response, nothing sent again.")
    ] = None,
    mail_from: Annotated[str | None, Query(description="Raw MIME only: the envelope sender.")] = None,
    to: Annotated[list[str] | None, Query(description="Raw MIME only: envelope recipients (repeatable).")] = None,
    tag: Annotated[list[str] | None, Query(description="Raw MIME only: tags (repeatable).")] = None,
    route: Annotated[str | None, Query(description="Raw MIME only: the route to use.")] = None,
    send_at: Annotated[datetime | None, Query(description="Raw MIME only: deliver at this time.")] = None,
) -> Response:
    """The hottest route: it reads its service from the app and answers the service's dict as is (the
    shape is ``SendAccepted`` by construction), which saves a third of the framework's per-request work."""
    outbound: OutboundService = request.app.state.outbound
    content_type = media_type(request)
    raw = await request.body()
    if content_type in RAW_TYPES:
        result = await outbound.send_raw(
            caller,
            raw,
            mail_from=mail_from,
            recipients=to,
            tags=tag or (),
            route=route,
            send_at=send_at,
            idempotency_key=idempotency_key,
        )
        return JSONResponse(result, status_code=202)
    if content_type not in ("application/json", ""):
        raise HTTPException(
            415, f"Content-Type {content_type!r} is not accepted: send application/json or message/rfc822"
        )
    try:
        body = SendIn.model_validate_json(raw or b"null")
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False), body=raw[:1000]) from None
    result = await outbound.send(
        caller, _send_request(body), idempotency_key=idempotency_key, request_id=request_id_var.get()
    )
    return JSONResponse(result, status_code=202)


@router.post(
    "/v1/messages/batch",
    status_code=202,
    response_model=BatchAccepted,
    responses=problems(401, 403, 409, 413, 422, 503),
    summary="One personalised message per recipient (up to 1000), stored all together or not at all",
)
async def send_batch(
    body: BatchIn,
    outbound: Outbound,
    caller: Caller,
    idempotency_key: Annotated[
        str | None, Header(max_length=200, description="Same key within 24 h: the first response, nothing sent again.")
    ] = None,
) -> BatchAccepted:
    recipients = [BatchRecipient(r.to, r.variables, r.metadata) for r in body.recipients]
    result = await outbound.send_batch(caller, _send_request(body), recipients, idempotency_key=idempotency_key)
    return BatchAccepted.model_validate(result)


def _send_request(body: SendIn) -> SendRequest:
    return SendRequest(
        from_=body.from_,
        to=body.to,
        cc=body.cc,
        bcc=body.bcc,
        reply_to=body.reply_to,
        subject=body.subject,
        text=body.text,
        html=body.html,
        headers=body.headers,
        attachments=[
            AttachmentIn(a.filename, a.content, a.content_type, a.content_id, a.inline) for a in body.attachments
        ],
        tags=body.tags,
        metadata=body.metadata,
        send_at=body.send_at,
        template=body.template,
        variables=body.variables,
        route=body.route,
    )


@router.get("/v1/messages/{id}", response_model=MessageOut, responses=problems(401, 404, 503))
async def get_message(id: str, outbound: Outbound, caller: Caller) -> MessageOut:
    return MessageOut.of(await outbound.get_message(caller, id))


@router.delete(
    "/v1/messages/{id}",
    response_model=MessageOut,
    responses=problems(401, 403, 404, 503),
    summary="Cancel every delivery of the message that is not sent yet",
)
async def cancel_message(id: str, outbound: Outbound, caller: Caller, rid: RequestId) -> MessageOut:
    return MessageOut.of(await outbound.cancel(caller, id, rid))


@router.get(
    "/v1/queue",
    response_model=QueueOut,
    responses=problems(401, 403, 422, 503),
    summary="Counts by status, and the deliveries matching the filters (the caller's tenant, or all for admins)",
)
async def queue(
    outbound: Outbound,
    caller: Caller,
    status: Annotated[list[DeliveryStatus] | None, Query(description="Only these statuses (repeatable).")] = None,
    domain: Annotated[str | None, Query(description="Only recipients at this domain.")] = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = pagination.DEFAULT_LIMIT,
) -> QueueOut:
    counts = await outbound.queue_counts(caller)
    items = await outbound.list_queue(
        caller, statuses=status or [], domain=domain, after=pagination.decode(cursor), limit=limit
    )
    return QueueOut(
        counts=counts,
        items=[QueuedDelivery.of(d) for d in items],
        next_cursor=pagination.next_cursor(items, limit, items[-1].id if items else None),
    )


@router.post(
    "/v1/queue/retry",
    response_model=QueueRetried,
    responses=problems(401, 403, 503),
    summary="Make every deferred delivery due now (optionally only those to one domain)",
)
async def retry_queue(
    outbound: Outbound,
    caller: Caller,
    rid: RequestId,
    domain: Annotated[str | None, Query(description="Only recipients at this domain.")] = None,
) -> QueueRetried:
    return QueueRetried(retried=await outbound.retry_queue(caller, domain=domain, request_id=rid))


@router.post(
    "/v1/messages/{id}/hold",
    response_model=MessageOut,
    responses=problems(401, 403, 404, 503),
    summary="Hold the message's queued and deferred deliveries until released",
)
async def hold_message(id: str, outbound: Outbound, caller: Caller, rid: RequestId) -> MessageOut:
    return MessageOut.of(await outbound.hold(caller, id, rid))


@router.post(
    "/v1/messages/{id}/release",
    response_model=MessageOut,
    responses=problems(401, 403, 404, 503),
    summary="Release held deliveries: they are due at once",
)
async def release_message(id: str, outbound: Outbound, caller: Caller, rid: RequestId) -> MessageOut:
    return MessageOut.of(await outbound.release(caller, id, rid))


@router.post(
    "/v1/messages/{id}/retry",
    response_model=MessageOut,
    responses=problems(401, 403, 404, 503),
    summary="Attempt deferred deliveries now instead of at their backoff time",
)
async def retry_message(id: str, outbound: Outbound, caller: Caller, rid: RequestId) -> MessageOut:
    return MessageOut.of(await outbound.retry(caller, id, rid))
