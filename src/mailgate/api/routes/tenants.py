"""Tenants: admins create and list all; a tenant's own keys see only their tenant."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from mailgate.api import pagination
from mailgate.api.deps import Admin, Caller, RequestId
from mailgate.api.schemas.common import problems
from mailgate.api.schemas.tenancy import TenantCreate, TenantOut, TenantPage

router = APIRouter(prefix="/v1/tenants", tags=["tenants"])


@router.get("", response_model=TenantPage, responses=problems(401, 422, 503))
async def list_tenants(
    admin: Admin,
    caller: Caller,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = pagination.DEFAULT_LIMIT,
) -> TenantPage:
    items = await admin.list_tenants(caller, after=pagination.decode(cursor), limit=limit)
    return TenantPage(
        items=[TenantOut.of(t) for t in items],
        next_cursor=pagination.next_cursor(list(items), limit, items[-1].id if items else None),
    )


@router.post("", status_code=201, response_model=TenantOut, responses=problems(401, 403, 409, 422, 503))
async def create_tenant(body: TenantCreate, admin: Admin, caller: Caller, rid: RequestId) -> TenantOut:
    return TenantOut.of(await admin.create_tenant(caller, body.name, rid))


@router.get("/{id}", response_model=TenantOut, responses=problems(401, 404, 503))
async def get_tenant(id: str, admin: Admin, caller: Caller) -> TenantOut:
    return TenantOut.of(await admin.get_tenant(caller, id))
