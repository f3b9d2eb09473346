"""Append-only records: the audit trail and the event stream."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class Outcome(StrEnum):
    SUCCESS = "success"
    DENIED = "denied"
    INVALID = "invalid"
    NOT_FOUND = "not_found"
    ERROR = "error"


class EventType(StrEnum):
    """Every event type the gateway emits; later capabilities add members here."""

    TENANT_CREATED = "tenant.created"
    APIKEY_CREATED = "apikey.created"
    APIKEY_REVOKED = "apikey.revoked"
    SMTP_CREDENTIAL_CREATED = "smtp_credential.created"
    SMTP_CREDENTIAL_REVOKED = "smtp_credential.revoked"
    KEYS_ROTATED = "keys.rotated"
    MESSAGE_ACCEPTED = "message.accepted"
    MESSAGE_RECEIVED = "message.received"  # stored in a mailbox (inbound)
    MESSAGE_REJECTED = "message.rejected"  # refused at SMTP time (spam)
    DELIVERY_SENT = "delivery.sent"
    DELIVERY_DEFERRED = "delivery.deferred"
    DELIVERY_BOUNCED = "delivery.bounced"
    DELIVERY_FAILED = "delivery.failed"
    DELIVERY_SUPPRESSED = "delivery.suppressed"
    DELIVERY_CANCELLED = "delivery.cancelled"
    DELIVERY_HELD = "delivery.held"
    DELIVERY_RELEASED = "delivery.released"
    DELIVERY_DELAYED = "delivery.delayed"  # a remote MTA reported it still retries (a delay DSN)
    DELIVERY_COMPLAINED = "delivery.complained"  # the recipient reported the message as spam (ARF)
    CONNECTOR_DOWN = "connector.down"
    CONNECTOR_UP = "connector.up"


@dataclass(frozen=True, slots=True)
class AuditEntry:
    seq: int
    at: datetime
    actor: str
    tenant_id: str | None
    action: str
    object_type: str | None
    object_id: str | None
    request_id: str | None
    outcome: Outcome
    details: dict[str, Any] = field(default_factory=dict)
    prev_hash: str = ""
    hash: str = ""


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    at: datetime
    tenant_id: str | None
    type: str
    object_id: str | None
    data: dict[str, Any] = field(default_factory=dict)
