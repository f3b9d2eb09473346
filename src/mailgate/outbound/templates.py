"""A tenant's message templates: stored, checked when saved, rendered when mail is sent or previewed."""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from mailgate.admin.service import AdminService
from mailgate.domain.errors import InvalidInput, NotFound, PermissionDenied
from mailgate.domain.outbound import TemplateRecord
from mailgate.domain.tenancy import Principal, Scope
from mailgate.mime.templates import Rendered, TemplateSource, check, render
from mailgate.store import templates as repo
from mailgate.store.database import Database
from mailgate.store.types import utcnow

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")


def _tenant(principal: Principal, scope: Scope) -> str:
    if not principal.can(scope):
        raise PermissionDenied(f"this key lacks the {scope.value!r} scope")
    if principal.tenant_id is None:
        raise InvalidInput("templates belong to a tenant; use a tenant's key")
    return principal.tenant_id


def _source(record: TemplateRecord) -> TemplateSource:
    return TemplateSource(record.subject, record.text, record.html)


class TemplateService:
    def __init__(self, db: Database, admin: AdminService) -> None:
        self._db = db
        self._admin = admin

    async def create(
        self,
        principal: Principal,
        *,
        name: str,
        subject: str,
        text: str | None,
        html: str | None,
        request_id: str | None = None,
    ) -> TemplateRecord:
        tenant_id = _tenant(principal, Scope.MANAGE)
        if not _NAME.match(name) or name.startswith("tpl_"):
            raise InvalidInput(
                "a template name is 1-200 letters, digits, '_', '.', '-' (not starting with 'tpl_')", field="name"
            )
        check(TemplateSource(subject, text, html))
        now = utcnow()
        record = TemplateRecord("tpl_" + secrets.token_hex(8), tenant_id, name, subject, text, html, now, now)
        async with self._db.write() as conn:
            await repo.insert(conn, record)
            await self._admin.audit_in(
                conn,
                principal,
                "template.create",
                tenant_id=tenant_id,
                object_type="template",
                object_id=record.id,
                request_id=request_id,
                details={"name": name},
            )
        return record

    async def get(self, principal: Principal, ident: str) -> TemplateRecord:
        tenant_id = _tenant(principal, Scope.READ)
        async with self._db.read() as conn:
            found = await repo.find(conn, tenant_id, ident)
        if found is None:
            raise NotFound("template", ident)
        return found

    async def list(self, principal: Principal) -> Sequence[TemplateRecord]:
        tenant_id = _tenant(principal, Scope.READ)
        async with self._db.read() as conn:
            return await repo.list_for(conn, tenant_id)

    async def update(
        self,
        principal: Principal,
        ident: str,
        *,
        subject: str,
        text: str | None,
        html: str | None,
        request_id: str | None = None,
    ) -> TemplateRecord:
        tenant_id = _tenant(principal, Scope.MANAGE)
        check(TemplateSource(subject, text, html))
        async with self._db.write() as conn:
            found = await repo.find(conn, tenant_id, ident)
            if found is None:
                raise NotFound("template", ident)
            await repo.replace(conn, found.id, subject=subject, text=text, html=html, at=utcnow())
            await self._admin.audit_in(
                conn,
                principal,
                "template.update",
                tenant_id=tenant_id,
                object_type="template",
                object_id=found.id,
                request_id=request_id,
                details={"name": found.name},
            )
            updated = await repo.find(conn, tenant_id, found.id)
        assert updated is not None
        return updated

    async def delete(self, principal: Principal, ident: str, request_id: str | None = None) -> None:
        tenant_id = _tenant(principal, Scope.MANAGE)
        async with self._db.write() as conn:
            found = await repo.find(conn, tenant_id, ident)
            if found is None:
                raise NotFound("template", ident)
            await repo.remove(conn, found.id)
            await self._admin.audit_in(
                conn,
                principal,
                "template.delete",
                tenant_id=tenant_id,
                object_type="template",
                object_id=found.id,
                request_id=request_id,
                details={"name": found.name},
            )

    async def preview(self, principal: Principal, ident: str, variables: Mapping[str, Any]) -> Rendered:
        return render(_source(await self.get(principal, ident)), variables)

    async def render_for(self, tenant_id: str, ident: str, variables: Mapping[str, Any]) -> Rendered:
        """For sending: the template is looked up in the sender's tenant; an unknown one is a 422 (the
        request is wrong, not a resource path)."""
        async with self._db.read() as conn:
            found = await repo.find(conn, tenant_id, ident)
        if found is None:
            raise InvalidInput(f"unknown template {ident!r}", field="template")
        return render(_source(found), variables)
