"""Domains a tenant receives mail for: create, list, settings (catch-all, spam thresholds), delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from mailgate.api import pagination
from mailgate.api.deps import Caller, Mailboxes, RequestId
from mailgate.api.schemas.common import problems
from mailgate.api.schemas.inbound import DomainCreate, DomainOut, DomainPage, DomainUpdate

router = APIRouter(prefix="/v1/domains", tags=["domains"])


@router.post(
    "",
    status_code=201,
    response_model=DomainOut,
    responses=problems(401, 403, 404, 409, 422, 503),
    summary="Add a domain the MX accepts mail for",
)
async def create_domain(body: DomainCreate, mailboxes: Mailboxes, caller: Caller, rid: RequestId) -> DomainOut:
    return DomainOut.of(await mailboxes.create_domain(caller, body.name, tenant=body.tenant, request_id=rid))


@router.get("", response_model=DomainPage, responses=problems(401, 422, 503))
async def list_domains(
    mailboxes: Mailboxes,
    caller: Caller,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = pagination.DEFAULT_LIMIT,
) -> DomainPage:
    items = await mailboxes.list_domains(caller, after=pagination.decode(cursor), limit=limit)
    return DomainPage(
        items=[DomainOut.of(d) for d in items],
        next_cursor=pagination.next_cursor(items, limit, items[-1].id if items else None),
    )


@router.get("/{domain}", response_model=DomainOut, responses=problems(401, 404, 503))
async def get_domain(domain: str, mailboxes: Mailboxes, caller: Caller) -> DomainOut:
    return DomainOut.of(await mailboxes.get_domain(caller, domain))


@router.patch("/{domain}", response_model=DomainOut, responses=problems(401, 403, 404, 422, 503))
async def update_domain(
    domain: str, body: DomainUpdate, mailboxes: Mailboxes, caller: Caller, rid: RequestId
) -> DomainOut:
    changes = body.model_dump(exclude_unset=True)
    return DomainOut.of(await mailboxes.update_domain(caller, domain, changes, rid))


@router.delete(
    "/{domain}",
    response_model=DomainOut,
    responses=problems(401, 403, 404, 503),
    summary="Delete the domain with its mailboxes and all their mail",
)
async def delete_domain(domain: str, mailboxes: Mailboxes, caller: Caller, rid: RequestId) -> DomainOut:
    return DomainOut.of(await mailboxes.delete_domain(caller, domain, rid))
