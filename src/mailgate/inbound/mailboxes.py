"""The facade for domains, mailboxes, aliases and folders.

Every change commits with its audit entry. Visibility is decided here: another tenant's domain or
mailbox is NotFound, exactly like one that does not exist. Display names are people's names, so they
are sealed like message content.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from mailgate.admin.service import AdminService
from mailgate.domain.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from mailgate.domain.inbound import SpamThresholds
from mailgate.domain.mailboxes import (
    DEFAULT_FOLDERS,
    INBOX,
    Domain,
    Folder,
    Mailbox,
    check_folder_name,
    domain_key,
    mailbox_key,
)
from mailgate.domain.tenancy import Principal, Scope
from mailgate.store import mail as mail_repo
from mailgate.store import mailboxes as repo
from mailgate.store import tenants as tenants_repo
from mailgate.store.blobs import BlobStore
from mailgate.store.database import Database
from mailgate.store.keyring import Keyring
from mailgate.store.mailboxes import MailboxRow
from mailgate.store.types import utcnow

MAX_DISPLAY_NAME = 200
_SPAM_FIELDS = ("spam_tag", "spam_junk", "spam_reject")


def _require(principal: Principal, scope: Scope) -> None:
    if not principal.can(scope):
        raise PermissionDenied(f"this key lacks the {scope.value!r} scope")


def _checked(check: Callable[[str], str], value: str, field: str) -> str:
    try:
        return check(value)
    except ValueError as exc:
        raise InvalidInput(str(exc), field=field) from None


def _display_name(value: str | None) -> str:
    name = (value or "").strip()
    if len(name) > MAX_DISPLAY_NAME or any(ord(c) < 32 for c in name):
        raise InvalidInput(f"a display name is up to {MAX_DISPLAY_NAME} printable characters", field="display_name")
    return name


class MailboxService:
    def __init__(
        self,
        db: Database,
        keyring: Keyring,
        admin: AdminService,
        blobs: BlobStore,
        *,
        spam_defaults: SpamThresholds,
    ) -> None:
        self._db = db
        self._keyring = keyring
        self._admin = admin
        self._blobs = blobs
        self.spam_defaults = spam_defaults
        self.changed: list[Callable[[], None]] = []  # recipient caches forget on any change

    def _changed(self) -> None:
        for callback in self.changed:
            callback()

    async def _tenant_for(self, conn: AsyncConnection, principal: Principal, tenant: str | None) -> str:
        """The tenant a new object belongs to: the one named (admins may name any), else the key's own."""
        if tenant is None:
            if principal.tenant_id is None:
                raise InvalidInput("name the tenant this belongs to", field="tenant")
            return principal.tenant_id
        found = await tenants_repo.get_tenant(conn, tenant)
        if found is None or not principal.sees_tenant(found.id):
            raise NotFound("tenant", tenant)
        return found.id

    async def _audit(
        self,
        conn: AsyncConnection,
        principal: Principal,
        action: str,
        tenant_id: str,
        object_type: str,
        object_id: str,
        request_id: str | None,
        details: dict[str, Any] | None = None,
    ) -> None:
        await self._admin.audit_in(
            conn,
            principal,
            action,
            tenant_id=tenant_id,
            object_type=object_type,
            object_id=object_id,
            request_id=request_id,
            details=details,
        )

    # ----- domains -----

    async def create_domain(
        self, principal: Principal, name: str, *, tenant: str | None = None, request_id: str | None = None
    ) -> Domain:
        _require(principal, Scope.MANAGE)
        domain = _checked(domain_key, name, "name")
        async with self._db.write() as conn:
            tenant_id = await self._tenant_for(conn, principal, tenant)
            domain_id = "dom_" + secrets.token_hex(8)
            await repo.insert_domain(conn, id=domain_id, tenant_id=tenant_id, name=domain, at=utcnow())
            await self._audit(
                conn, principal, "domain.create", tenant_id, "domain", domain_id, request_id, {"name": domain}
            )
            created = await repo.get_domain(conn, domain_id, self.spam_defaults)
        assert created is not None
        self._changed()
        return created

    async def get_domain(self, principal: Principal, ident: str) -> Domain:
        async with self._db.read() as conn:
            found = await repo.get_domain(conn, ident.lower(), self.spam_defaults)
        if found is None or not principal.sees_tenant(found.tenant_id) or not principal.can(Scope.READ):
            raise NotFound("domain", ident)
        return found

    async def list_domains(self, principal: Principal, *, after: str | None, limit: int) -> Sequence[Domain]:
        if not principal.can(Scope.READ) or (not principal.is_admin and principal.tenant_id is None):
            return []
        async with self._db.read() as conn:
            tenant_id = None if principal.is_admin else principal.tenant_id
            return await repo.list_domains(conn, tenant_id, after=after, limit=limit, defaults=self.spam_defaults)

    async def update_domain(
        self, principal: Principal, ident: str, changes: dict[str, Any], request_id: str | None = None
    ) -> Domain:
        """``changes`` may hold ``catch_all`` (a mailbox id or address, or None) and the spam thresholds
        ``spam_tag``/``spam_junk``/``spam_reject`` (None restores the default)."""
        domain = await self.get_domain(principal, ident)
        _require(principal, Scope.MANAGE)
        values: dict[str, Any] = {k: changes[k] for k in _SPAM_FIELDS if k in changes}
        async with self._db.write() as conn:
            if "catch_all" in changes:
                target = changes["catch_all"]
                if target is None:
                    values["catch_all"] = None
                else:
                    box = await repo.get_mailbox(conn, _mailbox_ident(target))
                    if box is None or box.domain_id != domain.id:
                        raise InvalidInput("the catch-all must be a mailbox of this domain", field="catch_all")
                    values["catch_all"] = box.id
            merged = {f: getattr(domain.spam, f.removeprefix("spam_")) for f in _SPAM_FIELDS}
            merged.update({k: v for k, v in values.items() if k in _SPAM_FIELDS and v is not None})
            if not merged["spam_tag"] <= merged["spam_junk"] <= merged["spam_reject"]:
                raise InvalidInput("spam thresholds must satisfy tag <= junk <= reject", field="spam_tag")
            if values:
                await repo.update_domain(conn, domain.id, values)
            await self._audit(
                conn, principal, "domain.update", domain.tenant_id, "domain", domain.id, request_id, dict(values)
            )
            updated = await repo.get_domain(conn, domain.id, self.spam_defaults)
        assert updated is not None
        self._changed()
        return updated

    async def delete_domain(self, principal: Principal, ident: str, request_id: str | None = None) -> Domain:
        """The domain, its mailboxes and all their mail."""
        domain = await self.get_domain(principal, ident)
        _require(principal, Scope.MANAGE)
        async with self._db.write() as conn:
            boxes = await repo.list_mailboxes(conn, None, domain_id=domain.id, after=None, limit=1_000_000)
            orphans: list[str] = []
            for box in boxes:
                orphans += await mail_repo.delete_many(conn, await mail_repo.ids_in(conn, mailbox_id=box.id))
            await repo.delete_domain(conn, domain.id)
            await self._audit(
                conn,
                principal,
                "domain.delete",
                domain.tenant_id,
                "domain",
                domain.id,
                request_id,
                {"name": domain.name, "mailboxes": len(boxes)},
            )
        await self._blobs.discard(orphans)
        self._changed()
        return domain

    # ----- mailboxes -----

    async def _open(self, row: MailboxRow, aliases: tuple[str, ...] = ()) -> Mailbox:
        name = b""
        if row.display_name is not None:
            name = await self._keyring.unseal(row.display_name, b"mailbox-name:" + row.id.encode())
        return Mailbox(
            row.id,
            row.tenant_id,
            row.domain_id,
            row.address,
            name.decode(),
            aliases,
            row.created_at,
            row.updated_at,
        )

    def _seal_name(self, mailbox_id: str, name: str) -> bytes | None:
        return self._keyring.seal(name.encode(), b"mailbox-name:" + mailbox_id.encode()) if name else None

    async def create_mailbox(
        self,
        principal: Principal,
        address: str,
        *,
        tenant: str | None = None,
        display_name: str | None = None,
        request_id: str | None = None,
    ) -> Mailbox:
        _require(principal, Scope.MANAGE)
        key = _checked(mailbox_key, address, "address")
        name = _display_name(display_name)
        async with self._db.write() as conn:
            tenant_id = await self._tenant_for(conn, principal, tenant)
            domain = await repo.get_domain(conn, key.rpartition("@")[2], self.spam_defaults)
            if domain is None or domain.tenant_id != tenant_id:
                raise InvalidInput(
                    f"the domain of {key!r} is not one of this tenant's domains: create it first", field="address"
                )
            at = utcnow()
            mailbox_id = "mbx_" + secrets.token_hex(8)
            row = MailboxRow(mailbox_id, tenant_id, domain.id, key, self._seal_name(mailbox_id, name), {}, at, at)
            await repo.insert_mailbox(conn, row)
            await self._audit(conn, principal, "mailbox.create", tenant_id, "mailbox", mailbox_id, request_id)
        self._changed()
        return await self._open(row)

    async def _visible(self, conn: AsyncConnection, principal: Principal, ident: str) -> MailboxRow:
        row = await repo.get_mailbox(conn, _mailbox_ident(ident))
        if row is None or not principal.sees_tenant(row.tenant_id) or not principal.can(Scope.READ):
            raise NotFound("mailbox", ident)
        return row

    async def get_mailbox(self, principal: Principal, ident: str) -> Mailbox:
        async with self._db.read() as conn:
            row = await self._visible(conn, principal, ident)
            aliases = (await repo.aliases_of(conn, [row.id])).get(row.id, ())
        return await self._open(row, aliases)

    async def list_mailboxes(
        self, principal: Principal, *, domain: str | None, after: str | None, limit: int
    ) -> Sequence[Mailbox]:
        if not principal.can(Scope.READ) or (not principal.is_admin and principal.tenant_id is None):
            return []
        domain_id = (await self.get_domain(principal, domain)).id if domain else None
        async with self._db.read() as conn:
            tenant_id = None if principal.is_admin else principal.tenant_id
            rows = await repo.list_mailboxes(conn, tenant_id, domain_id=domain_id, after=after, limit=limit)
            aliases = await repo.aliases_of(conn, [r.id for r in rows])
        return [await self._open(r, aliases.get(r.id, ())) for r in rows]

    async def update_mailbox(
        self, principal: Principal, ident: str, changes: dict[str, Any], request_id: str | None = None
    ) -> Mailbox:
        """``changes`` may hold ``address`` (a rename, within the tenant's domains) and ``display_name``."""
        _require(principal, Scope.MANAGE)
        async with self._db.write() as conn:
            row = await self._visible(conn, principal, ident)
            values: dict[str, Any] = {}
            if "display_name" in changes:
                values["display_name"] = self._seal_name(row.id, _display_name(changes["display_name"]))
            if changes.get("address") is not None:
                key = _checked(mailbox_key, changes["address"], "address")
                if key != row.address:
                    domain = await repo.get_domain(conn, key.rpartition("@")[2], self.spam_defaults)
                    if domain is None or domain.tenant_id != row.tenant_id:
                        raise InvalidInput("the new address must be at one of this tenant's domains", field="address")
                    values.update(address=key, domain_id=domain.id)
            if values:
                values["updated_at"] = utcnow()
                await repo.update_mailbox(conn, row.id, values)
                details = {"address": values["address"]} if "address" in values else {}
                await self._audit(
                    conn, principal, "mailbox.update", row.tenant_id, "mailbox", row.id, request_id, details
                )
        self._changed()
        return await self.get_mailbox(principal, row.id)

    async def delete_mailbox(self, principal: Principal, ident: str, request_id: str | None = None) -> Mailbox:
        """The mailbox, its aliases, folders and every message in them."""
        _require(principal, Scope.MANAGE)
        async with self._db.write() as conn:
            row = await self._visible(conn, principal, ident)
            ids = await mail_repo.ids_in(conn, mailbox_id=row.id)
            orphans = await mail_repo.delete_many(conn, ids)
            await repo.delete_mailbox(conn, row.id)
            await self._audit(
                conn, principal, "mailbox.delete", row.tenant_id, "mailbox", row.id, request_id, {"messages": len(ids)}
            )
        await self._blobs.discard(orphans)
        self._changed()
        return await self._open(row)

    async def add_alias(self, principal: Principal, ident: str, address: str, request_id: str | None = None) -> Mailbox:
        _require(principal, Scope.MANAGE)
        key = _checked(mailbox_key, address, "address")
        async with self._db.write() as conn:
            row = await self._visible(conn, principal, ident)
            domain = await repo.get_domain(conn, key.rpartition("@")[2], self.spam_defaults)
            if domain is None or domain.tenant_id != row.tenant_id:
                raise InvalidInput("an alias must be at one of this tenant's domains", field="address")
            await repo.add_alias(conn, address=key, tenant_id=row.tenant_id, mailbox_id=row.id, at=utcnow())
            await self._audit(
                conn, principal, "mailbox.alias.add", row.tenant_id, "mailbox", row.id, request_id, {"alias": key}
            )
        self._changed()
        return await self.get_mailbox(principal, row.id)

    async def remove_alias(
        self, principal: Principal, ident: str, address: str, request_id: str | None = None
    ) -> Mailbox:
        _require(principal, Scope.MANAGE)
        key = _checked(mailbox_key, address, "address")
        async with self._db.write() as conn:
            row = await self._visible(conn, principal, ident)
            if not await repo.remove_alias(conn, row.id, key):
                raise NotFound("alias", address)
            await self._audit(
                conn, principal, "mailbox.alias.remove", row.tenant_id, "mailbox", row.id, request_id, {"alias": key}
            )
        self._changed()
        return await self.get_mailbox(principal, row.id)

    # ----- folders -----

    async def folders(self, principal: Principal, ident: str) -> Sequence[Folder]:
        async with self._db.read() as conn:
            row = await self._visible(conn, principal, ident)
            return await repo.list_folders(conn, row.id)

    async def create_folder(self, principal: Principal, ident: str, name: str, request_id: str | None = None) -> Folder:
        _require(principal, Scope.MANAGE)
        folder_name = _checked(check_folder_name, name, "name")
        async with self._db.write() as conn:
            row = await self._visible(conn, principal, ident)
            folder = await repo.insert_folder(conn, row.id, folder_name, utcnow())
            await self._audit(
                conn, principal, "folder.create", row.tenant_id, "folder", folder.id, request_id, {"mailbox": row.id}
            )
        return folder

    async def rename_folder(
        self, principal: Principal, ident: str, name: str, new_name: str, request_id: str | None = None
    ) -> Folder:
        _require(principal, Scope.MANAGE)
        target = _checked(check_folder_name, new_name, "name")
        async with self._db.write() as conn:
            row = await self._visible(conn, principal, ident)
            folder = await self._user_folder(conn, row.id, name)
            await repo.rename_folder(conn, folder.id, target)
            await self._audit(conn, principal, "folder.rename", row.tenant_id, "folder", folder.id, request_id)
            renamed = await repo.get_folder(conn, row.id, target)
        assert renamed is not None
        return renamed

    async def delete_folder(self, principal: Principal, ident: str, name: str, request_id: str | None = None) -> Folder:
        """A user folder and the messages in it (the folders every mailbox has cannot be deleted)."""
        _require(principal, Scope.MANAGE)
        async with self._db.write() as conn:
            row = await self._visible(conn, principal, ident)
            folder = await self._user_folder(conn, row.id, name)
            orphans = await mail_repo.delete_many(conn, await mail_repo.ids_in(conn, folder_id=folder.id))
            await repo.delete_folder(conn, folder.id)
            await self._audit(conn, principal, "folder.delete", row.tenant_id, "folder", folder.id, request_id)
        await self._blobs.discard(orphans)
        return folder

    async def _user_folder(self, conn: AsyncConnection, mailbox_id: str, name: str) -> Folder:
        folder = await repo.get_folder(conn, mailbox_id, check_folder_name(name) if name.upper() != INBOX else INBOX)
        if folder is None:
            raise NotFound("folder", name)
        if folder.name in {n for n, _ in DEFAULT_FOLDERS}:
            raise Conflict(f"{folder.name} is one of the folders every mailbox has; it cannot be renamed or deleted")
        return folder


def _mailbox_ident(ident: str) -> str:
    """Mailboxes are named by id or by address; an address is looked up in its stored form."""
    if "@" not in ident:
        return ident
    try:
        return mailbox_key(ident)
    except ValueError:
        return ident
