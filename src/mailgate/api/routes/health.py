"""Liveness, readiness and metrics: unauthenticated, for load balancers and Prometheus."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel

from mailgate.api.schemas.common import problems
from mailgate.domain.errors import Unavailable
from mailgate.observability.metrics import exposition
from mailgate.store.database import Database

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str
    version: str


class Ready(Health):
    database: str
    schema_revision: str | None


@router.get("/healthz", response_model=Health, summary="The process is alive")
async def healthz(request: Request) -> Health:
    return Health(status="ok", version=request.app.version)


@router.get(
    "/readyz", response_model=Ready, summary="The database is reachable and its schema current", responses=problems(503)
)
async def readyz(request: Request) -> Ready:
    db: Database = request.app.state.db
    try:
        current, head = await db.revisions()
    except Unavailable:
        raise
    except Exception as exc:  # a driver error of any kind means "not ready", never a 500
        raise Unavailable(f"database check failed: {type(exc).__name__}") from exc
    if current != head:
        raise Unavailable(f"database schema at {current}, this node needs {head}: run `mailgate db upgrade`")
    return Ready(status="ok", version=request.app.version, database=db.dialect, schema_revision=current)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
async def metrics() -> Response:
    body, content_type = exposition()
    return Response(body, media_type=content_type)
