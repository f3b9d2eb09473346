"""Sending: accept (202 once durable), read per-recipient status and attempts, cancel."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header

from mailgate.api.deps import Caller, Outbound, RequestId
from mailgate.api.schemas.common import problems
from mailgate.api.schemas.outbound import MessageOut, QueueOut, SendAccepted, SendIn
from mailgate.outbound.service import AttachmentIn, SendRequest

router = APIRouter(tags=["messages"])


@router.post(
    "/v1/messages",
    status_code=202,
    response_model=SendAccepted,
    responses=problems(401, 403, 409, 422, 503),
    summary="Send a message; 202 means it is stored and queued, one delivery per recipient",
)
async def send(
    body: SendIn,
    outbound: Outbound,
    caller: Caller,
    rid: RequestId,
    idempotency_key: Annotated[
        str | None, Header(max_length=200, description="Same key within 24 h: the first response, nothing sent again.")
    ] = None,
) -> SendAccepted:
    request = SendRequest(
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
    result = await outbound.send(caller, request, idempotency_key=idempotency_key, request_id=rid)
    return SendAccepted.model_validate(result)


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
    responses=problems(401, 403, 503),
    summary="Deliveries by status (the caller's tenant, or all for admins)",
)
async def queue(outbound: Outbound, caller: Caller) -> QueueOut:
    return QueueOut(counts=await outbound.queue_counts(caller))
