"""The FastAPI application: routes, error table and middleware, over services built elsewhere."""

from __future__ import annotations

from fastapi import FastAPI

from mailgate import __version__
from mailgate.admin.service import AdminService
from mailgate.admin.smtp_credentials import SmtpCredentials
from mailgate.api import errors
from mailgate.api.fast_lane import FastLane
from mailgate.api.middleware import RequestContext
from mailgate.api.routes import apikeys, connectors, domains, health, mail, mailboxes, messages, records, tenants
from mailgate.api.routes import bounces as bounces_routes
from mailgate.api.routes import smtp_credentials as smtp_credentials_routes
from mailgate.api.routes import suppressions as suppressions_routes
from mailgate.api.routes import templates as templates_routes
from mailgate.api.schemas.common import Problem
from mailgate.api.schemas.outbound import SendIn
from mailgate.inbound.mail import MailService
from mailgate.inbound.mailboxes import MailboxService
from mailgate.outbound.bounces import BounceService
from mailgate.outbound.service import OutboundService
from mailgate.outbound.setup import OutboundSetup
from mailgate.outbound.suppressions import SuppressionService
from mailgate.outbound.templates import TemplateService
from mailgate.store.database import Database

DESCRIPTION = """mailgate's REST API. Authenticate with `Authorization: Bearer <API key>`.
Errors are RFC 9457 `application/problem+json` with a stable `type`. Lists answer
`{"items": [...], "next_cursor": ...}`; pass `cursor` back to get the next page (`null` at the end)."""


def create_app(
    *,
    db: Database,
    admin: AdminService,
    outbound: OutboundService,
    smtp_credentials: SmtpCredentials,
    templates: TemplateService,
    setup: OutboundSetup,
    suppressions: SuppressionService,
    bounces: BounceService,
    mailbox_service: MailboxService,
    mail_service: MailService,
    max_wait: float = 60.0,
    max_body: int = 40 * 1024 * 1024,
) -> FastAPI:
    app = FastAPI(title="mailgate", version=__version__, description=DESCRIPTION)
    app.state.db = db
    app.state.admin = admin
    app.state.outbound = outbound
    app.state.smtp_credentials = smtp_credentials
    app.state.templates = templates
    app.state.setup = setup
    app.state.suppressions = suppressions
    app.state.bounces = bounces
    app.state.mailboxes = mailbox_service
    app.state.mail = mail_service
    app.state.max_wait = max_wait
    for module in (  # the framework tries routes in this order: the hottest first
        messages,
        mail,
        health,
        tenants,
        apikeys,
        records,
        connectors,
        suppressions_routes,
        smtp_credentials_routes,
        templates_routes,
        bounces_routes,
        domains,
        mailboxes,
    ):
        app.include_router(module.router)
    errors.install(app)
    app.add_middleware(FastLane)  # added first, so it runs inside RequestContext
    app.add_middleware(RequestContext, max_body=max_body)
    original_openapi = app.openapi

    def openapi() -> dict[str, object]:
        """Adds the models routes document by hand (problem bodies, the JSON form of a raw-capable body)."""
        spec = original_openapi()
        schemas = spec.setdefault("components", {}).setdefault("schemas", {})
        for model in (Problem, SendIn):
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(schema.pop("$defs", {}))
            schemas[model.__name__] = schema
        return spec

    app.openapi = openapi  # type: ignore[method-assign]
    return app
