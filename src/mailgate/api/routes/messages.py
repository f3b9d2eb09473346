"""Sending: accept (202 once durable), read per-recipient status and attempts, cancel."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from mailgate.api import pagination
from mailgate.api.deps import Caller, Mail, Outbound, RequestId, media_type
from mailgate.api.routes.mail import message_json
from mailgate.api.schemas.common import problems
from mailgate.api.schemas.outbound import (
    BatchAccepted,
    BatchIn,
    MessageOut,
    QueuedDelivery,
    QueueOut,
    QueueRetried,
    RawParams,
    SendAccepted,
    SendIn,
)
from mailgate.domain.delivery import DeliveryStatus
from mailgate.domain.errors import NotFound
from mailgate.observability.logging import request_id_var
from mailgate.outbound.service import AttachmentIn, BatchRecipient, OutboundService, SendRequest

RAW_TYPES = ("message/rfc822", "message/global")
IDEMPOTENCY_KEY_MAX = 200
_IDEMPOTENCY_DOC = "Same key within 24 h: the first response, nothing sent again."


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


_STRINGS = {"type": "array", "items": {"type": "string"}}
_BODY_DOC: dict[str, Any] = {
    "parameters": [
        {
            "name": "Idempotency-Key",
            "in": "header",
            "required": False,
            "description": _IDEMPOTENCY_DOC,
            "schema": {"type": "string", "maxLength": IDEMPOTENCY_KEY_MAX},
        },
        _query("mail_from", "Raw MIME only: the envelope sender.", {"type": "string"}),
        _query("to", "Raw MIME only: envelope recipients (repeatable).", _STRINGS),
        _query("tag", "Raw MIME only: tags (repeatable).", _STRINGS),
        _query("route", "Raw MIME only: the route to use.", {"type": "string"}),
        _query("send_at", "Raw MIME only: deliver at this time.", {"type": "string", "format": "date-time"}),
    ],
    "requestBody": {
        "required": True,
        "description": "JSON (`SendIn`), or a complete message as `message/rfc822`: its envelope comes from the "
        "`mail_from` and `to` query parameters, else from its From and To/Cc/Bcc headers; Bcc is removed "
        "before sending.",
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/SendIn"}},
            "message/rfc822": {"schema": {"type": "string", "format": "binary"}},
        },
    },
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
async def send(request: Request, caller: Caller) -> Response:
    """The hottest route, kept lean: it reads its service from the app, parses its header and query
    parameters itself (only a raw message has query parameters; declaring them made the framework
    parse four absent ones on every JSON request) and answers the service's dict as is (the shape is
    ``SendAccepted`` by construction)."""
    outbound: OutboundService = request.app.state.outbound
    content_type = media_type(request)
    idempotency_key = _idempotency_key(request)
    raw = await request.body()
    if content_type in RAW_TYPES:
        params = _raw_params(request)
        result = await outbound.send_raw(
            caller,
            raw,
            mail_from=params.mail_from,
            recipients=params.to,
            tags=params.tag or (),
            route=params.route,
            send_at=params.send_at,
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


def _raw_params(request: Request) -> RawParams:
    query = request.query_params
    given: dict[str, Any] = {name: query.get(name) for name in ("mail_from", "route", "send_at")}
    given.update({name: query.getlist(name) or None for name in ("to", "tag")})
    try:
        return RawParams.model_validate(given)
    except ValidationError as exc:
        errors = [{**e, "loc": ("query", *e["loc"])} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from None


def _idempotency_key(request: Request) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is not None and len(key) > IDEMPOTENCY_KEY_MAX:
        raise RequestValidationError(
            [
                {
                    "type": "string_too_long",
                    "loc": ("header", "idempotency-key"),
                    "msg": f"String should have at most {IDEMPOTENCY_KEY_MAX} characters",
                    "input": key[:IDEMPOTENCY_KEY_MAX] + "...",
                    "ctx": {"max_length": IDEMPOTENCY_KEY_MAX},
                }
            ]
        )
    return key


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
    idempotency_key: Annotated[str | None, Header(max_length=IDEMPOTENCY_KEY_MAX, description=_IDEMPOTENCY_DOC)] = None,
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


@router.get(
    "/v1/messages/{id}",
    responses=problems(401, 404, 503),
    summary="One message parsed: received (`direction` inbound) or sent (with its deliveries)",
)
async def get_message(id: str, mail: Mail, outbound: Outbound, caller: Caller) -> dict[str, Any]:
    return await message_json(id, mail, outbound, caller)


@router.delete(
    "/v1/messages/{id}",
    responses=problems(401, 403, 404, 503),
    summary="A received message: delete it. A sent one: cancel every delivery not sent yet",
)
async def delete_message(id: str, mail: Mail, outbound: Outbound, caller: Caller, rid: RequestId) -> dict[str, Any]:
    try:
        await mail.delete(caller, id, rid)
    except NotFound:  # not a received message: a sent one, or none (outbound says which)
        return MessageOut.of(await outbound.cancel(caller, id, rid)).model_dump(mode="json")
    return {"id": id, "deleted": True}


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
