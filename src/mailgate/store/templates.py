"""Template rows, one namespace of names per tenant."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Row, delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from mailgate.domain.outbound import TemplateRecord
from mailgate.store.database import execute_unique
from mailgate.store.schema import templates


def _template(row: Row[Any]) -> TemplateRecord:
    return TemplateRecord(
        id=row.id,
        tenant_id=row.tenant_id,
        name=row.name,
        subject=row.subject,
        text=row.text,
        html=row.html,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


async def insert(conn: AsyncConnection, record: TemplateRecord) -> None:
    statement = templates.insert().values(
        id=record.id,
        tenant_id=record.tenant_id,
        name=record.name,
        subject=record.subject,
        text=record.text,
        html=record.html,
        created_at=record.created_at,
        updated_at=record.updated_at,
    )
    await execute_unique(conn, statement, f"a template named {record.name!r} already exists")


async def find(conn: AsyncConnection, tenant_id: str, ident: str) -> TemplateRecord | None:
    """By id or by name: callers send with the name they chose, tools refer to the id."""
    query = select(templates).where(
        templates.c.tenant_id == tenant_id, or_(templates.c.id == ident, templates.c.name == ident)
    )
    row = (await conn.execute(query)).first()
    return _template(row) if row else None


async def list_for(conn: AsyncConnection, tenant_id: str) -> Sequence[TemplateRecord]:
    query = select(templates).where(templates.c.tenant_id == tenant_id).order_by(templates.c.name)
    return [_template(r) for r in (await conn.execute(query)).all()]


async def replace(
    conn: AsyncConnection, template_id: str, *, subject: str, text: str | None, html: str | None, at: datetime
) -> None:
    await conn.execute(
        update(templates)
        .where(templates.c.id == template_id)
        .values(subject=subject, text=text, html=html, updated_at=at)
    )


async def remove(conn: AsyncConnection, template_id: str) -> None:
    await conn.execute(delete(templates).where(templates.c.id == template_id))
