"""Received and sent mail as one resource: the parsed message, its raw bytes and attachments, flags and
moves, threads. A stored (received) message is looked up first; any other id is an outbound one."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Response

from mailgate.api.deps import Caller, Mail, Outbound, RequestId
from mailgate.api.schemas.common import problems
from mailgate.api.schemas.inbound import MailUpdate, ThreadOut, mail_detail, parsed_fields
from mailgate.api.schemas.outbound import MessageOut
from mailgate.domain.errors import NotFound
from mailgate.inbound.mail import find_attachment
from mailgate.mime.parse import parse_message

router = APIRouter(tags=["messages"])
_BYTES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}
}


async def message_json(id: str, mail: Mail, outbound: Outbound, caller: Caller) -> dict[str, Any]:
    """``GET /v1/messages/{id}``: a received message parsed, or a sent one with its deliveries and the
    same parsed fields (read from the bytes it was sent as)."""
    stored = await mail.find(caller, id)
    if stored is not None:
        return mail_detail(stored)
    view = await outbound.get_message(caller, id)
    parsed = parse_message(await outbound.raw_of(view)).to_json()
    return {
        **MessageOut.of(view).model_dump(mode="json"),
        **parsed_fields(parsed),
        "subject": view.message.summary.get("subject") or parsed.get("subject", ""),
        "direction": "outbound",
        "auth": {},
        "spam": None,
        "thread_id": None,
    }


async def _raw(id: str, mail: Mail, outbound: Outbound, caller: Caller) -> bytes:
    try:
        return await mail.raw(caller, id)
    except NotFound:  # not a received message: a sent one, or none (outbound says which)
        return await outbound.raw(caller, id)


@router.get(
    "/v1/messages/{id}/raw",
    responses={**_BYTES, **problems(401, 404, 503)},
    response_class=Response,
    summary="The message's bytes as stored (received: with our trace and result headers on top)",
)
async def raw_message(id: str, mail: Mail, outbound: Outbound, caller: Caller) -> Response:
    return Response(await _raw(id, mail, outbound, caller), media_type="message/rfc822")


@router.get(
    "/v1/messages/{id}/attachments/{attachment_id}",
    responses={**_BYTES, **problems(401, 404, 503)},
    response_class=Response,
    summary="One attachment's decoded bytes",
)
async def attachment(id: str, attachment_id: str, mail: Mail, outbound: Outbound, caller: Caller) -> Response:
    found = find_attachment(await _raw(id, mail, outbound, caller), attachment_id)
    disposition = "inline" if found.inline else "attachment"
    headers = {"Content-Disposition": _disposition(disposition, found.filename)}
    return Response(found.data, media_type=found.content_type or "application/octet-stream", headers=headers)


def _disposition(kind: str, filename: str | None) -> str:
    """RFC 6266: an ASCII fallback and the UTF-8 name, so no header injection and no mojibake."""
    if not filename:
        return kind
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in filename)
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


@router.patch(
    "/v1/messages/{id}",
    responses=problems(401, 403, 404, 422, 503),
    summary="Change a received message's flags and keywords, or move it to another folder",
)
async def update_message(id: str, body: MailUpdate, mail: Mail, caller: Caller, rid: RequestId) -> dict[str, Any]:
    return mail_detail(await mail.update(caller, id, body.model_dump(exclude_unset=True), rid))


@router.get("/v1/threads/{thread_id}", response_model=ThreadOut, responses=problems(401, 404, 503))
async def get_thread(thread_id: str, mail: Mail, caller: Caller) -> ThreadOut:
    return ThreadOut(id=thread_id, items=[mail_detail(m) for m in await mail.thread(caller, thread_id)])
