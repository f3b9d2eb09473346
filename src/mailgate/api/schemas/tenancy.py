"""Tenants and API keys."""

from __future__ import annotations

from pydantic import AwareDatetime, BaseModel, Field

from mailgate.domain.tenancy import ApiKey, Scope, SmtpCredential, Tenant


class TenantCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)


class TenantOut(BaseModel):
    id: str
    name: str
    created_at: AwareDatetime

    @classmethod
    def of(cls, t: Tenant) -> TenantOut:
        return cls(id=t.id, name=t.name, created_at=t.created_at)


class TenantPage(BaseModel):
    items: list[TenantOut]
    next_cursor: str | None


class ApiKeyCreate(BaseModel):
    tenant: str | None = Field(None, description="Tenant id or name; omit only for an `admin` key.")
    scopes: list[Scope] = Field(min_length=1)
    name: str = Field("", max_length=200)


class ApiKeyOut(BaseModel):
    id: str
    tenant: str | None
    name: str
    scopes: list[Scope]
    created_at: AwareDatetime
    revoked_at: AwareDatetime | None
    active: bool

    @classmethod
    def of(cls, k: ApiKey) -> ApiKeyOut:
        return cls(
            id=k.id,
            tenant=k.tenant_id,
            name=k.name,
            scopes=sorted(k.scopes),
            created_at=k.created_at,
            revoked_at=k.revoked_at,
            active=k.active,
        )


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="The secret token. Shown only in this response; store it now.")


class ApiKeyPage(BaseModel):
    items: list[ApiKeyOut]
    next_cursor: str | None


class SmtpCredentialCreate(BaseModel):
    tenant: str | None = Field(None, description="Tenant id or name; a tenant's own key may omit it.")


class SmtpCredentialOut(BaseModel):
    id: str
    tenant: str
    username: str
    created_at: AwareDatetime
    revoked_at: AwareDatetime | None
    active: bool

    @classmethod
    def of(cls, c: SmtpCredential) -> SmtpCredentialOut:
        return cls(
            id=c.id,
            tenant=c.tenant_id,
            username=c.username,
            created_at=c.created_at,
            revoked_at=c.revoked_at,
            active=c.active,
        )


class SmtpCredentialCreated(SmtpCredentialOut):
    password: str = Field(description="Shown only in this response; store it now.")


class SmtpCredentialList(BaseModel):
    items: list[SmtpCredentialOut]
