"""SMTP submission credentials: what an application that only speaks SMTP uses instead of an API key.

A credential belongs to one tenant and can only send. Its password is shown once at creation and
stored as an argon2id hash; usernames are random, so a leaked username says nothing about the tenant.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from mailgate.admin.service import AdminService
from mailgate.domain.errors import AuthenticationFailed, NotFound, PermissionDenied
from mailgate.domain.records import EventType
from mailgate.domain.tenancy import Principal, Scope, SmtpCredential
from mailgate.security.passwords import PasswordChecker, hash_password, new_password
from mailgate.store import credentials as repo
from mailgate.store import tenants as tenants_repo
from mailgate.store.database import Database
from mailgate.store.keyring import Keyring
from mailgate.store.types import utcnow

USERNAME_PREFIX = "smtp_"


class SmtpCredentials:
    def __init__(self, db: Database, keyring: Keyring, admin: AdminService) -> None:
        self._db = db
        self._admin = admin
        self._checker = PasswordChecker(keyring.subkey("smtp-password-memo"))

    async def create(
        self, principal: Principal, tenant: str, request_id: str | None = None
    ) -> tuple[SmtpCredential, str]:
        """Returns the credential and its password (shown this once)."""
        password = new_password()
        password_hash = hash_password(password)
        async with self._db.write() as conn:
            found = await tenants_repo.get_tenant(conn, tenant)
            if found is None or not principal.sees_tenant(found.id):
                raise NotFound("tenant", tenant)
            _require_manage(principal)
            credential = SmtpCredential(
                id="smc_" + secrets.token_hex(8),
                tenant_id=found.id,
                username=USERNAME_PREFIX + secrets.token_hex(10),
                created_at=utcnow(),
                revoked_at=None,
            )
            await repo.insert(conn, credential, password_hash)
            details = {"username": credential.username}
            await self._admin.audit_in(
                conn,
                principal,
                "smtp_credential.create",
                tenant_id=found.id,
                object_type="smtp_credential",
                object_id=credential.id,
                request_id=request_id,
                details=details,
            )
            await self._admin.emit_in(
                conn, EventType.SMTP_CREDENTIAL_CREATED, tenant_id=found.id, object_id=credential.id, data=details
            )
        return credential, password

    async def list(self, principal: Principal) -> Sequence[SmtpCredential]:
        if not principal.can(Scope.READ) or (not principal.is_admin and principal.tenant_id is None):
            return []
        async with self._db.read() as conn:
            return await repo.list_for(conn, None if principal.is_admin else principal.tenant_id)

    async def revoke(self, principal: Principal, credential_id: str, request_id: str | None = None) -> SmtpCredential:
        async with self._db.write() as conn:
            found = await repo.get(conn, credential_id)
            if found is None or not principal.sees_tenant(found.tenant_id):
                raise NotFound("smtp_credential", credential_id)
            _require_manage(principal)
            if await repo.revoke(conn, credential_id, utcnow()):
                await self._admin.audit_in(
                    conn,
                    principal,
                    "smtp_credential.revoke",
                    tenant_id=found.tenant_id,
                    object_type="smtp_credential",
                    object_id=credential_id,
                    request_id=request_id,
                )
                await self._admin.emit_in(
                    conn,
                    EventType.SMTP_CREDENTIAL_REVOKED,
                    tenant_id=found.tenant_id,
                    object_id=credential_id,
                    data={"username": found.username},
                )
            revoked = await repo.get(conn, credential_id)
        assert revoked is not None
        return revoked

    async def authenticate(self, username: str, password: str) -> Principal:
        """The sending principal of a valid, unrevoked credential; one message for every failure so a
        client cannot tell an unknown username from a wrong password."""
        async with self._db.read() as conn:
            found = await repo.by_username(conn, username)
        if found is None or not found[0].active or not await self._checker.verify(found[0].id, found[1], password):
            raise AuthenticationFailed("invalid username or password")
        credential = found[0]
        return Principal(
            actor=f"smtp:{credential.username}", tenant_id=credential.tenant_id, scopes=frozenset({Scope.SEND})
        )


def _require_manage(principal: Principal) -> None:
    if not principal.can(Scope.MANAGE):
        raise PermissionDenied("this key lacks the 'manage' scope")
