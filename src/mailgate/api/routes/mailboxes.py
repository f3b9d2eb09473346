"""Mailboxes: CRUD, aliases, folders, and the listing and search of the mail in them."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from mailgate.api import pagination
from mailgate.api.deps import Caller, Mail, Mailboxes, RequestId
from mailgate.api.schemas.common import problems
from mailgate.api.schemas.inbound import (
    AliasIn,
    FolderIn,
    FolderList,
    FolderOut,
    MailboxCreate,
    MailboxOut,
    MailboxPage,
    MailboxUpdate,
    MailPage,
    mail_summary,
)
from mailgate.domain.errors import InvalidInput
from mailgate.domain.mailboxes import MailQuery

router = APIRouter(prefix="/v1/mailboxes", tags=["mailboxes"])


@router.post(
    "",
    status_code=201,
    response_model=MailboxOut,
    responses=problems(401, 403, 404, 409, 422, 503),
    summary="Create a mailbox (with INBOX, Sent, Drafts, Trash and Junk) at one of the tenant's domains",
)
async def create_mailbox(body: MailboxCreate, mailboxes: Mailboxes, caller: Caller, rid: RequestId) -> MailboxOut:
    created = await mailboxes.create_mailbox(
        caller, body.address, tenant=body.tenant, display_name=body.display_name, request_id=rid
    )
    return MailboxOut.of(created)


@router.get("", response_model=MailboxPage, responses=problems(401, 404, 422, 503))
async def list_mailboxes(
    mailboxes: Mailboxes,
    caller: Caller,
    domain: Annotated[str | None, Query(description="Only mailboxes of this domain (id or name).")] = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = pagination.DEFAULT_LIMIT,
) -> MailboxPage:
    items = await mailboxes.list_mailboxes(caller, domain=domain, after=pagination.decode(cursor), limit=limit)
    return MailboxPage(
        items=[MailboxOut.of(m) for m in items],
        next_cursor=pagination.next_cursor(items, limit, items[-1].id if items else None),
    )


@router.get("/{mailbox}", response_model=MailboxOut, responses=problems(401, 404, 503))
async def get_mailbox(mailbox: str, mailboxes: Mailboxes, caller: Caller) -> MailboxOut:
    return MailboxOut.of(await mailboxes.get_mailbox(caller, mailbox))


@router.patch(
    "/{mailbox}",
    response_model=MailboxOut,
    responses=problems(401, 403, 404, 409, 422, 503),
    summary="Rename the mailbox (a new address) or change its display name",
)
async def update_mailbox(
    mailbox: str, body: MailboxUpdate, mailboxes: Mailboxes, caller: Caller, rid: RequestId
) -> MailboxOut:
    return MailboxOut.of(await mailboxes.update_mailbox(caller, mailbox, body.model_dump(exclude_unset=True), rid))


@router.delete(
    "/{mailbox}",
    response_model=MailboxOut,
    responses=problems(401, 403, 404, 503),
    summary="Delete the mailbox with its folders and every message in them",
)
async def delete_mailbox(mailbox: str, mailboxes: Mailboxes, caller: Caller, rid: RequestId) -> MailboxOut:
    return MailboxOut.of(await mailboxes.delete_mailbox(caller, mailbox, rid))


@router.post("/{mailbox}/aliases", response_model=MailboxOut, responses=problems(401, 403, 404, 409, 422, 503))
async def add_alias(mailbox: str, body: AliasIn, mailboxes: Mailboxes, caller: Caller, rid: RequestId) -> MailboxOut:
    return MailboxOut.of(await mailboxes.add_alias(caller, mailbox, body.address, rid))


@router.delete("/{mailbox}/aliases/{address}", response_model=MailboxOut, responses=problems(401, 403, 404, 503))
async def remove_alias(mailbox: str, address: str, mailboxes: Mailboxes, caller: Caller, rid: RequestId) -> MailboxOut:
    return MailboxOut.of(await mailboxes.remove_alias(caller, mailbox, address, rid))


@router.get("/{mailbox}/folders", response_model=FolderList, responses=problems(401, 404, 503))
async def list_folders(mailbox: str, mailboxes: Mailboxes, caller: Caller) -> FolderList:
    return FolderList(items=[FolderOut.of(f) for f in await mailboxes.folders(caller, mailbox)])


@router.post(
    "/{mailbox}/folders", status_code=201, response_model=FolderOut, responses=problems(401, 403, 404, 409, 422, 503)
)
async def create_folder(
    mailbox: str, body: FolderIn, mailboxes: Mailboxes, caller: Caller, rid: RequestId
) -> FolderOut:
    return FolderOut.of(await mailboxes.create_folder(caller, mailbox, body.name, rid))


@router.patch(
    "/{mailbox}/folders/{name:path}", response_model=FolderOut, responses=problems(401, 403, 404, 409, 422, 503)
)
async def rename_folder(
    mailbox: str, name: str, body: FolderIn, mailboxes: Mailboxes, caller: Caller, rid: RequestId
) -> FolderOut:
    return FolderOut.of(await mailboxes.rename_folder(caller, mailbox, name, body.name, rid))


@router.delete(
    "/{mailbox}/folders/{name:path}",
    response_model=FolderOut,
    responses=problems(401, 403, 404, 409, 503),
    summary="Delete a user folder and the messages in it",
)
async def delete_folder(mailbox: str, name: str, mailboxes: Mailboxes, caller: Caller, rid: RequestId) -> FolderOut:
    return FolderOut.of(await mailboxes.delete_folder(caller, mailbox, name, rid))


def _cursor(value: str | None) -> tuple[datetime, str] | None:
    decoded = pagination.decode(value)
    if decoded is None:
        return None
    at, _, mail_id = decoded.partition("|")
    try:
        return datetime.fromisoformat(at), mail_id
    except ValueError:
        raise InvalidInput("cursor is not one this API handed out", field="cursor") from None


@router.get(
    "/{mailbox}/messages",
    response_model=MailPage,
    responses=problems(401, 404, 422, 503),
    summary="The mailbox's messages, newest first; without `folder`, every folder",
)
async def list_messages(
    mailbox: str,
    mail: Mail,
    caller: Caller,
    folder: str | None = None,
    unread: bool | None = None,
    from_: Annotated[str | None, Query(alias="from", description="Only mail from this address.")] = None,
    since: Annotated[datetime | None, Query(description="Received at or after.")] = None,
    before: Annotated[datetime | None, Query(description="Received before.")] = None,
    has_attachment: bool | None = None,
    thread: str | None = None,
    query: Annotated[
        str | None, Query(max_length=500, description="Whole words, all required, in subject, addresses or body.")
    ] = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = pagination.DEFAULT_LIMIT,
) -> MailPage:
    for name, value in (("since", since), ("before", before)):
        if value is not None and value.tzinfo is None:
            raise InvalidInput(f"{name} needs a time zone (e.g. 2026-01-01T00:00:00Z)", field=name)
    filters = MailQuery(
        folder=folder,
        unread=unread,
        from_=from_,
        since=since,
        before=before,
        has_attachments=has_attachment,
        thread_id=thread,
        query=query,
    )
    items = await mail.list(caller, mailbox, filters, after=_cursor(cursor), limit=limit)
    last = f"{items[-1].received_at.isoformat()}|{items[-1].id}" if items else None
    return MailPage(items=[mail_summary(m) for m in items], next_cursor=pagination.next_cursor(items, limit, last))
