"""Domain, mailbox, alias and folder rows, and the recipient lookup the MX runs for every RCPT."""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Row, and_, bindparam, case, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from mailgate.domain.errors import Conflict
from mailgate.domain.inbound import SpamThresholds
from mailgate.domain.mailboxes import DEFAULT_FOLDERS, Domain, Folder
from mailgate.store.database import execute_unique
from mailgate.store.schema import aliases, domains, folders, mail, mailboxes


@dataclass(frozen=True, slots=True)
class MailboxRow:
    """A mailbox as stored: the display name still sealed (the service opens it)."""

    id: str
    tenant_id: str
    domain_id: str
    address: str
    display_name: bytes | None
    settings: dict[str, Any]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Recipient:
    """Where mail for one RCPT address goes."""

    mailbox_id: str
    tenant_id: str
    domain_id: str
    address: str  # the mailbox's own address


def _domain(row: Row[Any], defaults: SpamThresholds) -> Domain:
    spam = SpamThresholds(
        tag=defaults.tag if row.spam_tag is None else row.spam_tag,
        junk=defaults.junk if row.spam_junk is None else row.spam_junk,
        reject=defaults.reject if row.spam_reject is None else row.spam_reject,
    )
    return Domain(row.id, row.tenant_id, row.name, row.catch_all, spam, row.created_at)


def _mailbox(row: Row[Any]) -> MailboxRow:
    return MailboxRow(
        row.id,
        row.tenant_id,
        row.domain_id,
        row.address,
        row.display_name,
        row.settings,
        row.created_at,
        row.updated_at,
    )


# ----- domains -----


async def insert_domain(conn: AsyncConnection, *, id: str, tenant_id: str, name: str, at: datetime) -> None:
    statement = domains.insert().values(id=id, tenant_id=tenant_id, name=name, created_at=at)
    await execute_unique(conn, statement, f"the domain {name!r} already exists")


async def get_domain(conn: AsyncConnection, ident: str, defaults: SpamThresholds) -> Domain | None:
    row = (await conn.execute(select(domains).where(or_(domains.c.id == ident, domains.c.name == ident)))).first()
    return _domain(row, defaults) if row else None


async def list_domains(
    conn: AsyncConnection, tenant_id: str | None, *, after: str | None, limit: int, defaults: SpamThresholds
) -> Sequence[Domain]:
    query = select(domains).order_by(domains.c.id).limit(limit)
    if tenant_id is not None:
        query = query.where(domains.c.tenant_id == tenant_id)
    if after is not None:
        query = query.where(domains.c.id > after)
    return [_domain(r, defaults) for r in (await conn.execute(query)).all()]


async def update_domain(conn: AsyncConnection, domain_id: str, values: dict[str, Any]) -> None:
    await conn.execute(update(domains).where(domains.c.id == domain_id).values(**values))


async def delete_domain(conn: AsyncConnection, domain_id: str) -> None:
    await conn.execute(delete(domains).where(domains.c.id == domain_id))


# ----- mailboxes and aliases -----


async def insert_mailbox(conn: AsyncConnection, row: MailboxRow) -> None:
    """The mailbox and its default folders. An address already used by a mailbox or an alias is a
    Conflict: one address, one destination."""
    if await _address_taken(conn, row.address):
        raise Conflict(f"the address {row.address!r} is already a mailbox or an alias")
    statement = mailboxes.insert().values(
        id=row.id,
        tenant_id=row.tenant_id,
        domain_id=row.domain_id,
        address=row.address,
        display_name=row.display_name,
        settings=row.settings,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )
    await execute_unique(conn, statement, f"the address {row.address!r} is already a mailbox")
    await conn.execute(
        folders.insert(),
        [
            {
                "id": new_folder_id(),
                "mailbox_id": row.id,
                "name": name,
                "special_use": special,
                "uidvalidity": new_uidvalidity(),
                "uidnext": 1,
                "created_at": row.created_at,
            }
            for name, special in DEFAULT_FOLDERS
        ],
    )


async def _address_taken(conn: AsyncConnection, address: str) -> bool:
    in_mailboxes = select(mailboxes.c.id).where(mailboxes.c.address == address)
    in_aliases = select(aliases.c.mailbox_id).where(aliases.c.address == address)
    return (await conn.execute(in_mailboxes.union_all(in_aliases).limit(1))).first() is not None


