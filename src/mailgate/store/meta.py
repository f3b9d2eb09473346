"""Small installation-wide facts (first-start markers), one row each."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError as DbIntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from mailgate.store.schema import meta


async def get(conn: AsyncConnection, key: str) -> str | None:
    value = (await conn.execute(select(meta.c.value).where(meta.c.key == key))).scalar_one_or_none()
    return None if value is None else str(value)


async def claim(conn: AsyncConnection, key: str, value: str) -> bool:
    """Set ``key`` if it is unset; False when another writer set it first."""
    try:
        async with conn.begin_nested():
            await conn.execute(meta.insert().values(key=key, value=value))
    except DbIntegrityError:
        return False
    return True
