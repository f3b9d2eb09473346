"""Connectors and routes: how mail leaves. Global ones need admin; a tenant's own need manage."""

from __future__ import annotations

from fastapi import APIRouter, Response

from mailgate.api.deps import Caller, RequestId, Setup
from mailgate.api.schemas.common import problems
from mailgate.api.schemas.outbound import ConnectorIn, ConnectorOut, ConnectorPage, RouteIn, RouteOut, RoutePage

router = APIRouter(tags=["connectors"])


@router.post(
    "/v1/connectors",
    status_code=201,
    response_model=ConnectorOut,
    responses=problems(401, 403, 404, 422, 503),
    summary="Create a connector, or replace the one of the same name (200)",
)
async def put_connector(
    body: ConnectorIn, setup: Setup, caller: Caller, rid: RequestId, response: Response
) -> ConnectorOut:
    spec, created = await setup.put_connector(
        caller, name=body.name, type=body.type, config=body.config(), tenant=body.tenant, request_id=rid
    )
    response.status_code = 201 if created else 200
    return ConnectorOut.of(spec)


@router.get("/v1/connectors", response_model=ConnectorPage, responses=problems(401, 403, 503))
async def list_connectors(setup: Setup, caller: Caller) -> ConnectorPage:
    return ConnectorPage(items=[ConnectorOut.of(c) for c in await setup.list_connectors(caller)])


@router.delete("/v1/connectors/{id}", status_code=204, response_class=Response, responses=problems(401, 403, 404, 503))
async def delete_connector(id: str, setup: Setup, caller: Caller, rid: RequestId) -> Response:
    await setup.delete_connector(caller, id, rid)
    return Response(status_code=204)


@router.put(
    "/v1/routes/{name}",
    response_model=RouteOut,
    responses=problems(401, 403, 404, 422, 503),
    summary="Create or replace a route: connector names in failover order",
)
async def put_route(
    name: str, body: RouteIn, setup: Setup, caller: Caller, rid: RequestId, response: Response
) -> RouteOut:
    route, created = await setup.put_route(
        caller, name=name, connectors=body.connectors, match=body.match.model_dump(), tenant=body.tenant, request_id=rid
    )
    response.status_code = 201 if created else 200
    return RouteOut.of(route)


@router.get("/v1/routes", response_model=RoutePage, responses=problems(401, 403, 503))
async def list_routes(setup: Setup, caller: Caller) -> RoutePage:
    return RoutePage(items=[RouteOut.of(r) for r in await setup.list_routes(caller)])
