"""How mail leaves: connectors, routes and DKIM keys. Global ones need admin; a tenant's own need manage.

Workers cache routing configuration; every change here calls ``config_changed`` so this node's routers
drop their cache at once (other nodes notice within the router's short cache lifetime).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

from mailgate.admin.service import AdminService
from mailgate.connectors.base import Sender
from mailgate.domain.errors import Conflict, InvalidInput, NotFound
from mailgate.domain.outbound import GLOBAL_SCOPE, ConnectorSpec, RouteSpec
from mailgate.domain.tenancy import Principal, Scope
from mailgate.outbound.access import require, scope_for
from mailgate.outbound.dkim import generate_key
from mailgate.store import outbound as repo
from mailgate.store.database import Database
from mailgate.store.keyring import Keyring
from mailgate.store.types import utcnow


class OutboundSetup:
    def __init__(
        self,
        db: Database,
        keyring: Keyring,
        admin: AdminService,
        *,
        validate_connector: Callable[[ConnectorSpec], Sender],
    ) -> None:
        self._db = db
        self._keyring = keyring
        self._admin = admin
        self._validate_connector = validate_connector
        self.config_changed: list[Callable[[], None]] = []

    async def put_connector(
        self,
        principal: Principal,
        *,
        name: str,
        type: str,
        config: dict[str, Any],
        tenant: str | None = None,
        request_id: str | None = None,
    ) -> tuple[ConnectorSpec, bool]:
        scope = scope_for(principal, tenant)
        now = utcnow()
        probe = ConnectorSpec("probe", scope, name, type, config, now, now)
        await self._validate_connector(probe).close()
        async with self._db.write() as conn:
            spec, created = await repo.put_connector(
                conn,
                self._keyring,
                new_id="con_" + secrets.token_hex(8),
                scope=scope,
                name=name,
                type=type,
                config=config,
            )
            await self._admin.audit_in(
                conn,
                principal,
                "connector.put",
                tenant_id=scope or None,
                object_type="connector",
                object_id=spec.id,
                request_id=request_id,
                details={"name": name, "type": type, "created": created},
            )
        self._changed()
        return spec, created

    async def list_connectors(self, principal: Principal) -> list[ConnectorSpec]:
        require(principal, Scope.READ)
        scopes = None if principal.is_admin else [principal.tenant_id or GLOBAL_SCOPE]
        async with self._db.read() as conn:
            return await repo.list_connectors(conn, self._keyring, scopes)

    async def delete_connector(self, principal: Principal, connector_id: str, request_id: str | None = None) -> None:
        async with self._db.write() as conn:
            spec = await repo.get_connector(conn, self._keyring, connector_id)
            if spec is None or not (principal.is_admin or (spec.scope and principal.sees_tenant(spec.scope))):
                raise NotFound("connector", connector_id)
            scope_for(principal, spec.scope or None)
            await repo.delete_connector(conn, connector_id)
            await self._admin.audit_in(
                conn,
                principal,
                "connector.delete",
                tenant_id=spec.scope or None,
                object_type="connector",
                object_id=connector_id,
                request_id=request_id,
            )
        self._changed()

    async def put_route(
        self,
        principal: Principal,
        *,
        name: str,
        connectors: list[str],
        match: dict[str, Any],
        tenant: str | None = None,
        request_id: str | None = None,
    ) -> tuple[RouteSpec, bool]:
        scope = scope_for(principal, tenant)
        if not connectors:
            raise InvalidInput("a route needs at least one connector", field="connectors")
        async with self._db.write() as conn:
            known = {c.name for c in await repo.list_connectors(conn, self._keyring, [scope, GLOBAL_SCOPE])}
            unknown = [c for c in connectors if c not in known]
            if unknown:
                raise InvalidInput(f"unknown connector(s): {', '.join(unknown)}", field="connectors")
            route, created = await repo.put_route(
                conn,
                new_id="rte_" + secrets.token_hex(8),
                scope=scope,
                name=name,
                connector_names=connectors,
                match=match,
            )
            await self._admin.audit_in(
                conn,
                principal,
                "route.put",
                tenant_id=scope or None,
                object_type="route",
                object_id=route.id,
                request_id=request_id,
                details={"name": name, "connectors": connectors, "created": created},
            )
        self._changed()
        return route, created

    async def list_routes(self, principal: Principal) -> list[RouteSpec]:
        require(principal, Scope.READ)
        scopes = [GLOBAL_SCOPE] + ([principal.tenant_id] if principal.tenant_id else [])
        async with self._db.read() as conn:
            return await repo.list_routes(conn, scopes)

    def _changed(self) -> None:
        for callback in self.config_changed:
            callback()

    async def generate_dkim(
        self,
        principal: Principal,
        *,
        domain: str,
        selector: str,
        algorithm: str = "rsa",
        tenant: str | None = None,
    ) -> str:
        """Make a signing key for ``domain`` (stored encrypted) and return its DNS TXT record value."""
        scope = scope_for(principal, tenant)
        try:
            domain = domain.strip().lower().rstrip(".").encode("idna").decode("ascii")
        except UnicodeError:
            raise InvalidInput(f"{domain!r} is not a domain name", field="domain") from None
        if "." not in domain or any(c in domain for c in " @/\\"):
            raise InvalidInput(f"{domain!r} is not a domain name", field="domain")
        if not selector or not all(c.isalnum() or c in "-_." for c in selector):
            raise InvalidInput(f"{selector!r} is not a valid DKIM selector", field="selector")
        if algorithm not in ("rsa", "ed25519"):
            raise InvalidInput("algorithm must be rsa or ed25519", field="algorithm")
        pem, dns_value = generate_key("rsa" if algorithm == "rsa" else "ed25519")
        key_id = "dkm_" + secrets.token_hex(8)
        async with self._db.write() as conn:
            if not await repo.insert_dkim_key(
                conn,
                key_id=key_id,
                scope=scope,
                domain=domain,
                selector=selector,
                algorithm=algorithm,
                sealed_pem=self._keyring.seal(pem, f"dkim:{key_id}".encode()),
                dns_value=dns_value,
            ):
                raise Conflict(f"a DKIM key for {selector}._domainkey.{domain} already exists")
            await self._admin.audit_in(
                conn,
                principal,
                "dkim.generate",
                tenant_id=scope or None,
                object_type="dkim_key",
                object_id=key_id,
                request_id=None,
                details={"domain": domain, "selector": selector, "algorithm": algorithm},
            )
        self._changed()
        return dns_value
