"""Request id, body size limit, access log and metrics for every request, as one pure ASGI middleware."""

from __future__ import annotations

import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mailgate.api.errors import problem_response, unexpected_error_response
from mailgate.observability.logging import get_logger, request_id_var
from mailgate.observability.metrics import HTTP_LATENCY, HTTP_REQUESTS

log = get_logger("mailgate.api.access")
_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,100}$")


class _BodyTooLarge(Exception):
    pass


class RequestContext:
    def __init__(self, app: ASGIApp, max_body: int = 40 * 1024 * 1024) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = incoming if _VALID_ID.match(incoming) else uuid.uuid4().hex
        token = request_id_var.set(rid)
        start = time.perf_counter()
        status = 500
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        received = 0

        async def receive_limited() -> Message:
            """Counts body bytes as they arrive: a chunked upload has no Content-Length to check first."""
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise _BodyTooLarge
            return message

        try:
            declared = dict(scope["headers"]).get(b"content-length", b"")
            if declared.isdigit() and int(declared) > self.max_body:
                raise _BodyTooLarge
            await self.app(scope, receive_limited, send_with_id)
        except _BodyTooLarge:
            if started:
                raise
            detail = f"the request body exceeds {self.max_body} bytes"
            await problem_response(413, "too-large", "Request too large", detail, scope["path"])(
                scope, receive, send_with_id
            )
        except Exception as exc:
            log.exception("unhandled error", error=type(exc).__name__, path=scope["path"])
            if started:
                raise
            await unexpected_error_response(scope["path"])(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - start
            route = getattr(scope.get("route"), "path", "unmatched")
            HTTP_REQUESTS.labels(scope["method"], route, str(status)).inc()
            HTTP_LATENCY.labels(scope["method"], route).observe(elapsed)
            log.info(
                "request",
                method=scope["method"],
                path=scope["path"],
                route=route,
                status=status,
                duration_ms=round(elapsed * 1000, 2),
            )
            request_id_var.reset(token)
