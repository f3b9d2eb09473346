"""The outbound facade: accept a message, persist it durably with one delivery per recipient, and
administer what sending needs (connectors, routes, DKIM keys, suppressions, the queue).

``send`` returns only after the message, its deliveries and its event are committed: the caller's 202
means the message will not be lost. The raw message (signed) is written to the blob store first; if
the transaction then fails the orphan blob is harmless and content-addressed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import secrets
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from mailgate.admin.service import AdminService
from mailgate.domain.address import normalize
from mailgate.domain.delivery import DeliveryStatus
from mailgate.domain.errors import InvalidInput, NotFound
from mailgate.domain.outbound import (
    AttemptRecord,
    DeliveryRecord,
    MessageRecord,
)
from mailgate.domain.records import EventType
from mailgate.domain.tenancy import Principal, Scope
from mailgate.mime.compose import Attachment, Draft, compose
from mailgate.mime.headers import validate_extra_headers
from mailgate.mime.submitted import prepare
from mailgate.outbound.access import addresses, require, suppression_key, tenant_of
from mailgate.outbound.dkim import DkimSigner
from mailgate.outbound.templates import TemplateService
from mailgate.store import outbound as repo
from mailgate.store.blobs import BlobRef, BlobStore, StagedBlob
from mailgate.store.cache import ReadThroughCache
from mailgate.store.database import Database
from mailgate.store.keyring import Keyring
from mailgate.store.types import utcnow

IDEMPOTENCY_WINDOW = timedelta(hours=24)
SIGNER_CACHE_SECONDS = 5.0
MAX_RECIPIENTS = 1000


@dataclass(frozen=True, slots=True)
class AttachmentIn:
    filename: str
    content: str  # base64
    content_type: str = "application/octet-stream"
    content_id: str | None = None
    inline: bool = False


@dataclass(frozen=True, slots=True)
class SendRequest:
    from_: str
    to: list[str]
    cc: list[str] = field(default_factory=list)
    bcc: list[str] = field(default_factory=list)
    reply_to: list[str] = field(default_factory=list)
    subject: str = ""
    text: str | None = None
    html: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    attachments: list[AttachmentIn] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    send_at: datetime | None = None
    template: str | None = None
    variables: dict[str, Any] = field(default_factory=dict)
    route: str | None = None


@dataclass(frozen=True, slots=True)
class BatchRecipient:
    to: str
    variables: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Outgoing:
    """A message ready to store: composed, signed, with its envelope and bookkeeping."""

    raw: bytes
    mail_from: str
    recipients: list[str]
    summary: dict[str, Any]
    tags: list[str]
    meta: dict[str, Any]
    route: str | None
    send_at: datetime | None
    source: str


@dataclass(frozen=True, slots=True)
class _Accept:
    """One caller's messages waiting for the shared commit."""

    tenant_id: str
    items: list[_Outgoing]
    staged: list[StagedBlob]
    idempotency: tuple[str, str] | None
    batch: bool
    suppressed: set[str]  # suppression keys among the recipients


def _rows(
    tenant_id: str, item: _Outgoing, blob: BlobRef, suppressed: set[str], now: datetime
) -> tuple[MessageRecord, list[DeliveryRecord]]:
    message = MessageRecord(
        id="msg_" + secrets.token_hex(10),
        tenant_id=tenant_id,
        created_at=now,
        mail_from=item.mail_from,
        blob_id=blob.id,
        size=blob.size,
        summary=item.summary,
        tags=item.tags,
        meta=item.meta,
        route=item.route,
        source=item.source,
    )
    due = max(item.send_at, now) if item.send_at else now
    records = [
        DeliveryRecord(
            id="dlv_" + secrets.token_hex(10),
            message_id=message.id,
            tenant_id=tenant_id,
            recipient=rcpt,
            domain=rcpt.rpartition("@")[2],
            status=DeliveryStatus.SUPPRESSED if suppression_key(rcpt) in suppressed else DeliveryStatus.QUEUED,
            attempts=0,
            next_attempt_at=due,
            created_at=now,
            updated_at=now,
        )
        for rcpt in item.recipients
    ]
    return message, records


