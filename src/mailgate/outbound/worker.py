"""The delivery worker: claim due deliveries, send each message once per connector for all its due
recipients, fail over along the route, and record every attempt with its SMTP reply.

At-least-once: a claim is a lease; if this worker dies, the lease expires and another worker sends.
An attempt's result is written only while the lease is still ours, so a worker that lost its lease
cannot overwrite the newer owner's outcome.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from mailgate.admin.service import AdminService
from mailgate.connectors.base import Sender
from mailgate.domain.delivery import Bounced, Deferred, Delivered, DeliveryOutcome, DeliveryStatus, Failed
from mailgate.domain.errors import IntegrityError, MailgateError, Unavailable
from mailgate.domain.outbound import DeliveryRecord, MessageRecord
from mailgate.domain.records import EventType
from mailgate.observability.logging import get_logger
from mailgate.observability.metrics import DELIVERIES, DELIVERY_LATENCY, QUEUE_DEPTH
from mailgate.outbound.retry import RetryPolicy, next_step
from mailgate.outbound.routing.router import Router
from mailgate.outbound.service import OutboundService
from mailgate.store import outbound as repo
from mailgate.store.blobs import BlobStore
from mailgate.store.database import Database
from mailgate.store.keyring import Keyring
from mailgate.store.types import utcnow

log = get_logger("mailgate.outbound.worker")
QUEUE_METRICS_SECONDS = 5.0

_EVENT = {
    DeliveryStatus.SENT: EventType.DELIVERY_SENT,
    DeliveryStatus.DEFERRED: EventType.DELIVERY_DEFERRED,
    DeliveryStatus.BOUNCED: EventType.DELIVERY_BOUNCED,
    DeliveryStatus.FAILED: EventType.DELIVERY_FAILED,
}


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    batch: int = 200
    parallel: int = 32
    lease: timedelta = timedelta(minutes=5)
    poll_interval: float = 1.0


def _reply_text(outcome: DeliveryOutcome) -> str:
    match outcome:
        case Delivered(reply) | Bounced(reply):
            return str(reply)
        case Deferred(reason, reply):
            return str(reply) if reply else reason
        case Failed(reason):
            return reason
    raise AssertionError(outcome)


@dataclass(frozen=True, slots=True)
class _Finished:
    """One message's delivery pass, waiting for the shared commit that records it."""

    message: MessageRecord
    group: list[DeliveryRecord]
    results: dict[str, tuple[DeliveryOutcome, str | None, int]]


