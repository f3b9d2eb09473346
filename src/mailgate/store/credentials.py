"""SMTP submission credential rows: a public username and an argon2id hash of the password."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Row, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from mailgate.domain.tenancy import SmtpCredential
from mailgate.store.schema import smtp_credentials


def _credential(row: Row[Any]) -> SmtpCredential:
    return SmtpCredential(
        id=row.id,
        tenant_id=row.tenant_id,
        username=row.username,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )


async def insert(conn: AsyncConnection, credential: SmtpCredential, password_hash: str) -> None:
    await conn.execute(
        smtp_credentials.insert().values(
            id=credential.id,
            tenant_id=credential.tenant_id,
            username=credential.username,
            password_hash=password_hash,
            created_at=credential.created_at,
            revoked_at=None,
        )
    )


async def by_username(conn: AsyncConnection, username: str) -> tuple[SmtpCredential, str] | None:
    row = (await conn.execute(select(smtp_credentials).where(smtp_credentials.c.username == username))).first()
    return (_credential(row), row.password_hash) if row else None


async def get(conn: AsyncConnection, credential_id: str) -> SmtpCredential | None:
    row = (await conn.execute(select(smtp_credentials).where(smtp_credentials.c.id == credential_id))).first()
    return _credential(row) if row else None


async def list_for(conn: AsyncConnection, tenant_id: str | None) -> Sequence[SmtpCredential]:
    query = select(smtp_credentials).order_by(smtp_credentials.c.created_at, smtp_credentials.c.id)
    if tenant_id is not None:
        query = query.where(smtp_credentials.c.tenant_id == tenant_id)
    return [_credential(r) for r in (await conn.execute(query)).all()]


async def revoke(conn: AsyncConnection, credential_id: str, at: datetime) -> bool:
    result = await conn.execute(
        update(smtp_credentials)
        .where(smtp_credentials.c.id == credential_id, smtp_credentials.c.revoked_at.is_(None))
        .values(revoked_at=at)
    )
    return result.rowcount == 1
