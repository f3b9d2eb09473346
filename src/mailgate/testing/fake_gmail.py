"""A fake Gmail API and Google OAuth2 token endpoint on loopback, for the Gmail connector's tests and
for users who want to test their setup without a Google account. Usage::

    async with FakeGmail(client_id="app", client_secret="s3cret", refresh_token="1//r",
                         user="me@example.test") as gmail:
        config = GmailConfig(..., base_url=gmail.base_url, token_url=gmail.token_url)
        ...
        gmail.throttle(times=1, retry_after=5)     # 429 rateLimitExceeded + Retry-After: 5
        gmail.revoke()                             # the refresh token stops working (invalid_grant)
        gmail.sent[0].mime                         # the decoded MIME Gmail was given

It answers with the documented shapes: ``POST /token`` (refresh-token grant, ``{"access_token",
"expires_in", "scope", "token_type"}``, errors as ``{"error", "error_description"}``) and
``POST /gmail/v1/users/{userId}/messages/send`` with ``{"raw": base64url}`` (200 and
``{"id", "threadId", "labelIds": ["SENT"]}``; errors as
``{"error": {"code", "message", "errors": [{"message", "domain", "reason"}], "status"}}``).
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mailgate.testing._fake_http import FakeApiServer, Fault, SentMessage

GMAIL_SEND_SCOPE = "https://www.googleapis.com/auth/gmail.send"

# google.rpc.Code names Google puts in error.status
_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


class FakeGmail(FakeApiServer):
    def __init__(
        self,
        *,
        client_id: str = "123-fake.apps.googleusercontent.com",
        client_secret: str = "fake-secret",  # noqa: S107 - the fake's own, published on purpose
        refresh_token: str = "1//fake-refresh-token",  # noqa: S107 - the fake's own
        user: str = "me@example.test",
        rotate_refresh_token: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.client_id = client_id
        self.client_secret = client_secret
        self.refresh_token = refresh_token
        self.user = user
        self.rotate_refresh_token = rotate_refresh_token
        """Answer every refresh with a new refresh token and retire the old one, as Microsoft's
        endpoint does (more strictly: Microsoft keeps the old one valid for a while)."""

    @property
    def token_url(self) -> str:
        return f"{self.base_url}/token"

    def throttle(self, *, times: int = 1, retry_after: int | None = 1) -> None:
        self.fail(429, "rateLimitExceeded", "Rate Limit Exceeded", times=times, retry_after=retry_after)

    def revoke(self) -> None:
        """The user withdrew consent: the refresh token and every access token stop working."""
        self.refresh_token = "revoked-" + secrets.token_hex(4)
        self.expire_tokens()

    def _routes(self) -> list[Route]:
        return [
            Route("/token", self._token, methods=["POST"]),
            Route("/gmail/v1/users/{user}/messages/send", self._send, methods=["POST"]),
        ]

    async def _token(self, request: Request) -> Response:
        await self._token_pause()
        fault = await self._next_fault(self.token_faults)
        if fault is not None:
            if not fault.code:
                return self._empty(fault.status, self._retry_headers(fault))
            return _oauth_error(fault.status, fault.code, fault.message or "scripted failure")
        form = await self._form(request)
        if form.get("grant_type") != "refresh_token":
            return _oauth_error(400, "unsupported_grant_type", f"Invalid grant_type: {form.get('grant_type')}")
        if form.get("client_id") != self.client_id:
            return _oauth_error(401, "invalid_client", "The OAuth client was not found.")
        if form.get("client_secret") != self.client_secret:
            return _oauth_error(401, "invalid_client", "Unauthorized")
        if form.get("refresh_token") != self.refresh_token:
            return _oauth_error(400, "invalid_grant", "Token has been expired or revoked.")
        answer: dict[str, str | int] = {
            "access_token": self._issue_token(),
            "expires_in": self.token_lifetime,
            "scope": GMAIL_SEND_SCOPE,
            "token_type": "Bearer",
        }
        if self.rotate_refresh_token:
            self.refresh_token = answer["refresh_token"] = "1//" + secrets.token_urlsafe(16)
        return JSONResponse(answer)

    async def _send(self, request: Request) -> Response:
        self.send_requests += 1
        body = await request.body()
        token = self._bearer(request)
        if token is None:
            return _gmail_error(
                401,
                "authError",
                "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or "
                "other valid authentication credential.",
                domain="global",
            )
        fault = await self._next_fault(self.send_faults)
        if fault is not None:
            domain = "usageLimits" if fault.status in (403, 429) else "global"
            return _gmail_error(
                fault.status, fault.code, fault.message, domain=domain, headers=self._retry_headers(fault)
            )
        user = request.path_params["user"]
        if user != "me" and user.lower() != self.user.lower():
            return _gmail_error(403, "forbidden", f"Delegation denied for {self.user}")
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            return _gmail_error(
                400, "badRequest", "Invalid JSON payload received. Content-Type must be application/json."
            )
        try:
            raw = json.loads(body).get("raw")
        except (ValueError, AttributeError):
            raw = None
        mime = _base64url(raw) if isinstance(raw, str) else None
        if not mime:
            return _gmail_error(
                400,
                "invalidArgument",
                "'raw' RFC822 payload message string or uploading message via /upload/* URL required",
            )
        self.sent.append(SentMessage(user_id=user, mime=mime, token=token))
        return JSONResponse({"id": secrets.token_hex(8), "threadId": secrets.token_hex(8), "labelIds": ["SENT"]})


def _base64url(text: str) -> bytes | None:
    """Google accepts base64url with or without padding; standard base64's + and / are refused."""
    if any(c in "+/" for c in text):
        return None
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None


def _oauth_error(status: int, error: str, description: str) -> JSONResponse:
    return JSONResponse({"error": error, "error_description": description}, status_code=status)


def _gmail_error(
    status: int, reason: str, message: str, *, domain: str = "global", headers: dict[str, str] | None = None
) -> JSONResponse:
    error = {
        "code": status,
        "message": message,
        "errors": [{"message": message, "domain": domain, "reason": reason or "backendError"}],
        "status": _STATUS_NAMES.get(status, "UNKNOWN"),
    }
    return JSONResponse({"error": error}, status_code=status, headers=headers)


__all__ = ["GMAIL_SEND_SCOPE", "FakeGmail", "Fault", "SentMessage"]
