"""What routes receive: the service facade and the authenticated principal."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from mailgate.admin.service import AdminService
from mailgate.admin.smtp_credentials import SmtpCredentials
from mailgate.domain.errors import AuthenticationFailed
from mailgate.domain.tenancy import Principal
from mailgate.inbound.mail import MailService
from mailgate.inbound.mailboxes import MailboxService
from mailgate.observability.logging import request_id_var
from mailgate.outbound.bounces import BounceService
from mailgate.outbound.service import OutboundService
from mailgate.outbound.setup import OutboundSetup
from mailgate.outbound.suppressions import SuppressionService
from mailgate.outbound.templates import TemplateService

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer mg_...`")


async def admin_service(request: Request) -> AdminService:
    service: AdminService = request.app.state.admin
    return service


async def principal(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    return await authenticate(request, credentials.credentials if credentials is not None else None)


def bearer_token(request: Request) -> str | None:
    """The token of ``Authorization: Bearer <token>``, read as ``HTTPBearer(auto_error=False)`` reads it."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token if scheme.lower() == "bearer" and token else None


async def authenticate(request: Request, token: str | None) -> Principal:
    if token is None:
        raise AuthenticationFailed("an API key is required: Authorization: Bearer <key>")
    admin: AdminService = request.app.state.admin
    who = await admin.authenticate(token)
    request.state.principal = who
    return who


def media_type(request: Request) -> str:
    """The request's Content-Type without parameters, lower-cased: routes that take several body kinds
    (JSON or a raw message, CSV) choose by it."""
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def request_id() -> str | None:
    return request_id_var.get()


Admin = Annotated[AdminService, Depends(admin_service)]
Caller = Annotated[Principal, Depends(principal)]
RequestId = Annotated[str | None, Depends(request_id)]


async def outbound_service(request: Request) -> OutboundService:
    service: OutboundService = request.app.state.outbound
    return service


Outbound = Annotated[OutboundService, Depends(outbound_service)]


async def smtp_credentials_service(request: Request) -> SmtpCredentials:
    service: SmtpCredentials = request.app.state.smtp_credentials
    return service


SmtpCredentialsDep = Annotated[SmtpCredentials, Depends(smtp_credentials_service)]


async def template_service(request: Request) -> TemplateService:
    service: TemplateService = request.app.state.templates
    return service


Templates = Annotated[TemplateService, Depends(template_service)]


async def setup_service(request: Request) -> OutboundSetup:
    service: OutboundSetup = request.app.state.setup
    return service


async def suppression_service(request: Request) -> SuppressionService:
    service: SuppressionService = request.app.state.suppressions
    return service


Setup = Annotated[OutboundSetup, Depends(setup_service)]
Suppressions = Annotated[SuppressionService, Depends(suppression_service)]


async def bounce_service(request: Request) -> BounceService:
    service: BounceService = request.app.state.bounces
    return service


Bounces = Annotated[BounceService, Depends(bounce_service)]


async def mailbox_service(request: Request) -> MailboxService:
    service: MailboxService = request.app.state.mailboxes
    return service


async def mail_service(request: Request) -> MailService:
    service: MailService = request.app.state.mail
    return service


Mailboxes = Annotated[MailboxService, Depends(mailbox_service)]
Mail = Annotated[MailService, Depends(mail_service)]
