"""Stored mail rows and their blind-index terms: insert, list and filter, flags, move, delete."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Row, and_, delete, exists, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from mailgate.domain.mailboxes import Direction, Flags, MailQuery
from mailgate.store.database import PIPELINED
from mailgate.store.schema import folders, mail, mail_terms, messages


@dataclass(frozen=True, slots=True)
class MailRow:
    """A stored message as the table holds it: ``record`` still sealed."""

    id: str
    tenant_id: str
    mailbox_id: str
    folder_id: str
    folder: str
    uid: int
    direction: Direction
    received_at: datetime
    size: int
    blob_id: str
    record: bytes
    thread_id: str
    has_attachments: bool
    spam_score: float
    flags: Flags


@dataclass(frozen=True, slots=True)
class NewMail:
    id: str
    tenant_id: str
    mailbox_id: str
    folder_id: str
    uid: int
    direction: Direction
    received_at: datetime
    size: int
    blob_id: str
    record: bytes
    thread_id: str
    message_key: str | None
    subject_key: str | None
    has_attachments: bool
    spam_score: float
    flags: Flags
    terms: Sequence[str]


_COLUMNS = (*mail.c, folders.c.name.label("folder"))


def _row(r: Row[Any]) -> MailRow:
    return MailRow(
        r.id,
        r.tenant_id,
        r.mailbox_id,
        r.folder_id,
        r.folder,
        r.uid,
        Direction(r.direction),
        r.received_at,
        r.size,
        r.blob_id,
        r.record,
        r.thread_id,
        r.has_attachments,
        r.spam_score,
        Flags(r.seen, r.flagged, r.answered, r.deleted, r.draft, tuple(r.keywords.get("k", ()))),
    )


def _flag_values(flags: Flags) -> dict[str, Any]:
    return {
        "seen": flags.seen,
        "flagged": flags.flagged,
        "answered": flags.answered,
        "deleted": flags.deleted,
        "draft": flags.draft,
        "keywords": {"k": list(flags.keywords)},
    }


async def insert_many(conn: AsyncConnection, items: Sequence[NewMail]) -> None:
    """Every message and its terms with two multi-row statements, whatever the batch size."""
    if not items:
        return
    await conn.execute(
        mail.insert(),
        [
            {
                "id": m.id,
                "tenant_id": m.tenant_id,
                "mailbox_id": m.mailbox_id,
                "folder_id": m.folder_id,
                "uid": m.uid,
                "direction": m.direction.value,
                "received_at": m.received_at,
                "size": m.size,
                "blob_id": m.blob_id,
                "record": m.record,
                "thread_id": m.thread_id,
                "message_key": m.message_key,
                "subject_key": m.subject_key,
                "has_attachments": m.has_attachments,
                "spam_score": m.spam_score,
                **_flag_values(m.flags),
            }
            for m in items
        ],
        execution_options=PIPELINED,
    )
    terms = [{"term": t, "mail_id": m.id} for m in items for t in m.terms]
    if terms:
        await conn.execute(mail_terms.insert(), terms, execution_options=PIPELINED)


async def thread_of(
    conn: AsyncConnection, mailbox_id: str, *, message_keys: Sequence[str], subject_key: str | None
) -> str | None:
    """The thread of the newest message in the mailbox that this one refers to (References and
    In-Reply-To), or, failing that, of the newest with the same normalized subject."""
    if message_keys:
        query = (
            select(mail.c.thread_id)
            .where(mail.c.mailbox_id == mailbox_id, mail.c.message_key.in_(message_keys))
            .order_by(mail.c.received_at.desc())
            .limit(1)
        )
        found = (await conn.execute(query)).scalar()
        if found:
            return str(found)
    if subject_key:
        query = (
            select(mail.c.thread_id)
            .where(mail.c.mailbox_id == mailbox_id, mail.c.subject_key == subject_key)
            .order_by(mail.c.received_at.desc())
            .limit(1)
        )
        found = (await conn.execute(query)).scalar()
        if found:
            return str(found)
    return None


async def get(conn: AsyncConnection, mail_id: str) -> MailRow | None:
    query = (
        select(*_COLUMNS).select_from(mail.join(folders, folders.c.id == mail.c.folder_id)).where(mail.c.id == mail_id)
    )
    row = (await conn.execute(query)).first()
    return _row(row) if row else None


async def list_page(
    conn: AsyncConnection,
    mailbox_id: str,
    query: MailQuery,
    terms: Sequence[str],
    *,
    folder_id: str | None,
    after: tuple[datetime, str] | None,
    limit: int,
) -> Sequence[MailRow]:
    """Newest first; ``terms`` are the blind-index terms every row must have (the query's words and
    sender); ``after`` is the (received_at, id) of the last row of the previous page. ``query.folder``
    is the caller's to resolve into ``folder_id``."""
    stmt = (
        select(*_COLUMNS)
        .select_from(mail.join(folders, folders.c.id == mail.c.folder_id))
        .where(mail.c.mailbox_id == mailbox_id)
        .order_by(mail.c.received_at.desc(), mail.c.id.desc())
        .limit(limit)
    )
    if folder_id is not None:
        stmt = stmt.where(mail.c.folder_id == folder_id)
    if query.unread is not None:
        stmt = stmt.where(mail.c.seen.is_(not query.unread))
    if query.has_attachments is not None:
        stmt = stmt.where(mail.c.has_attachments.is_(query.has_attachments))
    if query.since is not None:
        stmt = stmt.where(mail.c.received_at >= query.since)
    if query.before is not None:
        stmt = stmt.where(mail.c.received_at < query.before)
    if query.thread_id is not None:
        stmt = stmt.where(mail.c.thread_id == query.thread_id)
    for term in terms:
        stmt = stmt.where(exists().where(mail_terms.c.term == term, mail_terms.c.mail_id == mail.c.id))
    if after is not None:
        at, last_id = after
        stmt = stmt.where(or_(mail.c.received_at < at, and_(mail.c.received_at == at, mail.c.id < last_id)))
    return [_row(r) for r in (await conn.execute(stmt)).all()]


