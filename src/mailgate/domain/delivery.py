"""Outbound delivery vocabulary: SMTP replies, per-recipient outcomes and statuses.

Every connector, whatever it speaks (SMTP, Graph, Gmail), reports one of four outcomes per recipient;
the queue decides what happens next from the outcome alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class DeliveryStatus(StrEnum):
    QUEUED = "queued"
    SENT = "sent"
    DEFERRED = "deferred"
    BOUNCED = "bounced"
    FAILED = "failed"
    SUPPRESSED = "suppressed"
    CANCELLED = "cancelled"
    HELD = "held"

    @property
    def final(self) -> bool:
        return self in _FINAL


_FINAL = frozenset(
    {
        DeliveryStatus.SENT,
        DeliveryStatus.BOUNCED,
        DeliveryStatus.FAILED,
        DeliveryStatus.SUPPRESSED,
        DeliveryStatus.CANCELLED,
    }
)


@dataclass(frozen=True, slots=True)
class Reply:
    """An SMTP reply (or the equivalent an HTTP connector maps its answer to)."""

    code: int
    enhanced: str | None
    text: str

    @property
    def transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def permanent(self) -> bool:
        return self.code >= 500

    def __str__(self) -> str:
        return " ".join(p for p in (str(self.code), self.enhanced, self.text) if p)


@dataclass(frozen=True, slots=True)
class Delivered:
    reply: Reply


@dataclass(frozen=True, slots=True)
class Deferred:
    """Try again later. ``connector_fault`` marks failures of the path (refused connection, timeout,
    421, TLS failure) rather than of the recipient: they count against the connector's breaker and
    make failover try the next connector at once."""

    reason: str
    reply: Reply | None = None
    connector_fault: bool = False


@dataclass(frozen=True, slots=True)
class Bounced:
    reply: Reply
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Failed:
    """Given up without a permanent reply: too old, too many attempts, or unroutable."""

    reason: str


DeliveryOutcome = Delivered | Deferred | Bounced | Failed
