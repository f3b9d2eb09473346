"""Tenant and API key rows."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Row, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from mailgate.domain.tenancy import ApiKey, Scope, Tenant
from mailgate.store.database import execute_unique
from mailgate.store.schema import api_keys, tenants


def _tenant(row: Row[Any]) -> Tenant:
    return Tenant(id=row.id, name=row.name, created_at=row.created_at)


def _key(row: Row[Any]) -> ApiKey:
    return ApiKey(
        id=row.id,
        tenant_id=row.tenant_id,
        name=row.name,
        scopes=Scope.parse_list(row.scopes),
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )


async def insert_tenant(conn: AsyncConnection, tenant: Tenant) -> None:
    statement = tenants.insert().values(id=tenant.id, name=tenant.name, created_at=tenant.created_at)
    await execute_unique(conn, statement, f"a tenant named {tenant.name!r} already exists")


async def get_tenant(conn: AsyncConnection, ident: str) -> Tenant | None:
    """By id, or by name (names are unique): the CLI lets operators type either."""
    row = (await conn.execute(select(tenants).where(or_(tenants.c.id == ident, tenants.c.name == ident)))).first()
    return _tenant(row) if row else None


async def list_tenants(conn: AsyncConnection, *, only: str | None, after: str | None, limit: int) -> Sequence[Tenant]:
    query = select(tenants).order_by(tenants.c.id).limit(limit)
    if only is not None:
        query = query.where(tenants.c.id == only)
    if after is not None:
        query = query.where(tenants.c.id > after)
    return [_tenant(r) for r in (await conn.execute(query)).all()]


async def insert_key(conn: AsyncConnection, key: ApiKey, secret_hash: str) -> None:
    await conn.execute(
        api_keys.insert().values(
            id=key.id,
            tenant_id=key.tenant_id,
            name=key.name,
            secret_hash=secret_hash,
            scopes=",".join(sorted(key.scopes)),
            created_at=key.created_at,
            revoked_at=None,
        )
    )


async def get_key(conn: AsyncConnection, key_id: str) -> tuple[ApiKey, str] | None:
    row = (await conn.execute(select(api_keys).where(api_keys.c.id == key_id))).first()
    return (_key(row), row.secret_hash) if row else None


async def list_keys(conn: AsyncConnection, *, tenant_id: str | None, after: str | None, limit: int) -> Sequence[ApiKey]:
    query = select(api_keys).order_by(api_keys.c.id).limit(limit)
    if tenant_id is not None:
        query = query.where(api_keys.c.tenant_id == tenant_id)
    if after is not None:
        query = query.where(api_keys.c.id > after)
    return [_key(r) for r in (await conn.execute(query)).all()]


async def revoke_key(conn: AsyncConnection, key_id: str, at: datetime) -> bool:
    result = await conn.execute(
        update(api_keys).where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None)).values(revoked_at=at)
    )
    return result.rowcount == 1


async def count_admin_keys(conn: AsyncConnection) -> int:
    query = select(func.count()).select_from(api_keys).where(api_keys.c.scopes.like("%admin%"))
    return int((await conn.execute(query)).scalar_one())
