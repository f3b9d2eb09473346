"""Tenants, API keys and the scopes that bound what a key may do."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class Scope(StrEnum):
    READ = "read"
    SEND = "send"
    MANAGE = "manage"
    ADMIN = "admin"

    @classmethod
    def parse_list(cls, values: str | list[str]) -> frozenset[Scope]:
        """Parse ``"a,b"`` or ``["a", "b"]``; raises ValueError naming the first unknown scope."""
        items = values.split(",") if isinstance(values, str) else values
        out: set[Scope] = set()
        for raw in items:
            name = raw.strip().lower()
            if not name:
                continue
            try:
                out.add(cls(name))
            except ValueError:
                known = ", ".join(s.value for s in cls)
                raise ValueError(f"unknown scope {raw.strip()!r} (known: {known})") from None
        if not out:
            raise ValueError("at least one scope is required")
        return frozenset(out)


@dataclass(frozen=True, slots=True)
class Tenant:
    id: str
    name: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    tenant_id: str | None
    name: str
    scopes: frozenset[Scope]
    created_at: datetime
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True, slots=True)
class SmtpCredential:
    """A username and password for SMTP submission, bound to one tenant; it can only send."""

    id: str
    tenant_id: str
    username: str
    created_at: datetime
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is acting: an API key, the CLI operator, or the gateway itself.

    ``tenant_id`` is None only for actors that are not bound to one tenant (admin keys made without a
    tenant, the CLI, the system); ``admin`` in ``scopes`` reaches every tenant whatever ``tenant_id`` is.
    """

    actor: str
    tenant_id: str | None
    scopes: frozenset[Scope]

    @property
    def is_admin(self) -> bool:
        return Scope.ADMIN in self.scopes

    def can(self, scope: Scope) -> bool:
        return self.is_admin or scope in self.scopes

    def sees_tenant(self, tenant_id: str | None) -> bool:
        return self.is_admin or (tenant_id is not None and tenant_id == self.tenant_id)


SYSTEM = Principal(actor="system", tenant_id=None, scopes=frozenset({Scope.ADMIN}))
