"""The audit trail: a hash chain, appended under a lock on its head row.

Each entry's hash covers the previous entry's hash, and the head row holds the newest (seq, hash), so
editing, deleting or inserting any row, including the newest, breaks verification at that row.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from mailgate.domain.records import AuditEntry, Outcome
from mailgate.security.auditchain import GENESIS, link_hash
from mailgate.store.schema import audit_head, audit_log
from mailgate.store.types import utcnow


def _fields(seq: int, row: Any) -> dict[str, Any]:
    return {
        "seq": seq,
        "at": row["at"],
        "actor": row["actor"],
        "tenant_id": row["tenant_id"],
        "action": row["action"],
        "object_type": row["object_type"],
        "object_id": row["object_id"],
        "request_id": row["request_id"],
        "outcome": row["outcome"],
        "details": row["details"],
    }


def _entry(row: Row[Any]) -> AuditEntry:
    return AuditEntry(
        seq=row.seq,
        at=row.at,
        actor=row.actor,
        tenant_id=row.tenant_id,
        action=row.action,
        object_type=row.object_type,
        object_id=row.object_id,
        request_id=row.request_id,
        outcome=Outcome(row.outcome),
        details=row.details,
        prev_hash=row.prev_hash,
        hash=row.hash,
    )


async def append(
    conn: AsyncConnection,
    key: bytes,
    *,
    actor: str,
    tenant_id: str | None,
    action: str,
    object_type: str | None,
    object_id: str | None,
    request_id: str | None,
    outcome: Outcome,
    details: dict[str, Any] | None = None,
) -> AuditEntry:
    head = (await conn.execute(select(audit_head).where(audit_head.c.id == 1).with_for_update())).one()
    seq = head.seq + 1
    values: dict[str, Any] = {
        # microseconds are dropped: both engines then return exactly what was hashed
        "at": utcnow().replace(microsecond=0),
        "actor": actor,
        "tenant_id": tenant_id,
        "action": action,
        "object_type": object_type,
        "object_id": object_id,
        "request_id": request_id,
        "outcome": outcome.value,
        "details": details or {},
    }
    digest = link_hash(key, head.hash, _fields(seq, values))
    await conn.execute(audit_log.insert().values(seq=seq, prev_hash=head.hash, hash=digest, **values))
    await conn.execute(update(audit_head).where(audit_head.c.id == 1).values(seq=seq, hash=digest))
    return _entry((await conn.execute(select(audit_log).where(audit_log.c.seq == seq))).one())


async def page(conn: AsyncConnection, *, tenant_id: str | None, after: int, limit: int) -> list[AuditEntry]:
    query = select(audit_log).where(audit_log.c.seq > after).order_by(audit_log.c.seq).limit(limit)
    if tenant_id is not None:
        query = query.where(audit_log.c.tenant_id == tenant_id)
    return [_entry(r) for r in (await conn.execute(query)).all()]


@dataclass(frozen=True, slots=True)
class Verification:
    checked: int
    broken_seq: int | None
    reason: str | None

    @property
    def ok(self) -> bool:
        return self.broken_seq is None


async def head(conn: AsyncConnection) -> tuple[int, str]:
    row = (await conn.execute(select(audit_head).where(audit_head.c.id == 1))).one()
    return int(row.seq), str(row.hash)


async def _rows(conn: AsyncConnection) -> AsyncIterator[Row[Any]]:
    result = await conn.stream(select(audit_log).order_by(audit_log.c.seq).execution_options(yield_per=1000))
    async for row in result:
        yield row


async def verify(conn: AsyncConnection, key: bytes, progress: Callable[[int], None] | None = None) -> Verification:
    """Walk the chain from the start; the first broken link is named by its seq."""
    prev_hash, expected_seq, checked = GENESIS, 1, 0
    async for row in _rows(conn):
        if row.seq != expected_seq:
            return Verification(checked, expected_seq, f"entry {expected_seq} is missing (next is {row.seq})")
        if row.prev_hash != prev_hash:
            return Verification(checked, row.seq, f"entry {row.seq} does not link to entry {row.seq - 1}")
        if link_hash(key, prev_hash, _fields(row.seq, row._mapping)) != row.hash:
            return Verification(checked, row.seq, f"entry {row.seq} was altered (its hash does not match)")
        prev_hash, expected_seq, checked = row.hash, expected_seq + 1, checked + 1
        if progress is not None:
            progress(checked)
    head_seq, head_hash = await head(conn)
    if head_seq != checked or head_hash != prev_hash:
        return Verification(checked, checked + 1, f"entries after {checked} were removed (head is at {head_seq})")
    return Verification(checked, None, None)
