"""API keys: created and revoked by admins; the token appears once, in the create response."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from mailgate.api import pagination
from mailgate.api.deps import Admin, Caller, RequestId
from mailgate.api.schemas.common import problems
from mailgate.api.schemas.tenancy import ApiKeyCreate, ApiKeyCreated, ApiKeyOut, ApiKeyPage

router = APIRouter(prefix="/v1/apikeys", tags=["apikeys"])


@router.get("", response_model=ApiKeyPage, responses=problems(401, 403, 404, 422, 503))
async def list_keys(
    admin: Admin,
    caller: Caller,
    tenant: str | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = pagination.DEFAULT_LIMIT,
) -> ApiKeyPage:
    items = await admin.list_keys(caller, tenant=tenant, after=pagination.decode(cursor), limit=limit)
    return ApiKeyPage(
        items=[ApiKeyOut.of(k) for k in items],
        next_cursor=pagination.next_cursor(list(items), limit, items[-1].id if items else None),
    )


@router.post("", status_code=201, response_model=ApiKeyCreated, responses=problems(401, 403, 404, 422, 503))
async def create_key(body: ApiKeyCreate, admin: Admin, caller: Caller, rid: RequestId) -> ApiKeyCreated:
    key, token = await admin.create_key(
        caller, tenant=body.tenant, scopes=frozenset(body.scopes), name=body.name, request_id=rid
    )
    return ApiKeyCreated(**ApiKeyOut.of(key).model_dump(), key=token)


@router.get("/{id}", response_model=ApiKeyOut, responses=problems(401, 404, 503))
async def get_key(id: str, admin: Admin, caller: Caller) -> ApiKeyOut:
    return ApiKeyOut.of(await admin.get_key(caller, id))


@router.delete(
    "/{id}",
    response_model=ApiKeyOut,
    responses=problems(401, 403, 404, 503),
    summary="Revoke a key (it stops working at once; revoking twice is harmless)",
)
async def revoke_key(id: str, admin: Admin, caller: Caller, rid: RequestId) -> ApiKeyOut:
    return ApiKeyOut.of(await admin.revoke_key(caller, id, rid))
