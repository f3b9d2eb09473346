"""SMTP submission credentials: the password appears once, in the create response."""

from __future__ import annotations

from fastapi import APIRouter

from mailgate.api.deps import Caller, RequestId, SmtpCredentialsDep
from mailgate.api.schemas.common import problems
from mailgate.api.schemas.tenancy import (
    SmtpCredentialCreate,
    SmtpCredentialCreated,
    SmtpCredentialList,
    SmtpCredentialOut,
)
from mailgate.domain.errors import InvalidInput

router = APIRouter(prefix="/v1/smtp-credentials", tags=["smtp-credentials"])


@router.post(
    "",
    status_code=201,
    response_model=SmtpCredentialCreated,
    responses=problems(401, 403, 404, 422, 503),
    summary="Create a username and password for SMTP submission (the tenant's, send only)",
)
async def create_credential(
    body: SmtpCredentialCreate, credentials: SmtpCredentialsDep, caller: Caller, rid: RequestId
) -> SmtpCredentialCreated:
    tenant = body.tenant or caller.tenant_id
    if tenant is None:
        raise InvalidInput("name the tenant the credential sends for", field="tenant")
    credential, password = await credentials.create(caller, tenant, rid)
    return SmtpCredentialCreated(**SmtpCredentialOut.of(credential).model_dump(), password=password)


@router.get("", response_model=SmtpCredentialList, responses=problems(401, 503))
async def list_credentials(credentials: SmtpCredentialsDep, caller: Caller) -> SmtpCredentialList:
    return SmtpCredentialList(items=[SmtpCredentialOut.of(c) for c in await credentials.list(caller)])


@router.delete(
    "/{id}",
    response_model=SmtpCredentialOut,
    responses=problems(401, 403, 404, 503),
    summary="Revoke a credential (new logins fail at once; revoking twice is harmless)",
)
async def revoke_credential(
    id: str, credentials: SmtpCredentialsDep, caller: Caller, rid: RequestId
) -> SmtpCredentialOut:
    return SmtpCredentialOut.of(await credentials.revoke(caller, id, rid))
