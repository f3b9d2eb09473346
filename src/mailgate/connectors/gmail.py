"""Deliver through the Gmail API: ``POST /gmail/v1/users/{user}/messages/send`` with the MIME message
as base64url in ``{"raw": ...}``, authorized by a user's refresh token (one consent with the
gmail.send scope).

Answers (https://developers.google.com/gmail/api/guides/handle-errors):
200 with the new Message resource ``{"id", "threadId", "labelIds": ["SENT"]}``; errors as
``{"error": {"code", "message", "status", "errors": [{"domain", "reason", "message"}]}}``;
401 authError for an expired token; 403 or 429 with reason rateLimitExceeded, userRateLimitExceeded
or dailyLimitExceeded when over quota (mail sending limits can last hours); 403 domainPolicy or
insufficientPermissions when the app may not send; 400 invalidArgument for a message Gmail refuses;
5xx backendError. Like Graph, Gmail takes the recipients from the headers (see
``mailgate.connectors._http.api_copy``) and sends as the authorized user.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from urllib.parse import quote

import httpx2

from mailgate.connectors._http import HttpApiSender, Verdict
from mailgate.connectors.oauth2 import TokenManager, endpoint_problem
from mailgate.domain.errors import InvalidInput

_QUOTA_REASONS = frozenset({"rateLimitExceeded", "userRateLimitExceeded", "dailyLimitExceeded", "quotaExceeded"})
_TRANSIENT_STATUSES = frozenset({408, 409, 423, 425})


@dataclass(frozen=True)
class GmailConfig:
    """``user_id`` "me" is the user who granted ``refresh_token``; an address works too (it must be
    that user or one they may send as)."""

    client_id: str
    client_secret: str
    refresh_token: str
    user_id: str = "me"
    base_url: str = "https://gmail.googleapis.com"
    token_url: str = "https://oauth2.googleapis.com/token"  # noqa: S105 - a URL, not a secret
    timeout: float = 30

    def __post_init__(self) -> None:
        for name in ("client_id", "client_secret", "refresh_token", "user_id"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise InvalidInput(f"{name}: must not be empty", field=name)
        if any(c.isspace() or c in "/?#%\\" for c in self.user_id):
            raise InvalidInput("user_id: must not contain spaces or any of / ? # % \\", field="user_id")
        for name in ("base_url", "token_url"):
            problem = endpoint_problem(getattr(self, name))
            if problem:
                raise InvalidInput(f"{name}: {problem}", field=name)
        if not self.timeout > 0:
            raise InvalidInput("timeout: must be positive", field="timeout")

    @property
    def send_url(self) -> str:
        return f"{self.base_url.rstrip('/')}/gmail/v1/users/{quote(self.user_id, safe='@')}/messages/send"


class GmailSender(HttpApiSender):
    service = "Gmail"

    def __init__(self, config: GmailConfig, *, name: str = "gmail", tokens: TokenManager | None = None) -> None:
        if tokens is None:
            tokens = TokenManager.refresh_token(
                config.token_url,
                client_id=config.client_id,
                client_secret=config.client_secret,
                refresh_token=config.refresh_token,
                timeout=config.timeout,
            )
        super().__init__(name=name, tokens=tokens, timeout=config.timeout)
        self.config = config

    async def _post(self, client: httpx2.AsyncClient, token: str, message: bytes) -> httpx2.Response:
        raw = base64.urlsafe_b64encode(message).decode("ascii")
        return await client.post(self.config.send_url, json={"raw": raw}, headers={"Authorization": f"Bearer {token}"})

    def _accepted(self, response: httpx2.Response) -> str:
        try:
            ident = response.json().get("id")
        except (ValueError, AttributeError):
            ident = None
        suffix = f", id {ident}" if isinstance(ident, str) else ""
        return f"Gmail accepted the message: {response.status_code} {response.reason_phrase}{suffix}"

    def _error(self, response: httpx2.Response) -> tuple[str, str, Verdict]:
        message, reasons, status_name = "", [], ""
        try:
            error = response.json().get("error")
        except (ValueError, AttributeError):
            error = None
        if isinstance(error, dict):
            message = str(error.get("message") or "")
            status_name = str(error.get("status") or "")
            details = error.get("errors")
            if isinstance(details, list):
                reasons = [str(d["reason"]) for d in details if isinstance(d, dict) and d.get("reason")]
        code = ", ".join(reasons) or status_name
        status = response.status_code
        if status == 429 or _QUOTA_REASONS.intersection(reasons) or status_name == "RESOURCE_EXHAUSTED":
            verdict = Verdict.THROTTLED
        elif status in (401, 403, 404):
            verdict = Verdict.MISCONFIGURED
        elif status == 413:
            verdict = Verdict.TOO_BIG
        elif 400 <= status < 500 and status not in _TRANSIENT_STATUSES:
            verdict = Verdict.BAD_MESSAGE
        else:
            verdict = Verdict.UNAVAILABLE
        return code, message, verdict