@dataclass(frozen=True, slots=True)
class MessageView:
    message: MessageRecord
    deliveries: list[DeliveryRecord]
    attempts: dict[str, list[AttemptRecord]]


def _attachments(items: Sequence[AttachmentIn]) -> list[Attachment]:
    out = []
    for i, item in enumerate(items):
        try:
            data = base64.b64decode(item.content, validate=True)
        except (binascii.Error, ValueError):
            where = f"attachments[{i}].content"
            raise InvalidInput(f"{where} is not valid base64", field=where) from None
        out.append(Attachment(item.filename, item.content_type, data, item.content_id, item.inline))
    return out


def _request_hash(request: SendRequest) -> str:
    return hashlib.sha256(json.dumps(asdict(request), sort_keys=True, default=str).encode()).hexdigest()


class OutboundService:
    def __init__(
        self,
        db: Database,
        keyring: Keyring,
        blobs: BlobStore,
        admin: AdminService,
        *,
        templates: TemplateService,
        hostname: str = "localhost",
    ) -> None:
        self._templates = templates
        self._db = db
        self._keyring = keyring
        self._blobs = blobs
        self._admin = admin
        self._hostname = hostname
        self._signers: dict[str, DkimSigner] = {}
        self._signing: ReadThroughCache[tuple[str, str], DkimSigner | None] = ReadThroughCache(SIGNER_CACHE_SECONDS)
        self._queue_changed = asyncio.Event()

    # ----- the queue's wake-up -----

    def wake(self) -> None:
        self._queue_changed.set()
        self._queue_changed = asyncio.Event()

    async def wait_for_work(self) -> None:
        """Returns when a message is accepted on this node (callers bound the wait themselves)."""
        await self._queue_changed.wait()

    # ----- sending -----

    async def send(
        self,
        principal: Principal,
        request: SendRequest,
        *,
        idempotency_key: str | None = None,
        source: str = "api",
        request_id: str | None = None,
    ) -> dict[str, Any]:
        require(principal, Scope.SEND)
        tenant_id = tenant_of(principal)
        outgoing = await self._build(tenant_id, request, source)
        idempotency = (idempotency_key, _request_hash(request)) if idempotency_key else None
        return await self._persist(tenant_id, [outgoing], idempotency, batch=False)

    async def send_batch(
        self,
        principal: Principal,
        base: SendRequest,
        recipients: Sequence[BatchRecipient],
        *,
        idempotency_key: str | None = None,
        source: str = "api",
    ) -> dict[str, Any]:
        """One personalised message per recipient (its own variables and metadata over the common ones),
        all stored in one transaction: the batch is accepted whole or not at all."""
        require(principal, Scope.SEND)
        tenant_id = tenant_of(principal)
        if not recipients:
            raise InvalidInput("a batch needs at least one recipient", field="recipients")
        if len(recipients) > MAX_RECIPIENTS:
            raise InvalidInput(f"at most {MAX_RECIPIENTS} recipients per batch", field="recipients")
        items = []
        for i, one in enumerate(recipients):
            request = replace(
                base,
                to=[one.to],
                cc=[],
                bcc=[],
                variables={**base.variables, **one.variables},
                metadata={**base.metadata, **one.metadata},
            )
            try:
                items.append(await self._build(tenant_id, request, source))
            except InvalidInput as exc:
                raise InvalidInput(f"recipients[{i}]: {exc.detail}", field=f"recipients[{i}]") from None
        fingerprint = hashlib.sha256(
            json.dumps([asdict(base), [asdict(r) for r in recipients]], sort_keys=True, default=str).encode()
        ).hexdigest()
        idempotency = (idempotency_key, fingerprint) if idempotency_key else None
        return await self._persist(tenant_id, items, idempotency, batch=True)

    async def _build(self, tenant_id: str, request: SendRequest, source: str) -> _Outgoing:
        """Validate, render, compose and sign one message: everything that needs no transaction."""
        subject, text, html = request.subject, request.text, request.html
        if request.template:
            rendered = await self._templates.render_for(tenant_id, request.template, request.variables)
            subject = subject or rendered.subject
            text = rendered.text if text is None else text
            html = rendered.html if html is None else html
        sender = addresses([request.from_], "from")[0]
        to, cc, bcc = (addresses(request.to, "to"), addresses(request.cc, "cc"), addresses(request.bcc, "bcc"))
        recipients = list(dict.fromkeys(normalize(a.addr_spec) for a in (*to, *cc, *bcc)))
        if not recipients:
            raise InvalidInput("at least one recipient (to, cc or bcc) is required", field="to")
        if len(recipients) > MAX_RECIPIENTS:
            raise InvalidInput(f"at most {MAX_RECIPIENTS} recipients per message", field="to")
        draft = Draft(
            from_=sender,
            to=to,
            cc=cc,
            bcc=bcc,
            reply_to=addresses(request.reply_to, "reply_to"),
            subject=subject,
            text=text,
            html=html,
            attachments=_attachments(request.attachments),
            headers=validate_extra_headers(request.headers),
        )
        ascii_domain = sender.ascii_domain
        raw, message_id_header = compose(draft, message_id_domain=ascii_domain)
        return _Outgoing(
            raw=await self._sign(tenant_id, ascii_domain, raw),
            mail_from=sender.ascii_addr_spec,
            recipients=recipients,
            summary={"subject": subject, "from": str(request.from_), "message_id": message_id_header},
            tags=request.tags,
            meta=request.metadata,
            route=request.route,
            send_at=request.send_at,
            source=source,
        )

    async def send_raw(
        self,
        principal: Principal,
        raw: bytes,
        *,
        mail_from: str | None = None,
        recipients: Sequence[str] | None = None,
        tags: Sequence[str] = (),
        metadata: dict[str, Any] | None = None,
        route: str | None = None,
        send_at: datetime | None = None,
        idempotency_key: str | None = None,
        source: str = "api",
    ) -> dict[str, Any]:
        """Queue a message the caller composed. The envelope defaults to the message's own From and
        To/Cc/Bcc; ``X-Mailgate-*`` header instructions apply unless the caller's arguments say otherwise."""
        require(principal, Scope.SEND)
        tenant_id = tenant_of(principal)
        submitted = prepare(raw, hostname=self._hostname)
        header_from = addresses(submitted.from_addresses[:1], "from")[0]
        sender = addresses([mail_from], "mail_from")[0] if mail_from else header_from
        given = list(recipients) if recipients else submitted.header_recipients
        rcpts = list(dict.fromkeys(normalize(a.addr_spec) for a in addresses(given, "recipients")))
        if not rcpts:
            raise InvalidInput("the message names no recipient (give them in the envelope or To/Cc/Bcc)", field="to")
        if len(rcpts) > MAX_RECIPIENTS:
            raise InvalidInput(f"at most {MAX_RECIPIENTS} recipients per message", field="to")
        key = idempotency_key or submitted.idempotency_key
        # what the caller sent, not what prepare made of it: an added Date or Message-ID differs each time
        fingerprint = hashlib.sha256(
            json.dumps([sender.ascii_addr_spec, rcpts, route, list(tags), send_at and send_at.isoformat()]).encode()
            + raw
        ).hexdigest()
        outgoing = _Outgoing(
            raw=await self._sign(tenant_id, header_from.ascii_domain, submitted.raw),
            mail_from=sender.ascii_addr_spec,
            recipients=rcpts,
            summary={"subject": submitted.subject, "from": header_from.addr_spec, "message_id": submitted.message_id},
            tags=list(dict.fromkeys([*tags, *submitted.tags])),
            meta=metadata or {},
            route=route or submitted.route,
            send_at=send_at,
            source=source,
        )
        return await self._persist(tenant_id, [outgoing], (key, fingerprint) if key else None, batch=False)

    async def _persist(
        self,
        tenant_id: str,
        items: Sequence[_Outgoing],
        idempotency: tuple[str, str] | None,
        *,
        batch: bool,
    ) -> dict[str, Any]:
        """Store the messages, their deliveries and events durably; only then answer.

        Concurrent requests are written together (``_accept_all``): one transaction, one flush and a
        handful of multi-row statements for all of them.
        """
        staged = [await self._blobs.stage(item.raw) for item in items]
        keys = {suppression_key(r) for item in items for r in item.recipients}
        suppressed: set[str] = await self._db.batched_read.run_bulk(self._suppressed_all, (tenant_id, keys))
        accept = _Accept(tenant_id, list(items), staged, idempotency, batch, suppressed)
        response: dict[str, Any] = await self._db.batched.run_bulk(self._accept_all, accept)
        self.wake()
        return response

    async def _suppressed_all(self, conn: AsyncConnection, asks: list[tuple[str, set[str]]]) -> list[set[str]]:
        """Which of each caller's recipients are suppressed, one query per tenant for all concurrent callers.

        Read before, not inside, the accepting transaction, so that on SQLite the write lock is held only
        while the rows are written. A suppression added in between applies from the next send on, as it
        would had it come a moment later: nothing that adds suppressions reads the queue, so the outcome is
        the same as with the accept first."""
        wanted: dict[str, set[str]] = {}
        for tenant_id, keys in asks:
            wanted.setdefault(tenant_id, set()).update(keys)
        found = {t: await repo.suppressed_among(conn, t, sorted(keys)) for t, keys in wanted.items()}
        return [keys & found[tenant_id] for tenant_id, keys in asks]

    async def _accept_all(self, conn: AsyncConnection, accepts: list[_Accept]) -> list[dict[str, Any] | Exception]:
        now = utcnow()
        results: list[dict[str, Any] | Exception | None] = [None] * len(accepts)
        same_as: dict[int, int] = {}
        claimed: dict[tuple[str, str], int] = {}
        for i, accept in enumerate(accepts):
            if accept.idempotency is None:
                continue
            key, fingerprint = accept.idempotency
            first = claimed.get((accept.tenant_id, key))
            if first is not None:  # the same key twice in this very commit
                first_key = accepts[first].idempotency
                assert first_key is not None
                if first_key[1] == fingerprint:
                    same_as[i] = first
                else:
                    results[i] = repo.conflict_for_key(key)
                continue
            seen = await repo.claim_idempotency_key(conn, accept.tenant_id, key, fingerprint, now - IDEMPOTENCY_WINDOW)
            if seen is None:
                claimed[(accept.tenant_id, key)] = i
            elif seen[0] != fingerprint or seen[1] is None:
                results[i] = repo.conflict_for_key(key)
            else:
                results[i] = seen[1]
        live = [i for i, r in enumerate(results) if r is None and i not in same_as]
        message_rows: list[MessageRecord] = []
        delivery_rows: list[DeliveryRecord] = []
        event_rows: list[tuple[EventType, str | None, str | None, dict[str, Any]]] = []
        for i in live:
            accept = accepts[i]
            answers = []
            for item, blob in zip(accept.items, accept.staged, strict=True):
                message, records = _rows(accept.tenant_id, item, blob.ref, accept.suppressed, now)
                message_rows.append(message)
                delivery_rows.extend(records)
                common = {"message_id": message.id, "tags": item.tags, "metadata": item.meta}
                accepted = {**common, "recipients": len(records), "size": blob.ref.size, "source": item.source}
                event_rows.append((EventType.MESSAGE_ACCEPTED, accept.tenant_id, message.id, accepted))
                event_rows.extend(
                    (EventType.DELIVERY_SUPPRESSED, accept.tenant_id, r.id, {**common, "recipient": r.recipient})
                    for r in records
                    if r.status == DeliveryStatus.SUPPRESSED
                )
                answers.append(
                    {
                        "id": message.id,
                        "deliveries": [
                            {"id": r.id, "recipient": r.recipient, "status": r.status.value} for r in records
                        ],
                    }
                )
            results[i] = {"messages": answers} if accept.batch else answers[0]
        await self._blobs.store_many(conn, [blob for i in live for blob in accepts[i].staged])
        await repo.insert_messages(conn, self._keyring, message_rows)
        await repo.insert_deliveries(conn, delivery_rows)
        await self._admin.emit_many_in(conn, event_rows)
        for (tenant_id, key), i in claimed.items():
            response = results[i]
            assert isinstance(response, dict)
            await repo.complete_idempotency_key(conn, tenant_id, key, response)
        for i, first in same_as.items():
            results[i] = results[first]
        return [r if r is not None else AssertionError("unanswered") for r in results]

    async def _sign(self, tenant_id: str, domain: str, raw: bytes) -> bytes:
        signer = await self._signer_for(tenant_id, domain)
        return raw if signer is None else signer.sign(raw) + raw

    async def _signer_for(self, tenant_id: str, domain: str) -> DkimSigner | None:
        """Which key signs mail of ``domain``, remembered for a few seconds: looking it up costs a
        database read, and a burst of mail from one domain would pay it on every message. Keys made on
        this node apply at once (``forget_signers``), on other nodes within ``SIGNER_CACHE_SECONDS``."""

        async def load() -> DkimSigner | None:
            async with self._db.read() as conn:
                key = await repo.signing_key(conn, domain, tenant_id)
            if key is None:
                return None
            signer = self._signers.get(key.id)
            if signer is None:
                pem = await self._keyring.unseal(key.sealed_pem, f"dkim:{key.id}".encode())
                signer = self._signers[key.id] = DkimSigner(key.domain, key.selector, pem)
            return signer

        return await self._signing.get((tenant_id, domain), load)

    def forget_signers(self) -> None:
        self._signing.clear()

    # ----- reading and controlling messages -----

    async def get_message(self, principal: Principal, message_id: str) -> MessageView:
        async with self._db.read() as conn:
            message = await repo.get_message(conn, self._keyring, message_id)
            if message is None or not principal.sees_tenant(message.tenant_id) or not principal.can(Scope.READ):
                raise NotFound("message", message_id)
            deliveries = await repo.deliveries_of(conn, message_id)
            attempts = await repo.attempts_of(conn, [d.id for d in deliveries])
        return MessageView(message, deliveries, attempts)

    async def raw(self, principal: Principal, message_id: str) -> bytes:
        """The message as it is sent (signed, as stored)."""
        return await self.raw_of(await self.get_message(principal, message_id))

    async def raw_of(self, view: MessageView) -> bytes:
        """The bytes of a message the caller has already been allowed to see."""
        return await self._blobs.get(view.message.blob_id)

    async def cancel(self, principal: Principal, message_id: str, request_id: str | None = None) -> MessageView:
        """Cancel every delivery not yet final; an attempt in flight still records what happened."""
        return await self._move(
            principal,
            message_id,
            "message.cancel",
            scope=Scope.SEND,
            to=DeliveryStatus.CANCELLED,
            from_statuses=(DeliveryStatus.QUEUED, DeliveryStatus.DEFERRED, DeliveryStatus.HELD),
            event=EventType.DELIVERY_CANCELLED,
            request_id=request_id,
        )

    async def hold(self, principal: Principal, message_id: str, request_id: str | None = None) -> MessageView:
        """Stop delivering a message until it is released (it keeps its place and its age)."""
        return await self._move(
            principal,
            message_id,
            "message.hold",
            scope=Scope.MANAGE,
            to=DeliveryStatus.HELD,
            from_statuses=(DeliveryStatus.QUEUED, DeliveryStatus.DEFERRED),
            event=EventType.DELIVERY_HELD,
            request_id=request_id,
        )

    async def release(self, principal: Principal, message_id: str, request_id: str | None = None) -> MessageView:
        return await self._move(
            principal,
            message_id,
            "message.release",
            scope=Scope.MANAGE,
            to=DeliveryStatus.QUEUED,
            from_statuses=(DeliveryStatus.HELD,),
            event=EventType.DELIVERY_RELEASED,
            request_id=request_id,
            due_now=True,
        )

    async def retry(self, principal: Principal, message_id: str, request_id: str | None = None) -> MessageView:
        """Attempt deferred deliveries now instead of at their backoff time."""
        return await self._move(
            principal,
            message_id,
            "message.retry",
            scope=Scope.MANAGE,
            to=DeliveryStatus.DEFERRED,
            from_statuses=(DeliveryStatus.DEFERRED,),
            event=None,
            request_id=request_id,
            due_now=True,
        )

    async def _move(
        self,
        principal: Principal,
        message_id: str,
        action: str,
        *,
        scope: Scope,
        to: DeliveryStatus,
        from_statuses: tuple[DeliveryStatus, ...],
        event: EventType | None,
        request_id: str | None,
        due_now: bool = False,
    ) -> MessageView:
        view = await self.get_message(principal, message_id)
        require(principal, scope)
        async with self._db.write() as conn:
            moved = await repo.set_status(
                conn,
                message_id=message_id,
                to=to,
                from_statuses=from_statuses,
                next_attempt_at=utcnow() if due_now else None,
            )
            if event is not None:
                for delivery_id in moved:
                    await self._admin.emit_in(
                        conn,
                        event,
                        tenant_id=view.message.tenant_id,
                        object_id=delivery_id,
                        data={"message_id": message_id},
                    )
            await self._admin.audit_in(
                conn,
                principal,
                action,
                tenant_id=view.message.tenant_id,
                object_type="message",
                object_id=message_id,
                request_id=request_id,
                details={"deliveries": len(moved)},
            )
        if due_now and moved:
            self.wake()
        return await self.get_message(principal, message_id)

    async def retry_queue(
        self, principal: Principal, *, domain: str | None = None, request_id: str | None = None
    ) -> int:
        """Make every deferred delivery of the caller's tenant (all tenants for admins) due now."""
        require(principal, Scope.MANAGE)
        tenant_id = None if principal.is_admin else tenant_of(principal)
        async with self._db.write() as conn:
            count = await repo.retry_now(conn, tenant_id=tenant_id, domain=domain, now=utcnow())
            await self._admin.audit_in(
                conn,
                principal,
                "queue.retry",
                tenant_id=tenant_id,
                object_type="queue",
                object_id=domain,
                request_id=request_id,
                details={"deliveries": count},
            )
        if count:
            self.wake()
        return count

    async def list_queue(
        self,
        principal: Principal,
        *,
        statuses: Sequence[DeliveryStatus],
        domain: str | None,
        after: str | None,
        limit: int,
    ) -> list[DeliveryRecord]:
        require(principal, Scope.READ)
        tenant_id = None if principal.is_admin else tenant_of(principal)
        async with self._db.read() as conn:
            return await repo.list_deliveries(
                conn, tenant_id=tenant_id, statuses=statuses, domain=domain, after=after, limit=min(limit, 500)
            )

    async def queue_counts(self, principal: Principal) -> dict[str, int]:
        require(principal, Scope.READ)
        async with self._db.read() as conn:
            return await repo.queue_counts(conn, None if principal.is_admin else tenant_of(principal))
