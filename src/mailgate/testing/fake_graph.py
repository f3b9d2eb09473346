"""A fake Microsoft Graph and Microsoft identity platform on loopback, for the Graph connector's tests
and for users who want to test their mailgate setup without a tenant. Usage::

    async with FakeGraph(tenant_id="contoso", client_id="app", client_secret="s3cret",
                         users={"sender@contoso.test"}) as graph:
        config = GraphConfig(..., base_url=graph.base_url, authority=graph.base_url)
        ...
        graph.throttle(times=2, retry_after=3)   # the next two sends get 429 + Retry-After: 3
        graph.expire_tokens()                     # the next send gets 401, a new token works
        graph.sent[0].mime                        # the decoded MIME Graph was given

It answers with the documented shapes: ``POST /{tenant}/oauth2/v2.0/token`` (client-credentials
grant, ``{"token_type", "expires_in", "ext_expires_in", "access_token"}``, AADSTS errors as
``{"error", "error_description", "error_codes"}``) and ``POST /v1.0/users/{user}/sendMail`` with a
base64 MIME body and ``Content-Type: text/plain`` (202 and an empty body; errors as
``{"error": {"code", "message", "innerError"}}``). The fake's own choice where Graph's docs are
silent: a body that is not ``text/plain`` gets 415 UnsupportedMediaType.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mailgate.testing._fake_http import FakeApiServer, Fault, SentMessage

GRAPH_SCOPE = "https://graph.microsoft.com/.default"


class FakeGraph(FakeApiServer):
    def __init__(
        self,
        *,
        tenant_id: str = "contoso.onmicrosoft.com",
        client_id: str = "00000000-0000-0000-0000-00000000a99",
        client_secret: str = "fake-secret",  # noqa: S107 - the fake's own, published on purpose
        users: Iterable[str] = ("sender@contoso.test",),
        scope: str = GRAPH_SCOPE,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.tenant_id = tenant_id
        self.client_id = client_id
        self.client_secret = client_secret
        self.users = {u.lower() for u in users}
        self.scope = scope

    def throttle(self, *, times: int = 1, retry_after: int | None = 1) -> None:
        self.fail(
            429,
            "TooManyRequests",
            "The request has been throttled. Please retry after the time given in Retry-After.",
            times=times,
            retry_after=retry_after,
        )

    def _routes(self) -> list[Route]:
        return [
            Route("/{tenant}/oauth2/v2.0/token", self._token, methods=["POST"]),
            Route("/v1.0/users/{user}/sendMail", self._send_mail, methods=["POST"]),
        ]

    # ----- identity platform -----

    async def _token(self, request: Request) -> Response:
        await self._token_pause()
        fault = await self._next_fault(self.token_faults)
        if fault is not None:
            if not fault.code:
                return self._empty(fault.status, self._retry_headers(fault))
            return _aad_error(fault.status, fault.code, fault.message or "scripted failure", 0)
        if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            return _aad_error(
                400,
                "invalid_request",
                "AADSTS900144: The request body must contain the following parameter: 'grant_type'.",
                900144,
            )
        form = await self._form(request)
        tenant = request.path_params["tenant"]
        if tenant != self.tenant_id:
            return _aad_error(400, "invalid_request", f"AADSTS90002: Tenant '{tenant}' not found.", 90002)
        if form.get("grant_type") != "client_credentials":
            return _aad_error(
                400, "unsupported_grant_type", "AADSTS70003: The app requested an unsupported grant type.", 70003
            )
        if form.get("client_id") != self.client_id:
            return _aad_error(
                400,
                "unauthorized_client",
                f"AADSTS700016: Application with identifier '{form.get('client_id')}' was not found in the directory.",
                700016,
            )
        if form.get("client_secret") != self.client_secret:
            return _aad_error(
                401,
                "invalid_client",
                "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the "
                f"client secret value, not the client secret ID, for a secret added to app '{self.client_id}'.",
                7000215,
            )
        if form.get("scope") != self.scope:
            return _aad_error(
                400,
                "invalid_scope",
                f"AADSTS1002012: The provided value for scope {form.get('scope')} is not valid. Client credential "
                "flows must have a scope value with /.default suffixed to the resource identifier.",
                1002012,
            )
        token = self._issue_token()
        return JSONResponse(
            {
                "token_type": "Bearer",
                "expires_in": self.token_lifetime,
                "ext_expires_in": self.token_lifetime,
                "access_token": token,
            }
        )

    # ----- Graph -----

    async def _send_mail(self, request: Request) -> Response:
        self.send_requests += 1
        body = await request.body()
        if not request.headers.get("authorization"):
            return _graph_error(401, "InvalidAuthenticationToken", "Access token is empty.")
        token = self._bearer(request)
        if token is None:
            return _graph_error(401, "InvalidAuthenticationToken", "Access token has expired or is not yet valid.")
        fault = await self._next_fault(self.send_faults)
        if fault is not None:
            return _graph_error(fault.status, fault.code, fault.message, self._retry_headers(fault))
        user = request.path_params["user"]
        if user.lower() not in self.users:
            return _graph_error(404, "ErrorInvalidUser", f"The requested user '{user}' is invalid.")
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "text/plain":
            return _graph_error(415, "UnsupportedMediaType", f"Content-Type {content_type!r} is not supported here.")
        try:
            mime = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            mime = b""
        if not mime:
            return _graph_error(400, "ErrorMimeContentInvalidBase64String", "Invalid base64 string for MIME content.")
        self.sent.append(SentMessage(user_id=user, mime=mime, token=token))
        return self._empty(202, {"request-id": str(uuid.uuid4())})


def _aad_error(status: int, error: str, description: str, code: int) -> JSONResponse:
    now = datetime.now(UTC)
    return JSONResponse(
        {
            "error": error,
            "error_description": f"{description}\r\nTrace ID: {uuid.uuid4()}\r\nTimestamp: {now:%Y-%m-%d %H:%M:%SZ}",
            "error_codes": [code] if code else [],
            "timestamp": f"{now:%Y-%m-%d %H:%M:%SZ}",
            "trace_id": str(uuid.uuid4()),
        },
        status_code=status,
    )


def _graph_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    request_id = str(uuid.uuid4())
    inner = {"date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"), "request-id": request_id}
    return JSONResponse(
        {"error": {"code": code or "UnknownError", "message": message, "innerError": inner}},
        status_code=status,
        headers={"request-id": request_id, **(headers or {})},
    )


__all__ = ["GRAPH_SCOPE", "FakeGraph", "Fault", "SentMessage"]
