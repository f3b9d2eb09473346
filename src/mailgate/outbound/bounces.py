"""Asynchronous bounces and complaints: a report arriving after the next hop said 250 is matched to its
delivery by the VERP return path, and acted on.

A hard bounce marks the delivery bounced and suppresses the address (mail to it would bounce again and
hurt the sender's reputation); a complaint suppresses it too (the recipient asked for no more mail); a
delay report is only an event. Matching relies on the keyed VERP token alone: report contents are
written by strangers, and a quoted ``X-Mailgate-*`` header could name any delivery.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from email.utils import getaddresses

from mailgate.admin.service import AdminService
from mailgate.domain.bounces import BounceKind
from mailgate.domain.errors import InvalidInput, NotFound
from mailgate.domain.records import EventType
from mailgate.domain.tenancy import Principal, Scope
from mailgate.mime.bounces import BounceReport, parse_report
from mailgate.outbound.access import require, suppression_key
from mailgate.outbound.verp import VerpCodec
from mailgate.store import outbound as repo
from mailgate.store.database import Database

_ADDRESS_HEADERS = ("delivered-to", "x-original-to", "envelope-to", "to")


@dataclass(frozen=True, slots=True)
class BounceOutcome:
    kind: BounceKind
    reason: str
    delivery_id: str | None = None
    recipient: str | None = None
    suppressed: bool = False
    actions: list[str] = field(default_factory=list)


class BounceService:
    def __init__(self, db: Database, admin: AdminService, verp: VerpCodec | None) -> None:
        self._db = db
        self._admin = admin
        self.verp = verp

    def return_path(self, delivery_id: str) -> str | None:
        """The envelope sender for one delivery, or None when VERP is off (no bounce domain)."""
        return self.verp.encode(delivery_id) if self.verp else None

    async def process(self, principal: Principal, raw: bytes, envelope_to: Sequence[str] = ()) -> BounceOutcome:
        """Read a report and apply it. ``envelope_to`` is where it was addressed (the VERP address);
        without it the report's own Delivered-To/To headers and the quoted Return-Path are tried."""
        require(principal, Scope.ADMIN)
        if self.verp is None:
            raise InvalidInput("bounce handling is off: set bounces.domain (the VERP return-path domain)")
        report = parse_report(raw)
        delivery_id = self._match(report, raw, envelope_to)
        if delivery_id is None:
            return BounceOutcome(report.kind, report.reason)
        async with self._db.write() as conn:
            delivery = await repo.get_delivery(conn, delivery_id)
            if delivery is None:
                raise NotFound("delivery", delivery_id)
            actions: list[str] = []
            common = {"message_id": delivery.message_id, "recipient": delivery.recipient, "reason": report.reason}
            suppressed = False
            if report.kind == BounceKind.HARD:
                if await repo.mark_bounced_after_sending(conn, delivery.id, report.reason):
                    actions.append("marked bounced")
                suppressed = await repo.add_suppression(
                    conn, delivery.tenant_id, suppression_key(delivery.recipient), "bounce", report.reason[:1000]
                )
                event = EventType.DELIVERY_BOUNCED
            elif report.kind == BounceKind.COMPLAINT:
                suppressed = await repo.add_suppression(
                    conn, delivery.tenant_id, suppression_key(delivery.recipient), "complaint", report.reason[:1000]
                )
                event = EventType.DELIVERY_COMPLAINED
            elif report.kind == BounceKind.SOFT:
                event = EventType.DELIVERY_DELAYED
            else:
                return BounceOutcome(report.kind, report.reason, delivery.id, delivery.recipient)
            if suppressed:
                actions.append("suppressed")
            await self._admin.emit_in(
                conn,
                event,
                tenant_id=delivery.tenant_id,
                object_id=delivery.id,
                data={**common, "kind": report.kind.value, "asynchronous": True, "suppressed": suppressed},
            )
            await self._admin.audit_in(
                conn,
                principal,
                "bounce.process",
                tenant_id=delivery.tenant_id,
                object_type="delivery",
                object_id=delivery.id,
                request_id=None,
                details={"kind": report.kind.value, "actions": actions},
            )
        return BounceOutcome(report.kind, report.reason, delivery.id, delivery.recipient, suppressed, actions)

    def _match(self, report: BounceReport, raw: bytes, envelope_to: Sequence[str]) -> str | None:
        assert self.verp is not None
        candidates = list(envelope_to)
        candidates += _header_addresses(raw)
        if report.original is not None and report.original.return_path:
            candidates.append(report.original.return_path)
        for candidate in candidates:
            found = self.verp.decode(candidate)
            if found is not None:
                return found
        return None


def _header_addresses(raw: bytes) -> list[str]:
    """The report's own addressing headers, read without a full parse (only the header block)."""
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    values: list[str] = []
    for line in head.replace(b"\r\n", b"\n").split(b"\n"):
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower().decode("latin-1") in _ADDRESS_HEADERS:
            values.append(value.decode("latin-1"))
    return [address for _, address in getaddresses(values) if address]
