"""The append-only event stream with a monotonic cursor.

On PostgreSQL, appends take a transaction-scoped advisory lock so ids become visible in id order: a
reader that has seen id N never later finds a committed event with an id below N (sequence values
alone are handed out before commit, so concurrent writers could commit out of order).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from mailgate.domain.records import Event
from mailgate.store.database import PIPELINED, Database
from mailgate.store.schema import events
from mailgate.store.types import utcnow

_APPEND_LOCK = 7310002


async def append(
    conn: AsyncConnection, *, type: str, tenant_id: str | None, object_id: str | None, data: dict[str, Any]
) -> int:
    if conn.dialect.name == "postgresql":
        await conn.execute(text(f"SELECT pg_advisory_xact_lock({_APPEND_LOCK})"))
    result = await conn.execute(
        events.insert().values(at=utcnow(), tenant_id=tenant_id, type=type, object_id=object_id, data=data)
    )
    Database.mark_events_written(conn)
    pk = result.inserted_primary_key
    assert pk is not None
    return int(pk[0])


async def append_many(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    """Several events in one statement (keys: type, tenant_id, object_id, data), in list order."""
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        await conn.execute(text(f"SELECT pg_advisory_xact_lock({_APPEND_LOCK})"))
    at = utcnow()
    await conn.execute(events.insert(), [{"at": at, **row} for row in rows], execution_options=PIPELINED)
    Database.mark_events_written(conn)


async def after(
    conn: AsyncConnection, *, cursor: int, tenant_id: str | None, types: Sequence[str], limit: int
) -> list[Event]:
    query = select(events).where(events.c.id > cursor).order_by(events.c.id).limit(limit)
    if tenant_id is not None:
        query = query.where(events.c.tenant_id == tenant_id)
    if types:
        query = query.where(events.c.type.in_(list(types)))
    return [
        Event(id=r.id, at=r.at, tenant_id=r.tenant_id, type=r.type, object_id=r.object_id, data=r.data)
        for r in (await conn.execute(query)).all()
    ]
