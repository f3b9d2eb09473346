"""Events and audit entries."""

from __future__ import annotations

from typing import Any

from pydantic import AwareDatetime, BaseModel

from mailgate.domain.records import AuditEntry, Event


class EventOut(BaseModel):
    id: int
    type: str
    at: AwareDatetime
    tenant: str | None
    object_id: str | None
    data: dict[str, Any]

    @classmethod
    def of(cls, e: Event) -> EventOut:
        return cls(id=e.id, type=e.type, at=e.at, tenant=e.tenant_id, object_id=e.object_id, data=e.data)


class EventPage(BaseModel):
    items: list[EventOut]
    next_cursor: str | None


class AuditOut(BaseModel):
    id: int
    at: AwareDatetime
    actor: str
    tenant: str | None
    action: str
    object_type: str | None
    object_id: str | None
    request_id: str | None
    outcome: str
    details: dict[str, Any]
    hash: str
    prev_hash: str

    @classmethod
    def of(cls, a: AuditEntry) -> AuditOut:
        return cls(
            id=a.seq,
            at=a.at,
            actor=a.actor,
            tenant=a.tenant_id,
            action=a.action,
            object_type=a.object_type,
            object_id=a.object_id,
            request_id=a.request_id,
            outcome=a.outcome.value,
            details=a.details,
            hash=a.hash,
            prev_hash=a.prev_hash,
        )


class AuditPage(BaseModel):
    items: list[AuditOut]
    next_cursor: str | None
