"""The facade the MX listener calls: who may receive, and storing what arrives.

A message is answered 250 only after the transaction that holds it is committed: the raw bytes as a
sealed blob, one sealed parsed record per destination mailbox, its blind-index terms and its
``message.received`` events. Concurrent deliveries share one group commit, so a burst costs one disk
flush rather than one per message. When the store cannot take the message the reply is 451 and the
sender keeps it; nothing is acknowledged that is not durable.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from email.utils import format_datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from mailgate.admin.service import AdminService
from mailgate.domain.delivery import Reply
from mailgate.domain.errors import MailgateError, Unavailable
from mailgate.domain.inbound import AuthResults, InboundEnvelope, SpamAction, SpamThresholds, SpamVerdict
from mailgate.domain.mailboxes import INBOX, JUNK, Direction, Domain, Flags, mailbox_key
from mailgate.domain.records import EventType
from mailgate.inbound.auth import SenderAuthenticator
from mailgate.inbound.spam import SpamInput, SpamScorer
from mailgate.mime.parse import ParsedMessage, parse_message
from mailgate.mime.threads import normalize_subject
from mailgate.observability.logging import get_logger
from mailgate.security.blind_index import BlindIndex
from mailgate.store import mail as mail_repo
from mailgate.store import mailboxes as repo
from mailgate.store.blobs import BlobStore, StagedBlob
from mailgate.store.cache import ReadThroughCache
from mailgate.store.database import Database
from mailgate.store.keyring import Keyring
from mailgate.store.mail import NewMail
from mailgate.store.mailboxes import Recipient
from mailgate.store.types import utcnow

log = get_logger("mailgate.inbound")

DIRECTORY_SECONDS = 2.0  # a mailbox created on another node receives mail within this time
PARSE_INLINE_MAX = 256 * 1024  # larger messages are parsed off the event loop
BounceSink = Callable[[bytes, Sequence[str]], Awaitable[object]]

MAILBOX_UNKNOWN = Reply(550, "5.1.1", "no such mailbox here")
RELAY_DENIED = Reply(550, "5.7.1", "relaying denied: this host does not accept mail for that domain")
BAD_ADDRESS = Reply(501, "5.1.3", "bad recipient address syntax")
_UNSAFE_IN_HEADER = re.compile(r"[^\x21-\x7e]+")
NOT_STORED = Reply(451, "4.3.0", "temporarily unable to store the message; try again later")


@dataclass(frozen=True, slots=True)
class _Delivery:
    """One message for one mailbox, sealed and ready for the storing transaction."""

    mail: NewMail
    folder: str
    message_keys: tuple[str, ...]
    thread_by_subject: bool
    event: dict[str, Any]


@dataclass(frozen=True, slots=True)
class PendingMail:
    """A received message ready to commit: its blob and one delivery per mailbox (plain data, so that
    another process can commit it; see ``commit_through``)."""

    blob: StagedBlob
    deliveries: tuple[_Delivery, ...]


Commit = Callable[[PendingMail], Awaitable[None]]


class InboundService:
    def __init__(
        self,
        db: Database,
        keyring: Keyring,
        admin: AdminService,
        blobs: BlobStore,
        index: BlindIndex,
        *,
        authenticator: SenderAuthenticator,
        spam: SpamScorer,
        hostname: str,
        spam_defaults: SpamThresholds,
        bounce_domain: str | None = None,
        bounce_sink: BounceSink | None = None,
        plus: str = "+",
    ) -> None:
        self._db = db
        self._keyring = keyring
        self._admin = admin
        self._blobs = blobs
        self._index = index
        self._auth = authenticator
        self._spam = spam
        self._hostname = hostname
        self._spam_defaults = spam_defaults
        self._bounce_domain = bounce_domain
        self._bounce_sink = bounce_sink
        self._plus = plus
        self._directory: ReadThroughCache[str, Recipient | None] = ReadThroughCache(DIRECTORY_SECONDS)
        self._domains: ReadThroughCache[str, Domain | None] = ReadThroughCache(DIRECTORY_SECONDS)
        self._commit: Commit = self.store

    def commit_through(self, commit: Commit) -> None:
        """Have ``commit`` store what this service received, instead of ``store``: a worker process
        on SQLite asks the node, the database's one writer, which commits it with everyone's."""
        self._commit = commit

    async def store(self, pending: PendingMail) -> None:
        """Commit a received message, in the group commit with the others of the moment; raises
        Unavailable when the database cannot take it."""
        await self._db.batched.run_bulk(self._store_all, pending)

    def forget_directory(self) -> None:
        self._directory.clear()
        self._domains.clear()

    # ----- RCPT time -----

    async def _lookup(self, key: str) -> Recipient | None:
        async def load() -> Recipient | None:
            async with self._db.read() as conn:
                return await repo.resolve(conn, key, plus=self._plus)

        return await self._directory.get(key, load)

    async def _domain(self, domain_id: str) -> Domain | None:
        async def load() -> Domain | None:
            async with self._db.read() as conn:
                return await repo.get_domain(conn, domain_id, self._spam_defaults)

        return await self._domains.get(domain_id, load)

    def _is_bounce_address(self, key: str) -> bool:
        return self._bounce_domain is not None and key.rpartition("@")[2] == self._bounce_domain

    async def check_recipient(self, address: str, *, client_ip: str) -> Reply | None:
        try:
            key = mailbox_key(address)
        except ValueError:
            return BAD_ADDRESS
        if self._is_bounce_address(key):
            return None
        if await self._lookup(key) is not None:
            return None
        async with self._db.read() as conn:
            ours = await repo.domain_exists(conn, key.rpartition("@")[2])
        return MAILBOX_UNKNOWN if ours else RELAY_DENIED

    # ----- DATA -----

    async def receive(self, envelope: InboundEnvelope) -> Reply:
        """Check, parse and store one message for every hosted recipient; hand reports to the bounce
        handler. Refused only as spam (550 5.7.1) or when it cannot be stored (451)."""
        try:
            return await self._receive(envelope)
        except Unavailable as exc:
            log.warning("inbound message not stored", reason=exc.detail, client=envelope.client_ip)
            return NOT_STORED

    async def _receive(self, envelope: InboundEnvelope) -> Reply:
        targets: dict[str, Recipient] = {}
        to_bounces: list[str] = []
        for address in envelope.recipients:
            try:
                key = mailbox_key(address)
            except ValueError:
                continue
            if self._is_bounce_address(key):
                to_bounces.append(key)
                continue
            found = await self._lookup(key)
            if found is not None:
                targets.setdefault(found.mailbox_id, found)
        data = envelope.data
        parsed = await asyncio.to_thread(parse_message, data) if len(data) > PARSE_INLINE_MAX else parse_message(data)
        if to_bounces or _is_report(parsed):
            await self._hand_to_bounces(data, to_bounces or list(envelope.recipients))
        if not targets:
            return Reply(250, "2.0.0", "report received" if to_bounces else "accepted")
        sender = parsed.from_[0].address if parsed.from_ else ""
        auth = await self._auth.check(
            data,
            client_ip=envelope.client_ip,
            helo=envelope.helo,
            mail_from=envelope.mail_from,
            header_from=sender.rpartition("@")[2],
        )
        verdict = await self._spam.score(_spam_input(envelope, parsed, auth))
        plans: list[tuple[Recipient, SpamAction]] = []
        for recipient in targets.values():
            domain = await self._domain(recipient.domain_id)
            thresholds = domain.spam if domain is not None else self._spam_defaults
            plans.append((recipient, thresholds.action(verdict.score)))
        if all(action == SpamAction.REJECT for _, action in plans):
            await self._record_rejection(envelope, plans, verdict)
            return Reply(550, "5.7.1", f"message refused as spam (score {verdict.score:.1f})")
        stored = self._stored_bytes(envelope, auth, verdict, max((a for _, a in plans), key=list(SpamAction).index))
        blob = await self._blobs.stage(stored)
        now = utcnow()
        deliveries = [
            self._delivery(recipient, action, envelope, parsed, auth, verdict, blob, now, len(stored))
            for recipient, action in plans
            if action != SpamAction.REJECT
        ]
        await self._commit(PendingMail(blob, tuple(deliveries)))
        ids = ",".join(d.mail.id for d in deliveries)
        return Reply(250, "2.0.0", f"stored as {ids}")

    def _stored_bytes(
        self, envelope: InboundEnvelope, auth: AuthResults, verdict: SpamVerdict, action: SpamAction
    ) -> bytes:
        """The message as kept: our trace and result headers above the bytes as received (RFC 5321
        4.4: Return-Path and Received are prepended, nothing else is changed)."""
        peer = f"{envelope.client_name or ''} [{envelope.client_ip}]".strip()
        proto = "ESMTPS" if envelope.tls else "ESMTP"
        lines = [
            f"Return-Path: <{_header_safe(envelope.mail_from)}>",
            f"Received: from {_header_safe(envelope.helo) or 'unknown'} ({peer})\r\n\tby {self._hostname} "
            f"(mailgate) with {proto}; {format_datetime(utcnow())}",
            self._auth.header(auth),
        ]
        if action != SpamAction.NONE:
            lines.append("X-Spam-Flag: YES")
        lines.append(f"X-Spam-Score: {verdict.score:.1f}")
        return ("\r\n".join(lines) + "\r\n").encode() + envelope.data

    def _delivery(
        self,
        recipient: Recipient,
        action: SpamAction,
        envelope: InboundEnvelope,
        parsed: ParsedMessage,
        auth: AuthResults,
        verdict: SpamVerdict,
        blob: StagedBlob,
        now: datetime,
        size: int,
    ) -> _Delivery:
        tenant = recipient.tenant_id
        mail_id = "msg_" + secrets.token_hex(10)
        folder = JUNK if action == SpamAction.JUNK else INBOX
        record = parsed.to_json()
        record["auth"] = auth.to_json()
        record["spam"] = verdict.to_json(action)
        record["envelope"] = {
            "mail_from": envelope.mail_from,
            "client_ip": envelope.client_ip,
            "helo": envelope.helo,
            "tls": envelope.tls,
        }
        subject = normalize_subject(parsed.subject)
        references = [*parsed.references, *([parsed.in_reply_to] if parsed.in_reply_to else [])]
        fingerprint = self._index.fingerprint
        texts = [
            parsed.subject,
            parsed.text,
            *(f"{a.name} {a.address}" for a in (*parsed.from_, *parsed.to, *parsed.cc, *parsed.reply_to)),
            *(a.filename or "" for a in parsed.attachments),
        ]
        sealed = self._keyring.seal(_json_bytes(record), b"mail:" + mail_id.encode())
        new = NewMail(
            id=mail_id,
            tenant_id=tenant,
            mailbox_id=recipient.mailbox_id,
            folder_id="",  # filled in by the storing transaction (folder ids are looked up there)
            uid=0,
            direction=Direction.INBOUND,
            received_at=now,
            size=size,
            blob_id=blob.ref.id,
            record=sealed,
            thread_id="",
            message_key=fingerprint(tenant, "mid", parsed.message_id) if parsed.message_id else None,
            subject_key=fingerprint(tenant, "subject", subject) if subject else None,
            has_attachments=bool(parsed.attachments),
            spam_score=verdict.score,
            flags=Flags(),
            terms=self._index.terms(tenant, texts, senders=[a.address for a in parsed.from_]),
        )
        event = {
            "mailbox_id": recipient.mailbox_id,
            "folder": folder,
            "direction": Direction.INBOUND.value,
            "from": parsed.from_[0].address if parsed.from_ else "",
            "mail_from": envelope.mail_from,
            "size": size,
            "attachments": len(parsed.attachments),
            "spam": {"score": round(verdict.score, 2), "action": action.value},
            "dmarc": auth.dmarc.result.value,
        }
        return _Delivery(
            new,
            folder,
            tuple(fingerprint(tenant, "mid", r) for r in references),
            bool(subject) and subject != " ".join(parsed.subject.split()).casefold(),  # a prefix was stripped
            event,
        )

    async def _store_all(self, conn: AsyncConnection, batches: list[PendingMail]) -> list[None]:
        """Every pending message of the group commit: blobs, UIDs per folder, threads, rows, events."""
        await self._blobs.store_many(conn, [b.blob for b in batches])
        deliveries = [d for b in batches for d in b.deliveries]
        wanted: dict[str, set[str]] = {}
        for d in deliveries:
            wanted.setdefault(d.folder, set()).add(d.mail.mailbox_id)
        folder_of: dict[tuple[str, str], str] = {}
        for name, boxes in wanted.items():
            for box, folder_id in (await repo.folder_ids(conn, sorted(boxes), name)).items():
                folder_of[(box, name)] = folder_id
        counts: dict[str, int] = {}
        for d in deliveries:
            fid = folder_of[(d.mail.mailbox_id, d.folder)]
            counts[fid] = counts.get(fid, 0) + 1
        next_uid = {fid: await repo.take_uids(conn, fid, n) for fid, n in sorted(counts.items())}
        rows: list[NewMail] = []
        threads: dict[tuple[str, str], str] = {}  # (mailbox, message key) -> thread, for this batch
        for d in deliveries:
            fid = folder_of[(d.mail.mailbox_id, d.folder)]
            uid = next_uid[fid]
            next_uid[fid] = uid + 1
            thread_id = next(
                (threads[(d.mail.mailbox_id, k)] for k in d.message_keys if (d.mail.mailbox_id, k) in threads), None
            )
            if thread_id is None and (d.message_keys or d.thread_by_subject):
                thread_id = await mail_repo.thread_of(
                    conn,
                    d.mail.mailbox_id,
                    message_keys=d.message_keys,
                    subject_key=d.mail.subject_key if d.thread_by_subject else None,
                )
            thread_id = thread_id or "thr_" + secrets.token_hex(8)
            if d.mail.message_key:
                threads[(d.mail.mailbox_id, d.mail.message_key)] = thread_id
            rows.append(_with(d.mail, folder_id=fid, uid=uid, thread_id=thread_id))
        await mail_repo.insert_many(conn, rows)
        await self._admin.emit_many_in(
            conn,
            [
                (EventType.MESSAGE_RECEIVED, r.tenant_id, r.id, {**d.event, "uid": r.uid, "thread_id": r.thread_id})
                for r, d in zip(rows, deliveries, strict=True)
            ],
        )
        self._db.mark_events_written(conn)
        return [None] * len(batches)

    async def _record_rejection(
        self, envelope: InboundEnvelope, plans: Sequence[tuple[Recipient, SpamAction]], verdict: SpamVerdict
    ) -> None:
        data = {
            "reason": "spam",
            "score": round(verdict.score, 2),
            "mail_from": envelope.mail_from,
            "client_ip": envelope.client_ip,
            "size": len(envelope.data),
        }
        try:
            async with self._db.write() as conn:
                await self._admin.emit_many_in(
                    conn,
                    [
                        (EventType.MESSAGE_REJECTED, r.tenant_id, r.mailbox_id, {**data, "mailbox_id": r.mailbox_id})
                        for r, _ in plans
                    ],
                )
                self._db.mark_events_written(conn)
        except MailgateError as exc:  # the refusal stands; only its record is lost
            log.warning("could not record a rejected message", error=exc.detail)

    async def _hand_to_bounces(self, raw: bytes, to: Sequence[str]) -> None:
        if self._bounce_sink is None:
            return
        try:
            await self._bounce_sink(raw, to)
        except MailgateError as exc:  # a report we cannot match is not the sender's problem
            log.info("bounce report not applied", reason=exc.detail)


def _with(mail: NewMail, *, folder_id: str, uid: int, thread_id: str) -> NewMail:
    return replace(mail, folder_id=folder_id, uid=uid, thread_id=thread_id)


def _is_report(parsed: ParsedMessage) -> bool:
    """A DSN or ARF report (multipart/report), whatever address it came to."""
    content_type = next((v for k, v in parsed.headers if k.lower() == "content-type"), "")
    return content_type.strip().lower().startswith("multipart/report")


def _header_safe(text: str) -> str:
    """A client-given name (HELO) as it may stand in our Received header: printable ASCII, no spaces."""
    return _UNSAFE_IN_HEADER.sub("", text)[:255]


def _json_bytes(record: dict[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode()


def _spam_input(envelope: InboundEnvelope, parsed: ParsedMessage, auth: AuthResults) -> SpamInput:
    first = parsed.from_[0] if parsed.from_ else None
    return SpamInput(
        raw=envelope.data,
        client_ip=envelope.client_ip,
        helo=envelope.helo,
        mail_from=envelope.mail_from,
        recipients=envelope.recipients,
        auth=auth,
        headers=parsed.headers,
        subject=parsed.subject,
        from_address=first.address if first else "",
        from_name=first.name if first else "",
        text=parsed.text,
        html=parsed.html,
        attachment_types=tuple(a.content_type for a in parsed.attachments),
        attachment_names=tuple(a.filename for a in parsed.attachments),
    )