async def get_mailbox(conn: AsyncConnection, ident: str) -> MailboxRow | None:
    """By id or by address."""
    query = select(mailboxes).where(or_(mailboxes.c.id == ident, mailboxes.c.address == ident))
    row = (await conn.execute(query)).first()
    return _mailbox(row) if row else None


async def list_mailboxes(
    conn: AsyncConnection, tenant_id: str | None, *, domain_id: str | None, after: str | None, limit: int
) -> Sequence[MailboxRow]:
    query = select(mailboxes).order_by(mailboxes.c.id).limit(limit)
    if tenant_id is not None:
        query = query.where(mailboxes.c.tenant_id == tenant_id)
    if domain_id is not None:
        query = query.where(mailboxes.c.domain_id == domain_id)
    if after is not None:
        query = query.where(mailboxes.c.id > after)
    return [_mailbox(r) for r in (await conn.execute(query)).all()]


async def update_mailbox(conn: AsyncConnection, mailbox_id: str, values: dict[str, Any]) -> None:
    if "address" in values and await _address_taken(conn, values["address"]):
        raise Conflict(f"the address {values['address']!r} is already a mailbox or an alias")
    await conn.execute(update(mailboxes).where(mailboxes.c.id == mailbox_id).values(**values))


async def delete_mailbox(conn: AsyncConnection, mailbox_id: str) -> None:
    await conn.execute(update(domains).where(domains.c.catch_all == mailbox_id).values(catch_all=None))
    await conn.execute(delete(mailboxes).where(mailboxes.c.id == mailbox_id))


async def aliases_of(conn: AsyncConnection, mailbox_ids: Sequence[str]) -> dict[str, tuple[str, ...]]:
    if not mailbox_ids:
        return {}
    query = (
        select(aliases.c.mailbox_id, aliases.c.address)
        .where(aliases.c.mailbox_id.in_(mailbox_ids))
        .order_by(aliases.c.address)
    )
    out: dict[str, list[str]] = {}
    for row in (await conn.execute(query)).all():
        out.setdefault(row.mailbox_id, []).append(row.address)
    return {k: tuple(v) for k, v in out.items()}


async def add_alias(conn: AsyncConnection, *, address: str, tenant_id: str, mailbox_id: str, at: datetime) -> None:
    if await _address_taken(conn, address):
        raise Conflict(f"the address {address!r} is already a mailbox or an alias")
    await conn.execute(
        aliases.insert().values(address=address, tenant_id=tenant_id, mailbox_id=mailbox_id, created_at=at)
    )


async def remove_alias(conn: AsyncConnection, mailbox_id: str, address: str) -> bool:
    result = await conn.execute(delete(aliases).where(aliases.c.mailbox_id == mailbox_id, aliases.c.address == address))
    return result.rowcount == 1


async def resolve(conn: AsyncConnection, address: str, *, plus: str = "+") -> Recipient | None:
    """The mailbox for an RCPT address: a mailbox or alias of that address, else of the address without
    its ``+tag`` (plus-addressing), else the domain's catch-all. One query."""
    local, _, domain = address.rpartition("@")
    candidates = [address]
    if plus and plus in local:
        candidates.append(f"{local.split(plus, 1)[0]}@{domain}")
    direct = (
        select(
            mailboxes.c.id,
            mailboxes.c.tenant_id,
            mailboxes.c.domain_id,
            mailboxes.c.address,
            aliases.c.address.label("alias"),
        )
        .select_from(
            mailboxes.outerjoin(aliases, aliases.c.mailbox_id == mailboxes.c.id),
        )
        .where(or_(mailboxes.c.address.in_(candidates), aliases.c.address.in_(candidates)))
    )
    rows = (await conn.execute(direct)).all()
    if rows:
        exact = [r for r in rows if address in (r.address, r.alias)]  # the address itself before its plus-stripped form
        row = (exact or rows)[0]
        return Recipient(row.id, row.tenant_id, row.domain_id, row.address)
    catch_all = (
        select(mailboxes.c.id, mailboxes.c.tenant_id, mailboxes.c.domain_id, mailboxes.c.address)
        .select_from(domains.join(mailboxes, mailboxes.c.id == domains.c.catch_all))
        .where(domains.c.name == domain)
    )
    found = (await conn.execute(catch_all)).first()
    return Recipient(found.id, found.tenant_id, found.domain_id, found.address) if found else None


