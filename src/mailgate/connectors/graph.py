"""Deliver through Microsoft Graph (Exchange Online): ``POST /v1.0/users/{user}/sendMail`` with the
MIME message, as an app with the Mail.Send application permission (client-credentials grant).

The MIME form keeps the message byte for byte (DKIM signatures, our Message-ID, attachments),
which the JSON form would rebuild. Its costs: Graph always saves a copy in the mailbox's Sent Items
(``saveToSentItems`` exists only for JSON), one request carries only a few MB (bigger messages need
a draft plus an upload session, which this connector does not do: Graph's refusal bounces them), and
recipients come from the headers (see ``mailgate.connectors._http.api_copy``).

Answers (https://learn.microsoft.com/graph/api/user-sendmail, .../graph/errors):
202 Accepted with an empty body; errors as ``{"error": {"code", "message", "innerError"}}``;
429 with Retry-After when throttled; 503/504 (maybe with Retry-After) when overloaded;
400 ErrorInvalidRecipients / ErrorMimeContent*; 403 ErrorAccessDenied / ErrorSendAsDenied;
404 ErrorInvalidUser / MailboxNotEnabledForRESTAPI.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from urllib.parse import quote

import httpx2

from mailgate.connectors._http import HttpApiSender, Verdict
from mailgate.connectors.oauth2 import TokenManager, endpoint_problem
from mailgate.domain.errors import InvalidInput

# Codes that name a recipient problem; every other 400 is about the message itself.
_RECIPIENT_CODES = frozenset({"ErrorInvalidRecipients", "ErrorInvalidRecipientsAddress"})
_TRANSIENT_STATUSES = frozenset({408, 409, 423, 425})


@dataclass(frozen=True)
class GraphConfig:
    """``user_id`` is the sending mailbox: its object id or userPrincipalName. The app registration
    needs the Mail.Send *application* permission, ideally narrowed to that mailbox by an Exchange
    application access policy. ``base_url``, ``authority`` and ``scope`` change for national clouds
    (graph.microsoft.us, login.microsoftonline.us, ...)."""

    tenant_id: str
    client_id: str
    client_secret: str
    user_id: str
    base_url: str = "https://graph.microsoft.com"
    authority: str = "https://login.microsoftonline.com"
    scope: str = "https://graph.microsoft.com/.default"
    timeout: float = 30

    def __post_init__(self) -> None:
        for name in ("tenant_id", "client_id", "client_secret", "user_id", "scope"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise InvalidInput(f"{name}: must not be empty", field=name)
        for name in ("tenant_id", "user_id"):  # path segments of a URL
            value = getattr(self, name)
            if any(c.isspace() or c in "/?#%\\" for c in value):
                raise InvalidInput(f"{name}: must not contain spaces or any of / ? # % \\", field=name)
        for name in ("base_url", "authority"):
            problem = endpoint_problem(getattr(self, name))
            if problem:
                raise InvalidInput(f"{name}: {problem}", field=name)
        if not self.timeout > 0:
            raise InvalidInput("timeout: must be positive", field="timeout")

    @property
    def token_url(self) -> str:
        return f"{self.authority.rstrip('/')}/{self.tenant_id}/oauth2/v2.0/token"

    @property
    def send_url(self) -> str:
        return f"{self.base_url.rstrip('/')}/v1.0/users/{quote(self.user_id, safe='@')}/sendMail"


class GraphSender(HttpApiSender):
    service = "Graph"

    def __init__(self, config: GraphConfig, *, name: str = "graph", tokens: TokenManager | None = None) -> None:
        if tokens is None:
            tokens = TokenManager.client_credentials(
                config.token_url,
                client_id=config.client_id,
                client_secret=config.client_secret,
                scope=config.scope,
                timeout=config.timeout,
            )
        super().__init__(name=name, tokens=tokens, timeout=config.timeout)
        self.config = config

    async def _post(self, client: httpx2.AsyncClient, token: str, message: bytes) -> httpx2.Response:
        return await client.post(
            self.config.send_url,
            content=base64.b64encode(message),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "text/plain"},
        )

    def _accepted(self, response: httpx2.Response) -> str:
        return f"Graph accepted the message: {response.status_code} {response.reason_phrase}{_request_id(response)}"

    def _error(self, response: httpx2.Response) -> tuple[str, str, Verdict]:
        code, message = "", ""
        try:
            error = response.json().get("error")
        except (ValueError, AttributeError):
            error = None
        if isinstance(error, dict):
            code, message = str(error.get("code") or ""), str(error.get("message") or "")
        text = f"{message}{_request_id(response)}".strip()
        status = response.status_code
        if status == 429:
            verdict = Verdict.THROTTLED
        elif status in (401, 403, 404):
            verdict = Verdict.MISCONFIGURED
        elif status == 413 or code == "ErrorMessageSizeExceeded":
            verdict = Verdict.TOO_BIG
        elif code in _RECIPIENT_CODES:
            verdict = Verdict.BAD_RECIPIENT
        elif 400 <= status < 500 and status not in _TRANSIENT_STATUSES:
            verdict = Verdict.BAD_MESSAGE
        else:
            verdict = Verdict.UNAVAILABLE
        return code, text, verdict


def _request_id(response: httpx2.Response) -> str:
    """Microsoft support asks for the request-id of a failed call; it costs nothing to keep."""
    rid = response.headers.get("request-id")
    return f" (request-id {rid})" if rid else ""