class DeliveryWorker:
    def __init__(
        self,
        db: Database,
        keyring: Keyring,
        blobs: BlobStore,
        admin: AdminService,
        outbound: OutboundService,
        router: Router,
        policy: RetryPolicy,
        settings: WorkerSettings | None = None,
        return_path: Callable[[str], str | None] | None = None,
    ) -> None:
        self._return_path = return_path
        self._db = db
        self._keyring = keyring
        self._blobs = blobs
        self._admin = admin
        self._outbound = outbound
        self._router = router
        self._policy = policy
        self._settings = settings or WorkerSettings()
        self.owner = f"{socket.gethostname()}:{secrets.token_hex(4)}"
        self._slots = asyncio.Semaphore(self._settings.parallel)

    async def run(self, stop: asyncio.Event) -> None:
        log.info("delivery worker started", owner=self.owner)
        refreshed = 0.0
        while not stop.is_set():
            if time.monotonic() - refreshed >= QUEUE_METRICS_SECONDS:
                refreshed = time.monotonic()
                await self._refresh_queue_metrics()
            try:
                claimed = await self.run_once()
            except Unavailable as exc:
                log.warning("queue unavailable; retrying", error=exc.detail)
                claimed = 0
            if claimed == 0:
                waiter = asyncio.ensure_future(self._outbound.wait_for_work())
                stopper = asyncio.ensure_future(stop.wait())
                await asyncio.wait(
                    {waiter, stopper}, timeout=self._settings.poll_interval, return_when=asyncio.FIRST_COMPLETED
                )
                waiter.cancel()
                stopper.cancel()
        await self._router.close()

    async def _refresh_queue_metrics(self) -> None:
        try:
            async with self._db.read() as conn:
                counts = await repo.queue_counts(conn, None)
        except Unavailable:
            return
        for status in DeliveryStatus:
            QUEUE_DEPTH.labels(status.value).set(counts.get(status.value, 0))

    async def run_once(self) -> int:
        """Claim one batch and deliver it; returns how many deliveries were claimed."""
        async with self._db.write() as conn:
            claimed = await repo.claim_due(
                conn, owner=self.owner, now=utcnow(), lease=self._settings.lease, limit=self._settings.batch
            )
        if not claimed:
            return 0
        by_message: dict[str, list[DeliveryRecord]] = defaultdict(list)
        for delivery in claimed:
            by_message[delivery.message_id].append(delivery)
        async with self._db.read() as conn:
            found = await repo.get_messages(conn, self._keyring, list(by_message))
        contents = await self._blobs.get_many([m.blob_id for m in found.values()])
        await asyncio.gather(
            *(
                self._guarded(found[mid], contents.get(found[mid].blob_id), group)
                for mid, group in by_message.items()
                if mid in found
            )
        )
        return len(claimed)

    async def _guarded(self, message: MessageRecord, raw: bytes | None, group: list[DeliveryRecord]) -> None:
        async with self._slots:
            try:
                await self._deliver(message, raw, group)
            except MailgateError as exc:
                # the lease expires and another pass retries; nothing is lost
                log.error("delivery pass failed", message_id=message.id, error=exc.detail)

    async def _deliver(self, message: MessageRecord, raw: bytes | None, group: list[DeliveryRecord]) -> None:
        if raw is None:
            raise IntegrityError(f"the content of message {message.id} is missing from the blob store")
        sender_domain = message.mail_from.rpartition("@")[2]
        plan = await self._router.plan(message.tenant_id, sender_domain, message.tags, message.route)
        pending = {d.recipient: d for d in group}
        results: dict[str, tuple[DeliveryOutcome, str | None, int]] = {}
        if not plan.hops:
            why = f"route {plan.route!r} has no usable connector" if plan.route else "no route matches this message"
            if plan.missing:
                why += f" (missing: {', '.join(plan.missing)})"
            for rcpt in pending:
                results[rcpt] = (Deferred(why, connector_fault=True), None, 0)
        for hop in plan.hops:
            if not pending:
                break
            if not hop.breaker.allow():
                for rcpt in pending:
                    results.setdefault(
                        rcpt,
                        (
                            Deferred(f"connector {hop.spec.name} is down (circuit open)", connector_fault=True),
                            hop.spec.name,
                            0,
                        ),
                    )
                continue
            if hop.limiter is not None:
                await hop.limiter.acquire(len(pending) if self._return_path else 1)
            started = time.perf_counter()
            outcomes = await self._send(hop.sender, message, pending, raw)
            elapsed = int((time.perf_counter() - started) * 1000)
            path_failed = all(isinstance(o, Deferred) and o.connector_fault for o in outcomes.values())
            if path_failed:
                hop.breaker.failure()
            else:
                hop.breaker.success()
            for rcpt, outcome in outcomes.items():
                results[rcpt] = (outcome, hop.spec.name, elapsed)
                if not (isinstance(outcome, Deferred) and outcome.connector_fault):
                    pending.pop(rcpt, None)
        recorded: list[tuple[DeliveryStatus, str | None]] = await self._db.batched.run_bulk(
            self._record_all, _Finished(message, group, results)
        )
        now = utcnow()
        for status, connector in recorded:  # counted once committed, not before
            DELIVERIES.labels(status.value, connector or "none").inc()
            if status == DeliveryStatus.SENT:
                DELIVERY_LATENCY.observe((now - message.created_at).total_seconds())

    async def _send(
        self, sender: Sender, message: MessageRecord, pending: dict[str, DeliveryRecord], raw: bytes
    ) -> dict[str, DeliveryOutcome]:
        """With VERP each recipient's envelope sender names its own delivery, so each recipient gets a
        transaction of its own (the connector's pool still reuses connections)."""
        if self._return_path is None:
            return await sender.send(message.mail_from, list(pending), raw)
        separate = await asyncio.gather(
            *(sender.send(self._return_path(d.id) or message.mail_from, [rcpt], raw) for rcpt, d in pending.items())
        )
        return {rcpt: outcome for result in separate for rcpt, outcome in result.items()}

    async def _record_all(
        self, conn: AsyncConnection, finished: list[_Finished]
    ) -> list[list[tuple[DeliveryStatus, str | None]]]:
        """Record the attempts of every message finished since the last commit, with a few statements;
        answers, per message, the (status, connector) of each attempt stored."""
        now = utcnow()
        held = await repo.leased_by(conn, [d.id for f in finished for d in f.group], self.owner)
        stored: list[repo.AttemptResult] = []
        events: list[tuple[EventType, str | None, str | None, dict[str, Any]]] = []
        counted: list[list[tuple[DeliveryStatus, str | None]]] = []
        for f in finished:
            counted.append([])
            for delivery in f.group:
                if delivery.id not in held:
                    log.warning("lease lost before recording; the new owner's result stands", delivery=delivery.id)
                    continue
                outcome, connector, elapsed = f.results.get(
                    delivery.recipient, (Deferred("connector returned no outcome", connector_fault=True), None, 0)
                )
                step = next_step(
                    outcome, attempts=delivery.attempts + 1, queued_at=delivery.created_at, now=now, policy=self._policy
                )
                reply = _reply_text(step.final_outcome)
                stored.append(
                    repo.AttemptResult(delivery.id, step.status, step.next_attempt_at, connector, reply, elapsed)
                )
                counted[-1].append((step.status, connector))
                events.append(
                    (
                        _EVENT[step.status],
                        f.message.tenant_id,
                        delivery.id,
                        {
                            "message_id": f.message.id,
                            "recipient": delivery.recipient,
                            "connector": connector,
                            "reply": reply,
                            "attempts": delivery.attempts + 1,
                            "next_attempt_at": step.next_attempt_at.isoformat() if step.next_attempt_at else None,
                            "tags": f.message.tags,
                            "metadata": f.message.meta,
                        },
                    )
                )
        await repo.record_attempts(conn, stored, self.owner)
        await self._admin.emit_many_in(conn, events)
        return counted
