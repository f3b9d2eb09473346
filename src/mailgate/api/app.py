"""The FastAPI application: routes, error table and middleware, over services built elsewhere."""

from __future__ import annotations

from fastapi import FastAPI

from mailgate import __version__
from mailgate.admin.service import AdminService
from mailgate.api import errors
from mailgate.api.middleware import RequestContext
from mailgate.api.routes import apikeys, connectors, health, messages, records, suppressions, tenants
from mailgate.api.schemas.common import Problem
from mailgate.outbound.service import OutboundService
from mailgate.store.database import Database

DESCRIPTION = """mailgate's REST API. Authenticate with `Authorization: Bearer <API key>`.
Errors are RFC 9457 `application/problem+json` with a stable `type`. Lists answer
`{"items": [...], "next_cursor": ...}`; pass `cursor` back to get the next page (`null` at the end)."""


def create_app(*, db: Database, admin: AdminService, outbound: OutboundService, max_wait: float = 60.0) -> FastAPI:
    app = FastAPI(title="mailgate", version=__version__, description=DESCRIPTION)
    app.state.db = db
    app.state.admin = admin
    app.state.outbound = outbound
    app.state.max_wait = max_wait
    for module in (health, tenants, apikeys, records, connectors, messages, suppressions):
        app.include_router(module.router)
    errors.install(app)
    app.add_middleware(RequestContext)
    original_openapi = app.openapi

    def openapi() -> dict[str, object]:
        spec = original_openapi()
        spec.setdefault("components", {}).setdefault("schemas", {})["Problem"] = Problem.model_json_schema(
            ref_template="#/components/schemas/{model}"
        )
        return spec

    app.openapi = openapi  # type: ignore[method-assign]
    return app
