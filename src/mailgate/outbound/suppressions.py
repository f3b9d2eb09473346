"""A tenant's suppression list: addresses mail is not sent to (hard bounces, complaints, unsubscribes,
manual entries). Matching ignores case entirely (see ``suppression_key``)."""

from __future__ import annotations

from mailgate.admin.service import AdminService
from mailgate.domain.errors import NotFound
from mailgate.domain.outbound import Suppression
from mailgate.domain.tenancy import Principal, Scope
from mailgate.outbound.access import addresses, require, suppression_key, tenant_of
from mailgate.store import outbound as repo
from mailgate.store.database import Database
from mailgate.store.types import utcnow


class SuppressionService:
    def __init__(self, db: Database, admin: AdminService) -> None:
        self._db = db
        self._admin = admin

    async def add(
        self,
        principal: Principal,
        address: str,
        *,
        reason: str = "manual",
        request_id: str | None = None,
    ) -> Suppression:
        require(principal, Scope.MANAGE)
        tenant_id = tenant_of(principal)
        canonical = suppression_key(addresses([address], "address")[0].addr_spec)
        async with self._db.write() as conn:
            added = await repo.add_suppression(conn, tenant_id, canonical, reason)
            if added:
                await self._admin.audit_in(
                    conn,
                    principal,
                    "suppression.add",
                    tenant_id=tenant_id,
                    object_type="suppression",
                    object_id=canonical,
                    request_id=request_id,
                    details={"reason": reason},
                )
        return Suppression(canonical, reason, utcnow())

    async def remove(self, principal: Principal, address: str, request_id: str | None = None) -> None:
        require(principal, Scope.MANAGE)
        tenant_id = tenant_of(principal)
        canonical = suppression_key(addresses([address], "address")[0].addr_spec)
        async with self._db.write() as conn:
            if not await repo.remove_suppression(conn, tenant_id, canonical):
                raise NotFound("suppression", canonical)
            await self._admin.audit_in(
                conn,
                principal,
                "suppression.remove",
                tenant_id=tenant_id,
                object_type="suppression",
                object_id=canonical,
                request_id=request_id,
            )

    async def list(self, principal: Principal, *, after: str | None, limit: int) -> list[Suppression]:
        require(principal, Scope.READ)
        tenant_id = tenant_of(principal)
        async with self._db.read() as conn:
            return await repo.list_suppressions(conn, tenant_id, after=after, limit=limit)
