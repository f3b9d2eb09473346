"""Reading and changing stored mail: list and search a mailbox, one message parsed, its raw bytes and
attachments, a thread, flags, move and delete.

Records are sealed per message, so everything shown is unsealed here on the way out; the search runs on
the blind index and never needs to open a message it does not return.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from mailgate.admin.service import AdminService
from mailgate.domain.errors import InvalidInput, NotFound, PermissionDenied
from mailgate.domain.mailboxes import MAX_KEYWORDS, MailQuery, StoredMail, check_folder_name
from mailgate.domain.tenancy import Principal, Scope
from mailgate.mime.parse import Attachment, parse_message
from mailgate.security.blind_index import BlindIndex
from mailgate.store import mail as mail_repo
from mailgate.store import mailboxes as repo
from mailgate.store.blobs import BlobStore
from mailgate.store.database import Database
from mailgate.store.keyring import Keyring
from mailgate.store.mail import MailRow
from mailgate.store.types import utcnow

MAX_PAGE = 500
_FLAG_NAMES = ("seen", "flagged", "answered", "deleted", "draft")


def _keyword(word: str) -> str:
    if not word or len(word) > 100 or word.startswith("\\") or any(ord(c) <= 32 or c in '(){%*"\\]' for c in word):
        raise InvalidInput(f"{word[:40]!r} is not a valid keyword (an IMAP atom without '\\')", field="keywords")
    return word


class MailService:
    def __init__(
        self, db: Database, keyring: Keyring, admin: AdminService, blobs: BlobStore, index: BlindIndex
    ) -> None:
        self._db = db
        self._keyring = keyring
        self._admin = admin
        self._blobs = blobs
        self._index = index

    async def _open(self, row: MailRow) -> StoredMail:
        record = json.loads(await self._keyring.unseal(row.record, b"mail:" + row.id.encode()))
        return StoredMail(
            row.id,
            row.tenant_id,
            row.mailbox_id,
            row.folder,
            row.uid,
            row.direction,
            row.received_at,
            row.size,
            row.blob_id,
            row.thread_id,
            row.has_attachments,
            row.spam_score,
            row.flags,
            record,
        )

    async def _visible(self, principal: Principal, mail_id: str) -> MailRow | None:
        async with self._db.read() as conn:
            row = await mail_repo.get(conn, mail_id)
        if row is None or not principal.sees_tenant(row.tenant_id) or not principal.can(Scope.READ):
            return None
        return row

    async def _row(self, principal: Principal, mail_id: str) -> MailRow:
        row = await self._visible(principal, mail_id)
        if row is None:
            raise NotFound("message", mail_id)
        return row

    async def find(self, principal: Principal, mail_id: str) -> StoredMail | None:
        """The stored message, or None when there is none by that id (it may be an outbound one)."""
        row = await self._visible(principal, mail_id)
        return await self._open(row) if row is not None else None

    async def list(
        self,
        principal: Principal,
        mailbox: str,
        filters: MailQuery,
        *,
        after: tuple[datetime, str] | None,
        limit: int,
    ) -> Sequence[StoredMail]:
        limit = max(1, min(limit, MAX_PAGE))
        async with self._db.read() as conn:
            box = await repo.get_mailbox(conn, mailbox)
            if box is None or not principal.sees_tenant(box.tenant_id) or not principal.can(Scope.READ):
                raise NotFound("mailbox", mailbox)
            folder_id = None
            if filters.folder is not None:
                folder = await repo.get_folder(conn, box.id, _folder_name(filters.folder))
                if folder is None:
                    raise NotFound("folder", filters.folder)
                folder_id = folder.id
            terms = self._index.query(box.tenant_id, filters.query) if filters.query else ()
            if filters.query and not terms:
                raise InvalidInput("the query has no word of two or more letters or digits", field="query")
            if filters.from_:
                terms = (*terms, self._index.sender_term(box.tenant_id, filters.from_))
            rows = await mail_repo.list_page(
                conn, box.id, filters, terms, folder_id=folder_id, after=after, limit=limit
            )
        return [await self._open(r) for r in rows]

    async def get(self, principal: Principal, mail_id: str) -> StoredMail:
        return await self._open(await self._row(principal, mail_id))

    async def raw(self, principal: Principal, mail_id: str) -> bytes:
        row = await self._row(principal, mail_id)
        return await self._blobs.get(row.blob_id)

    async def thread(self, principal: Principal, thread_id: str) -> Sequence[StoredMail]:
        if principal.tenant_id is None or not principal.can(Scope.READ):
            raise NotFound("thread", thread_id)
        async with self._db.read() as conn:
            rows = await mail_repo.thread(conn, principal.tenant_id, thread_id, MAX_PAGE)
        if not rows:
            raise NotFound("thread", thread_id)
        return [await self._open(r) for r in rows]

    async def update(
        self, principal: Principal, mail_id: str, changes: dict[str, Any], request_id: str | None = None
    ) -> StoredMail:
        """``changes``: any of the flag names (bool), ``keywords`` (the full list), ``add_keywords`` /
        ``remove_keywords``, and ``folder`` (a move, with a new UID there)."""
        if not principal.can(Scope.MANAGE):
            raise PermissionDenied("this key lacks the 'manage' scope")
        async with self._db.write() as conn:
            row = await mail_repo.get(conn, mail_id)
            if row is None or not principal.sees_tenant(row.tenant_id):
                raise NotFound("message", mail_id)
            flags = row.flags
            values = {name: bool(changes[name]) for name in _FLAG_NAMES if changes.get(name) is not None}
            keywords = list(flags.keywords)
            if changes.get("keywords") is not None:
                keywords = [_keyword(k) for k in changes["keywords"]]
            keywords += [_keyword(k) for k in changes.get("add_keywords") or () if k not in keywords]
            removed = set(changes.get("remove_keywords") or ())
            keywords = [k for k in dict.fromkeys(keywords) if k not in removed]
            if len(keywords) > MAX_KEYWORDS:
                raise InvalidInput(f"a message has at most {MAX_KEYWORDS} keywords", field="keywords")
            new_flags = replace(flags, **values, keywords=tuple(keywords))
            details: dict[str, Any] = {}
            if new_flags != flags:
                await mail_repo.set_flags(conn, row.id, new_flags)
                details["flags"] = new_flags.to_json()
            if changes.get("folder") is not None:
                target = await repo.get_folder(conn, row.mailbox_id, _folder_name(changes["folder"]))
                if target is None:
                    raise NotFound("folder", changes["folder"])
                if target.id != row.folder_id:
                    uid = await repo.take_uids(conn, target.id, 1)
                    await mail_repo.move(conn, row.id, target.id, uid)
                    details["folder"] = target.name
            if details:
                await self._admin.audit_in(
                    conn,
                    principal,
                    "message.update",
                    tenant_id=row.tenant_id,
                    object_type="message",
                    object_id=row.id,
                    request_id=request_id,
                    details=details,
                )
            updated = await mail_repo.get(conn, row.id)
        assert updated is not None
        return await self._open(updated)

    async def delete(self, principal: Principal, mail_id: str, request_id: str | None = None) -> None:
        """NotFound before PermissionDenied: the caller may be deleting (cancelling) a sent message."""
        async with self._db.write() as conn:
            row = await mail_repo.get(conn, mail_id)
            if row is None or not principal.sees_tenant(row.tenant_id):
                raise NotFound("message", mail_id)
            if not principal.can(Scope.MANAGE):
                raise PermissionDenied("this key lacks the 'manage' scope")
            orphans = await mail_repo.delete_many(conn, [row.id])
            await self._admin.audit_in(
                conn,
                principal,
                "message.delete",
                tenant_id=row.tenant_id,
                object_type="message",
                object_id=row.id,
                request_id=request_id,
                details={"at": utcnow().isoformat()},
            )
        await self._blobs.discard(orphans)


def find_attachment(raw: bytes, attachment_id: str) -> Attachment:
    """An attachment decoded from a message's bytes. Parsing is deterministic, so an index is stable:
    attachments are kept once, inside the raw message, not a second time."""
    index = _attachment_index(attachment_id)
    attachments = parse_message(raw).attachments
    if index is None or index >= len(attachments):
        raise NotFound("attachment", attachment_id)
    return attachments[index]


def attachment_id(index: int) -> str:
    """The id the API shows for the attachment at ``index`` (its position in the parsed message)."""
    return f"att_{index}"


def _attachment_index(attachment_id: str) -> int | None:
    prefix, _, number = attachment_id.partition("_")
    return int(number) if prefix == "att" and number.isdigit() and len(number) < 6 else None


def _folder_name(name: str) -> str:
    try:
        return check_folder_name(name)
    except ValueError as exc:
        raise InvalidInput(str(exc), field="folder") from None
