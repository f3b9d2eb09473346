"""Records of the outbound pipeline: connectors, routes, messages and their per-recipient deliveries."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from mailgate.domain.delivery import DeliveryStatus

GLOBAL_SCOPE = ""


@dataclass(frozen=True, slots=True)
class ConnectorSpec:
    id: str
    scope: str  # a tenant id, or GLOBAL_SCOPE
    name: str
    type: str
    config: dict[str, Any]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """An ordered list of connector names; the first healthy one is used, the next on failure."""

    id: str
    scope: str
    name: str
    connectors: list[str]
    match: dict[str, Any]
    created_at: datetime
    updated_at: datetime

    def matches(self, sender_domain: str, tags: list[str]) -> bool:
        domains = [d.lower() for d in self.match.get("sender_domains", [])]
        wanted_tags = list(self.match.get("tags", []))
        if not domains and not wanted_tags:
            return False
        return (not domains or sender_domain.lower() in domains) and (
            not wanted_tags or any(t in tags for t in wanted_tags)
        )


@dataclass(frozen=True, slots=True)
class MessageRecord:
    id: str
    tenant_id: str
    created_at: datetime
    mail_from: str
    blob_id: str
    size: int
    summary: dict[str, Any]
    tags: list[str]
    meta: dict[str, Any]
    route: str | None
    source: str


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    id: str
    message_id: str
    tenant_id: str
    recipient: str
    domain: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime
    created_at: datetime
    updated_at: datetime
    last_reply: str | None = None
    last_connector: str | None = None


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    at: datetime
    connector: str | None
    outcome: str
    reply: str | None
    duration_ms: int


@dataclass(frozen=True, slots=True)
class Suppression:
    address: str
    reason: str
    created_at: datetime
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class TemplateRecord:
    id: str
    tenant_id: str
    name: str
    subject: str
    text: str | None
    html: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(slots=True)
class QueueCounts:
    by_status: dict[str, int] = field(default_factory=dict)
