"""A tenant's suppression list: addresses mail is not sent to (hard bounces, complaints, unsubscribes,
manual entries). Matching ignores case entirely (see ``suppression_key``)."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator

from mailgate.admin.service import AdminService
from mailgate.domain.errors import InvalidInput, NotFound
from mailgate.domain.outbound import Suppression
from mailgate.domain.tenancy import Principal, Scope
from mailgate.outbound.access import addresses, require, suppression_key, tenant_of
from mailgate.store import outbound as repo
from mailgate.store.database import Database
from mailgate.store.types import utcnow

MAX_IMPORT = 100_000
MAX_PROBLEMS = 100
CHUNK = 1000


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

    async def page(self, principal: Principal, *, after: str | None, limit: int) -> list[Suppression]:
        require(principal, Scope.READ)
        tenant_id = tenant_of(principal)
        async with self._db.read() as conn:
            return await repo.list_suppressions(conn, tenant_id, after=after, limit=limit)

    async def import_csv(
        self, principal: Principal, text: str, *, request_id: str | None = None
    ) -> tuple[int, int, list[tuple[int, str]]]:
        """Add every address of a CSV (``address[,reason[,detail]]``, an optional header row); returns
        (added, already listed, [(line, problem)]). Bad lines are reported, the good ones still added."""
        require(principal, Scope.MANAGE)
        tenant_id = tenant_of(principal)
        rows: list[tuple[str, str, str | None]] = []
        problems: list[tuple[int, str]] = []
        for number, fields in enumerate(csv.reader(io.StringIO(text)), start=1):
            if not fields or not "".join(fields).strip():
                continue
            if number == 1 and fields[0].strip().lower() in ("address", "email", "email_address"):
                continue
            if len(rows) >= MAX_IMPORT:
                problems.append((number, f"more than {MAX_IMPORT} addresses: the rest is not imported"))
                break
            try:
                address = addresses([fields[0].strip()], "address")[0]
            except InvalidInput as exc:
                if len(problems) < MAX_PROBLEMS:
                    problems.append((number, exc.detail.removeprefix("address[0]: ")))
                continue
            reason = (fields[1].strip() if len(fields) > 1 else "") or "import"
            detail = fields[2].strip()[:1000] if len(fields) > 2 and fields[2].strip() else None
            rows.append((suppression_key(address.addr_spec), reason[:30], detail))
        added = 0
        for start in range(0, len(rows), CHUNK):
            async with self._db.write() as conn:
                added += await repo.add_suppressions(conn, tenant_id, rows[start : start + CHUNK])
        async with self._db.write() as conn:
            await self._admin.audit_in(
                conn,
                principal,
                "suppression.import",
                tenant_id=tenant_id,
                object_type="suppression",
                object_id=None,
                request_id=request_id,
                details={"added": added, "rows": len(rows), "problems": len(problems)},
            )
        return added, len({r[0] for r in rows}) - added, problems

    async def export_csv(self, principal: Principal) -> AsyncIterator[str]:
        """The whole list as CSV (``address,reason,created_at,detail``), read a page at a time."""
        require(principal, Scope.READ)
        tenant_id = tenant_of(principal)
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(["address", "reason", "created_at", "detail"])
        yield out.getvalue()
        after: str | None = None
        while True:
            async with self._db.read() as conn:
                page = await repo.list_suppressions(conn, tenant_id, after=after, limit=CHUNK)
            if not page:
                return
            out.seek(0)
            out.truncate()
            for item in page:
                writer.writerow([item.address, item.reason, item.created_at.isoformat(), item.detail or ""])
            yield out.getvalue()
            after = page[-1].address