async def thread(conn: AsyncConnection, tenant_id: str, thread_id: str, limit: int) -> Sequence[MailRow]:
    """Oldest first, as a conversation reads."""
    stmt = (
        select(*_COLUMNS)
        .select_from(mail.join(folders, folders.c.id == mail.c.folder_id))
        .where(mail.c.tenant_id == tenant_id, mail.c.thread_id == thread_id)
        .order_by(mail.c.received_at, mail.c.id)
        .limit(limit)
    )
    return [_row(r) for r in (await conn.execute(stmt)).all()]


async def set_flags(conn: AsyncConnection, mail_id: str, flags: Flags) -> None:
    await conn.execute(update(mail).where(mail.c.id == mail_id).values(**_flag_values(flags)))


async def move(conn: AsyncConnection, mail_id: str, folder_id: str, uid: int) -> None:
    """Into another folder under a new UID: IMAP clients key messages by (folder, UID)."""
    await conn.execute(update(mail).where(mail.c.id == mail_id).values(folder_id=folder_id, uid=uid))


async def delete_many(conn: AsyncConnection, mail_ids: Sequence[str]) -> list[str]:
    """Delete the rows; returns the blob ids no stored or outbound message refers to any more, for the
    caller to remove once the transaction is committed."""
    if not mail_ids:
        return []
    blob_ids = [r.blob_id for r in (await conn.execute(select(mail.c.blob_id).where(mail.c.id.in_(mail_ids)))).all()]
    await conn.execute(delete(mail_terms).where(mail_terms.c.mail_id.in_(mail_ids)))
    await conn.execute(delete(mail).where(mail.c.id.in_(mail_ids)))
    return await unreferenced(conn, blob_ids)


async def ids_in(conn: AsyncConnection, *, mailbox_id: str | None = None, folder_id: str | None = None) -> list[str]:
    stmt = select(mail.c.id)
    if mailbox_id is not None:
        stmt = stmt.where(mail.c.mailbox_id == mailbox_id)
    if folder_id is not None:
        stmt = stmt.where(mail.c.folder_id == folder_id)
    return [r.id for r in (await conn.execute(stmt)).all()]


async def unreferenced(conn: AsyncConnection, blob_ids: Sequence[str]) -> list[str]:
    wanted = list(dict.fromkeys(blob_ids))
    if not wanted:
        return []
    used_mail = select(mail.c.blob_id).where(mail.c.blob_id.in_(wanted))
    used_out = select(messages.c.blob_id).where(messages.c.blob_id.in_(wanted))
    used = {r[0] for r in (await conn.execute(used_mail.union(used_out))).all()}
    return [b for b in wanted if b not in used]
