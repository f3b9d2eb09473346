"""One table from error class to problem+json; every error the API returns goes through here."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from mailgate.domain import errors
from mailgate.domain.records import Outcome
from mailgate.observability.logging import get_logger, request_id_var

log = get_logger("mailgate.api")

PROBLEM_TYPE = "urn:mailgate:problem:"
MEDIA_TYPE = "application/problem+json"

#: class -> (status, stable type slug, title); the first matching base class wins
TABLE: list[tuple[type[errors.MailgateError], int, str, str]] = [
    (errors.NotFound, 404, "not-found", "Not found"),
    (errors.AuthenticationFailed, 401, "unauthorized", "Authentication required"),
    (errors.PermissionDenied, 403, "forbidden", "Permission denied"),
    (errors.Conflict, 409, "conflict", "Conflict"),
    (errors.InvalidInput, 422, "invalid-input", "Invalid input"),
    (errors.Unavailable, 503, "unavailable", "Service unavailable"),
    (errors.ConfigurationError, 500, "configuration", "Server misconfigured"),
    (errors.IntegrityError, 500, "integrity", "Stored data failed an integrity check"),
]

_OUTCOMES = {
    401: Outcome.DENIED,
    403: Outcome.DENIED,
    404: Outcome.NOT_FOUND,
    409: Outcome.INVALID,
    422: Outcome.INVALID,
}
_HTTP_SLUGS = {
    404: "not-found",
    405: "method-not-allowed",
    400: "bad-request",
    413: "too-large",
    415: "unsupported-media-type",
}


def problem_response(
    status: int,
    slug: str,
    title: str,
    detail: str | None,
    instance: str,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE + slug,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": instance,
        "request_id": request_id_var.get(),
        **extra,
    }
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def problem(
    status: int,
    slug: str,
    title: str,
    detail: str | None,
    request: Request,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    return problem_response(status, slug, title, detail, request.url.path, headers, **extra)


def unexpected_error_response(path: str) -> JSONResponse:
    """The answer to a bug: nothing of it leaks; the request id finds it in the log."""
    return problem_response(
        500, "internal", "Internal error", "an unexpected error occurred; see the log by request id", path
    )


async def _audit_refusal(request: Request, status: int, reason: str) -> None:
    """A refused state-changing call by a known key is an audit entry too (outcome denied/invalid)."""
    principal = getattr(request.state, "principal", None)
    if principal is None or request.method in ("GET", "HEAD", "OPTIONS") or status not in _OUTCOMES:
        return
    route = request.scope.get("route")
    action = f"{request.method} {getattr(route, 'path', request.url.path)}"
    try:
        await request.app.state.admin.record_refusal(
            principal,
            action,
            object_type=None,
            object_id=request.path_params.get("id"),
            request_id=request_id_var.get(),
            outcome=_OUTCOMES[status],
            reason=reason[:300],
        )
    except errors.Unavailable:
        log.warning("audit of a refused call lost: database unavailable", action=action)


async def _on_mailgate_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, errors.MailgateError)
    status, slug, title = next(
        ((s, sl, t) for cls, s, sl, t in TABLE if isinstance(exc, cls)), (500, "internal", "Internal error")
    )
    if status >= 500:
        log.error("request failed", error=type(exc).__name__, detail=exc.detail)
    await _audit_refusal(request, status, exc.detail)
    headers = {"WWW-Authenticate": 'Bearer realm="mailgate"'} if status == 401 else None
    extra: dict[str, Any] = {}
    if isinstance(exc, errors.InvalidInput) and exc.field:
        extra["errors"] = [{"field": exc.field, "message": exc.detail}]
    if status == 503:
        headers = {"Retry-After": "5"}
    return problem(status, slug, title, exc.detail, request, headers, **extra)


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    items = [{"field": ".".join(str(p) for p in e.get("loc", ())), "message": e.get("msg", "")} for e in exc.errors()]
    detail = "; ".join(f"{i['field']}: {i['message']}" for i in items)[:500]
    await _audit_refusal(request, 422, detail)
    return problem(422, "invalid-input", "Invalid input", detail, request, errors=items)


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    slug = _HTTP_SLUGS.get(exc.status_code, "http-error")
    return problem(exc.status_code, slug, str(exc.detail), str(exc.detail), request, dict(exc.headers or {}))


def install(app: FastAPI) -> None:
    app.add_exception_handler(errors.MailgateError, _on_mailgate_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