async def domain_exists(conn: AsyncConnection, name: str) -> bool:
    return (await conn.execute(select(domains.c.id).where(domains.c.name == name))).first() is not None


# ----- folders -----


def new_folder_id() -> str:
    return "fld_" + secrets.token_hex(8)


def new_uidvalidity() -> int:
    """Seconds since the epoch, as Dovecot and Cyrus do: a recreated folder gets a larger value, so a
    client's cached UIDs are known to be stale."""
    return int(time.time())


def _folder(row: Row[Any]) -> Folder:
    return Folder(
        row.id,
        row.mailbox_id,
        row.name,
        row.special_use,
        row.uidvalidity,
        row.uidnext,
        int(getattr(row, "total", 0) or 0),
        int(getattr(row, "unread", 0) or 0),
    )


async def list_folders(conn: AsyncConnection, mailbox_id: str) -> Sequence[Folder]:
    counts = (
        select(
            mail.c.folder_id,
            func.count().label("total"),
            func.sum(case((mail.c.seen.is_(False), 1), else_=0)).label("unread"),
        )
        .where(mail.c.mailbox_id == mailbox_id)
        .group_by(mail.c.folder_id)
        .subquery()
    )
    query = (
        select(folders, counts.c.total, counts.c.unread)
        .select_from(folders.outerjoin(counts, counts.c.folder_id == folders.c.id))
        .where(folders.c.mailbox_id == mailbox_id)
        .order_by(folders.c.name)
    )
    return [_folder(r) for r in (await conn.execute(query)).all()]


async def get_folder(conn: AsyncConnection, mailbox_id: str, name: str) -> Folder | None:
    query = select(folders).where(and_(folders.c.mailbox_id == mailbox_id, folders.c.name == name))
    row = (await conn.execute(query)).first()
    return _folder(row) if row else None


# The two statements of every MX batch, built once: building a statement costs more than running it.
_FOLDER_IDS = select(folders.c.mailbox_id, folders.c.id).where(
    folders.c.mailbox_id.in_(bindparam("boxes", expanding=True)), folders.c.name == bindparam("name")
)
_TAKE_UIDS = (
    update(folders)
    .where(folders.c.id == bindparam("folder"))
    .values(uidnext=folders.c.uidnext + bindparam("count"))
    .returning(folders.c.uidnext)
)


async def folder_ids(conn: AsyncConnection, mailbox_ids: Sequence[str], name: str) -> dict[str, str]:
    """mailbox id -> id of its folder called ``name`` (the MX's batch of deliveries)."""
    rows = (await conn.execute(_FOLDER_IDS, {"boxes": list(mailbox_ids), "name": name})).all()
    return {r.mailbox_id: r.id for r in rows}


async def insert_folder(conn: AsyncConnection, mailbox_id: str, name: str, at: datetime) -> Folder:
    folder = Folder(new_folder_id(), mailbox_id, name, None, new_uidvalidity(), 1)
    statement = folders.insert().values(
        id=folder.id,
        mailbox_id=mailbox_id,
        name=name,
        special_use=None,
        uidvalidity=folder.uidvalidity,
        uidnext=1,
        created_at=at,
    )
    await execute_unique(conn, statement, f"the folder {name!r} already exists")
    return folder


async def rename_folder(conn: AsyncConnection, folder_id: str, name: str) -> None:
    statement = update(folders).where(folders.c.id == folder_id).values(name=name)
    await execute_unique(conn, statement, f"the folder {name!r} already exists")


async def delete_folder(conn: AsyncConnection, folder_id: str) -> None:
    await conn.execute(delete(folders).where(folders.c.id == folder_id))


async def take_uids(conn: AsyncConnection, folder_id: str, count: int) -> int:
    """Reserve ``count`` consecutive UIDs in a folder; returns the first. The row lock (PostgreSQL) or
    the write lock (SQLite) it takes orders concurrent deliveries into the folder."""
    after = int((await conn.execute(_TAKE_UIDS, {"folder": folder_id, "count": count})).scalar_one())
    return after - count
