"""The facade for tenants, API keys, audit and events.

Every state change and its audit entry commit in one transaction, so the trail never misses a change
and never records one that did not happen. Visibility is decided here, not in routes: an object of
another tenant raises NotFound, exactly like one that does not exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from mailgate.domain.errors import AuthenticationFailed, InvalidInput, NotFound, PermissionDenied
from mailgate.domain.records import AuditEntry, Event, EventType, Outcome
from mailgate.domain.tenancy import SYSTEM, ApiKey, Principal, Scope, Tenant
from mailgate.observability.metrics import AUDIT_ENTRIES, EVENTS_EMITTED
from mailgate.security import apikeys as tokens
from mailgate.store import audit as audit_repo
from mailgate.store import events as events_repo
from mailgate.store import meta as meta_repo
from mailgate.store import tenants as tenants_repo
from mailgate.store.cache import ReadThroughCache
from mailgate.store.database import Database
from mailgate.store.keyring import Keyring
from mailgate.store.types import utcnow

BOOTSTRAP_MARK = "bootstrap_admin_key"
KEY_CACHE_SECONDS = 5.0
KEY_CACHE_LIMIT = 10_000
MAX_PAGE = 500


def _require(principal: Principal, scope: Scope) -> None:
    if not principal.can(scope):
        raise PermissionDenied(f"this key lacks the {scope.value!r} scope")


class AdminService:
    def __init__(self, db: Database, keyring: Keyring) -> None:
        self._db = db
        self._pepper = keyring.subkey("apikey")
        self._audit_key = keyring.subkey("audit")
        self._events_changed = asyncio.Event()
        self._keys: ReadThroughCache[str, tuple[ApiKey, str] | None] = ReadThroughCache(
            KEY_CACHE_SECONDS, limit=KEY_CACHE_LIMIT
        )
        db.on_events_committed(self._wake)

    # ----- shared by every mutation -----

    async def audit_in(
        self,
        conn: AsyncConnection,
        principal: Principal,
        action: str,
        *,
        tenant_id: str | None,
        object_type: str | None,
        object_id: str | None,
        request_id: str | None,
        outcome: Outcome = Outcome.SUCCESS,
        details: dict[str, Any] | None = None,
    ) -> AuditEntry:
        """Append the audit entry of a change inside the change's own transaction."""
        entry = await audit_repo.append(
            conn,
            self._audit_key,
            actor=principal.actor,
            tenant_id=tenant_id,
            action=action,
            object_type=object_type,
            object_id=object_id,
            request_id=request_id,
            outcome=outcome,
            details=details,
        )
        AUDIT_ENTRIES.labels(outcome.value).inc()
        return entry

    async def emit_in(
        self,
        conn: AsyncConnection,
        type: EventType,
        *,
        tenant_id: str | None,
        object_id: str | None,
        data: dict[str, Any],
    ) -> None:
        """Append an event inside the transaction of the change it reports."""
        await events_repo.append(conn, type=type.value, tenant_id=tenant_id, object_id=object_id, data=data)
        EVENTS_EMITTED.labels(type.value).inc()

    async def emit_many_in(
        self, conn: AsyncConnection, items: Sequence[tuple[EventType, str | None, str | None, dict[str, Any]]]
    ) -> None:
        """Append several events (type, tenant, object, data) with one statement, inside the caller's
        transaction: the hot paths (accepting and delivering mail) emit one or more per message."""
        await events_repo.append_many(
            conn,
            [{"type": t.value, "tenant_id": tenant, "object_id": obj, "data": data} for t, tenant, obj, data in items],
        )
        for t, *_ in items:
            EVENTS_EMITTED.labels(t.value).inc()

    async def record_event(
        self, type: EventType, *, tenant_id: str | None, object_id: str | None, data: dict[str, Any]
    ) -> None:
        """Append an event that belongs to no other change (a connector going down)."""
        async with self._db.write() as conn:
            await self.emit_in(conn, type, tenant_id=tenant_id, object_id=object_id, data=data)

    async def record_refusal(
        self,
        principal: Principal,
        action: str,
        *,
        object_type: str | None,
        object_id: str | None,
        request_id: str | None,
        outcome: Outcome,
        reason: str,
    ) -> None:
        """Audit a state-changing call that was refused or failed (it changed nothing)."""
        async with self._db.write() as conn:
            await self.audit_in(
                conn,
                principal,
                action,
                tenant_id=principal.tenant_id,
                object_type=object_type,
                object_id=object_id,
                request_id=request_id,
                outcome=outcome,
                details={"reason": reason},
            )

    # ----- authentication -----

    async def authenticate(self, token: str) -> Principal:
        """The key's principal. A key's row is remembered for ``KEY_CACHE_SECONDS``: every request
        authenticates, and a database read per request was a tenth of the cost of sending a message.
        Revoking a key forgets it at once on this node; other nodes stop accepting it within that time."""
        parts = tokens.split_token(token)
        if parts is None:
            raise AuthenticationFailed("malformed API key")
        key_id, secret = parts

        async def load() -> tuple[ApiKey, str] | None:
            async with self._db.read() as conn:
                return await tenants_repo.get_key(conn, key_id)

        found = await self._keys.get(key_id, load)
        if found is None or not tokens.secret_matches(self._pepper, secret, found[1]):
            raise AuthenticationFailed("unknown API key")
        key = found[0]
        if not key.active:
            raise AuthenticationFailed("this API key was revoked")
        return Principal(actor=f"apikey:{key.id}", tenant_id=key.tenant_id, scopes=key.scopes)

    # ----- tenants -----

    async def create_tenant(self, principal: Principal, name: str, request_id: str | None = None) -> Tenant:
        _require(principal, Scope.ADMIN)
        name = name.strip()
        if not name or len(name) > 200 or any(ord(c) < 32 for c in name):
            raise InvalidInput("tenant name must be 1-200 printable characters", field="name")
        tenant = Tenant(id="ten_" + secrets.token_hex(8), name=name, created_at=utcnow())
        async with self._db.write() as conn:
            await tenants_repo.insert_tenant(conn, tenant)
            await self.audit_in(
                conn,
                principal,
                "tenant.create",
                tenant_id=tenant.id,
                object_type="tenant",
                object_id=tenant.id,
                request_id=request_id,
                details={"name": name},
            )
            await self.emit_in(
                conn, EventType.TENANT_CREATED, tenant_id=tenant.id, object_id=tenant.id, data={"name": name}
            )
        return tenant

    async def get_tenant(self, principal: Principal, ident: str) -> Tenant:
        async with self._db.read() as conn:
            tenant = await tenants_repo.get_tenant(conn, ident)
        if tenant is None or not principal.sees_tenant(tenant.id) or not principal.can(Scope.READ):
            raise NotFound("tenant", ident)
        return tenant

    async def list_tenants(self, principal: Principal, *, after: str | None, limit: int) -> Sequence[Tenant]:
        if not principal.is_admin and (principal.tenant_id is None or not principal.can(Scope.READ)):
            return []
        only = None if principal.is_admin else principal.tenant_id
        async with self._db.read() as conn:
            return await tenants_repo.list_tenants(conn, only=only, after=after, limit=min(limit, MAX_PAGE))

    # ----- API keys -----

    async def create_key(
        self,
        principal: Principal,
        *,
        tenant: str | None,
        scopes: frozenset[Scope],
        name: str = "",
        request_id: str | None = None,
    ) -> tuple[ApiKey, str]:
        """Returns the key and its token; the token is shown this once and stored only as a hash."""
        _require(principal, Scope.ADMIN)
        async with self._db.write() as conn:
            tenant_id = await self._resolve_tenant(conn, tenant)
            if tenant_id is None and Scope.ADMIN not in scopes:
                raise InvalidInput("a key without a tenant must have the 'admin' scope", field="tenant")
            return await self._insert_key(conn, principal, tenant_id, scopes, name, request_id)

    async def _resolve_tenant(self, conn: AsyncConnection, tenant: str | None) -> str | None:
        if tenant is None:
            return None
        found = await tenants_repo.get_tenant(conn, tenant)
        if found is None:
            raise NotFound("tenant", tenant)
        return found.id

    async def _insert_key(
        self,
        conn: AsyncConnection,
        principal: Principal,
        tenant_id: str | None,
        scopes: frozenset[Scope],
        name: str,
        request_id: str | None,
    ) -> tuple[ApiKey, str]:
        key = ApiKey(
            id=tokens.new_key_id(),
            tenant_id=tenant_id,
            name=name[:200],
            scopes=scopes,
            created_at=utcnow(),
            revoked_at=None,
        )
        token = tokens.new_token(key.id)
        secret = tokens.split_token(token)
        assert secret is not None
        await tenants_repo.insert_key(conn, key, tokens.hash_secret(self._pepper, secret[1]))
        details = {"scopes": sorted(s.value for s in scopes), "name": key.name}
        await self.audit_in(
            conn,
            principal,
            "apikey.create",
            tenant_id=tenant_id,
            object_type="apikey",
            object_id=key.id,
            request_id=request_id,
            details=details,
        )
        await self.emit_in(conn, EventType.APIKEY_CREATED, tenant_id=tenant_id, object_id=key.id, data=details)
        return key, token

    async def bootstrap_admin_key(self) -> str | None:
        """On the first start of an installation, make the admin key (once, even with many nodes)."""
        async with self._db.write() as conn:
            if not await meta_repo.claim(conn, BOOTSTRAP_MARK, utcnow().isoformat()):
                return None
            _key, token = await self._insert_key(conn, SYSTEM, None, frozenset({Scope.ADMIN}), "bootstrap", None)
        return token

    async def get_key(self, principal: Principal, key_id: str) -> ApiKey:
        async with self._db.read() as conn:
            found = await tenants_repo.get_key(conn, key_id)
        if found is None or not (principal.is_admin or principal.actor == f"apikey:{key_id}"):
            raise NotFound("apikey", key_id)
        return found[0]

    async def list_keys(
        self, principal: Principal, *, tenant: str | None, after: str | None, limit: int
    ) -> Sequence[ApiKey]:
        _require(principal, Scope.ADMIN)
        async with self._db.read() as conn:
            tenant_id = await self._resolve_tenant(conn, tenant)
            return await tenants_repo.list_keys(conn, tenant_id=tenant_id, after=after, limit=min(limit, MAX_PAGE))

    async def revoke_key(self, principal: Principal, key_id: str, request_id: str | None = None) -> ApiKey:
        _require(principal, Scope.ADMIN)
        async with self._db.write() as conn:
            found = await tenants_repo.get_key(conn, key_id)
            if found is None:
                raise NotFound("apikey", key_id)
            key = found[0]
            self._keys.forget(key_id)
            if await tenants_repo.revoke_key(conn, key_id, utcnow()):
                await self.audit_in(
                    conn,
                    principal,
                    "apikey.revoke",
                    tenant_id=key.tenant_id,
                    object_type="apikey",
                    object_id=key_id,
                    request_id=request_id,
                )
                await self.emit_in(conn, EventType.APIKEY_REVOKED, tenant_id=key.tenant_id, object_id=key_id, data={})
            found = await tenants_repo.get_key(conn, key_id)
        self._keys.forget(key_id)  # again: a request may have cached the row while we committed
        assert found is not None
        return found[0]

    # ----- audit -----

    async def record(
        self,
        principal: Principal,
        action: str,
        *,
        object_type: str | None = None,
        object_id: str | None = None,
        details: dict[str, Any] | None = None,
        tenant_id: str | None = None,
    ) -> AuditEntry:
        """Audit an operator action that changes no row itself (a key rotation, an upgrade)."""
        async with self._db.write() as conn:
            return await self.audit_in(
                conn,
                principal,
                action,
                tenant_id=tenant_id,
                object_type=object_type,
                object_id=object_id,
                request_id=None,
                details=details,
            )

    async def audit_page(self, principal: Principal, *, after: int, limit: int) -> Sequence[AuditEntry]:
        _require(principal, Scope.READ)
        if not principal.is_admin and principal.tenant_id is None:
            return []
        tenant_id = None if principal.is_admin else principal.tenant_id
        async with self._db.read() as conn:
            return await audit_repo.page(conn, tenant_id=tenant_id, after=after, limit=min(limit, MAX_PAGE))

    async def verify_audit(self, progress: Callable[[int], None] | None = None) -> audit_repo.Verification:
        async with self._db.read() as conn:
            return await audit_repo.verify(conn, self._audit_key, progress)

    async def audit_size(self) -> int:
        async with self._db.read() as conn:
            return (await audit_repo.head(conn))[0]

    # ----- events -----

    def _wake(self) -> None:
        self._events_changed.set()
        self._events_changed = asyncio.Event()

    async def events(
        self,
        principal: Principal,
        *,
        after: int,
        types: Sequence[str],
        limit: int,
        wait: float = 0.0,
        poll_interval: float = 0.5,
    ) -> Sequence[Event]:
        """Events after the cursor; with ``wait``, hold the request until one arrives or time runs out.

        Commits on this node wake the waiter at once; the short poll catches other nodes' events.
        """
        _require(principal, Scope.READ)
        if not principal.is_admin and principal.tenant_id is None:
            return []
        tenant_id = None if principal.is_admin else principal.tenant_id
        deadline = time.monotonic() + wait
        while True:
            changed = self._events_changed
            async with self._db.read() as conn:
                found = await events_repo.after(
                    conn, cursor=after, tenant_id=tenant_id, types=types, limit=min(limit, MAX_PAGE)
                )
            remaining = deadline - time.monotonic()
            if found or remaining <= 0:
                return found
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), timeout=min(poll_interval, remaining))
