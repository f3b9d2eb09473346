"""OAuth2 access tokens for the connectors that need one (Graph, Gmail, SMTP with XOAUTH2).

One ``TokenManager`` per connector holds one token and shares it among all concurrent sends. Token
endpoints are rate limited and slow (hundreds of milliseconds), so a burst of sends must cost one
token request, not one each: concurrent callers that find no valid token all wait on the same
request, and its result (token or error) is everybody's.

Errors are classified for the caller: ``TokenError.permanent`` means the endpoint refused the
connector's configuration (wrong secret, revoked refresh token, unknown tenant, bad scope) and no
retry can help until an operator fixes it; otherwise (5xx, 429, timeout, network) a later attempt may
succeed.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx2

# RFC 6749 5.2 error codes that mean "your request or credentials are wrong": retrying the same
# request cannot succeed. Anything else an endpoint invents is treated as transient.
_PERMANENT_ERRORS = frozenset(
    {
        "invalid_request",
        "invalid_client",
        "invalid_grant",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_scope",
        "access_denied",
    }
)
_HINTS = {
    "invalid_client": "check the client id and secret; secrets expire",
    "invalid_grant": "the refresh token was revoked or expired: authorize again",
    "invalid_scope": "check the scope",
    "unauthorized_client": "check the client id and the tenant the app is registered in",
}


class TokenError(Exception):
    def __init__(self, reason: str, *, permanent: bool, error: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent
        self.error = error
        """The endpoint's OAuth2 ``error`` code, when it sent one."""


@dataclass(frozen=True, slots=True)
class _Token:
    value: str
    refresh_at: float


class TokenManager:
    """Use the factory methods; ``clock`` is injectable so tests can expire tokens without sleeping.

    A token is reused until ``leeway`` seconds before it expires (a tenth of its lifetime for short
    lived tokens), so a request never leaves with a token that dies in flight.
    """

    def __init__(
        self,
        token_url: str,
        form: Mapping[str, str],
        *,
        timeout: float = 30.0,
        leeway: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.token_url = token_url
        self._form = dict(form)
        self._timeout = timeout
        self._leeway = leeway
        self._clock = clock
        self._token: _Token | None = None
        self._inflight: asyncio.Task[_Token] | None = None
        self._client: httpx2.AsyncClient | None = None
        self.requests = 0
        """Token requests sent so far (for metrics and tests)."""

    @classmethod
    def client_credentials(
        cls, token_url: str, *, client_id: str, client_secret: str, scope: str, **kwargs: Any
    ) -> TokenManager:
        """The app acts as itself (Microsoft identity platform daemons: Graph, Exchange Online SMTP)."""
        form = {
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": client_secret,
            "scope": scope,
        }
        return cls(token_url, form, **kwargs)

    @classmethod
    def refresh_token(
        cls,
        token_url: str,
        *,
        client_id: str,
        refresh_token: str,
        client_secret: str | None = None,
        scope: str | None = None,
        **kwargs: Any,
    ) -> TokenManager:
        """The app acts for a user who consented once (Gmail, delegated Microsoft access). Public
        clients have no secret; ``scope`` narrows the grant and is usually left out."""
        form = {"grant_type": "refresh_token", "client_id": client_id, "refresh_token": refresh_token}
        if client_secret is not None:
            form["client_secret"] = client_secret
        if scope is not None:
            form["scope"] = scope
        return cls(token_url, form, **kwargs)

    async def token(self) -> str:
        """A valid access token; raises TokenError."""
        current = self._token
        if current is not None and self._clock() < current.refresh_at:
            return current.value
        if self._inflight is None:
            self._inflight = asyncio.create_task(self._fetch(), name=f"OAuth2 token from {self.token_url}")
            self._inflight.add_done_callback(self._fetched)
        # shield: a caller that gives up (its send timed out) must not cancel the request the
        # other callers are waiting on
        return (await asyncio.shield(self._inflight)).value

    def invalidate(self, token: str) -> None:
        """Forget ``token`` after the resource server refused it (revoked, or expired early). Only
        that token: a 401 arriving late for an old token must not throw away a fresh one."""
        if self._token is not None and self._token.value == token:
            self._token = None

    async def aclose(self) -> None:
        """Release the HTTP connection; the manager stays usable and reconnects on demand."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def _fetched(self, task: asyncio.Task[_Token]) -> None:
        self._inflight = None
        if not task.cancelled() and task.exception() is None:
            self._token = task.result()

    async def _fetch(self) -> _Token:
        if self._client is None or self._client.is_closed:
            self._client = http_client(self._timeout)
        self.requests += 1
        started = self._clock()
        try:
            response = await self._client.post(self.token_url, data=self._form, headers={"Accept": "application/json"})
        except httpx2.TimeoutException:
            raise TokenError(
                f"token endpoint {self.token_url} did not answer within {self._timeout:g}s", permanent=False
            ) from None
        except httpx2.HTTPError as exc:
            reason = f"cannot reach token endpoint {self.token_url}: {exc.__class__.__name__}: {exc}"
            raise TokenError(reason, permanent=False) from None
        return self._parse(response, started)

    def _parse(self, response: httpx2.Response, started: float) -> _Token:
        where = f"token endpoint {self.token_url}"
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            body = {}
        status = response.status_code
        if status == 200:
            value = body.get("access_token")
            token_type = str(body.get("token_type", "Bearer"))
            if not isinstance(value, str) or not value:
                # a 200 without a token is a web page, not a token endpoint: the URL is wrong
                raise TokenError(f"{where} answered 200 without an access_token; check the URL", permanent=True)
            if token_type.lower() != "bearer":
                raise TokenError(
                    f"{where} issued a {token_type!r} token; only Bearer tokens are supported", permanent=True
                )
            rotated = body.get("refresh_token")
            if self._form.get("grant_type") == "refresh_token" and isinstance(rotated, str) and rotated:
                # Microsoft rotates refresh tokens on use; the newest one lives longest. Kept in memory
                # only: the stored configuration still holds the one an operator entered.
                self._form["refresh_token"] = rotated
            lifetime = _seconds(body.get("expires_in"), default=3600.0)
            margin = min(self._leeway, lifetime / 10)
            # count from when the request left: the endpoint's clock started before our answer arrived
            return _Token(value, started + lifetime - margin)
        error = body.get("error")
        if isinstance(error, str):
            description = body.get("error_description")
            # Entra appends trace ids and timestamps on lines of their own: keep the reply one line
            detail = " ".join(f"{error}: {description}".split()) if isinstance(description, str) else error
            hint = f" ({_HINTS[error]})" if error in _HINTS else ""
            raise TokenError(
                f"{where} refused the request: {status} {detail}{hint}",
                permanent=error in _PERMANENT_ERRORS,
                error=error,
            )
        if status == 429 or status >= 500:
            retry = response.headers.get("Retry-After")
            suffix = f" (Retry-After: {retry})" if retry else ""
            raise TokenError(f"{where} is unavailable: {status} {response.reason_phrase}{suffix}", permanent=False)
        raise TokenError(f"{where} answered {status} {response.reason_phrase}; check the URL", permanent=True)


def _seconds(value: object, *, default: float) -> float:
    """``expires_in`` is a number per RFC 6749, but Azure AD v1 sent it as a string."""
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return default
    return seconds if seconds > 0 else default


def http_client(timeout: float) -> httpx2.AsyncClient:
    """Redirects are not followed: a token endpoint or mail API that redirects is misconfigured, and
    following would hand the secret or the message to wherever it points."""
    return httpx2.AsyncClient(timeout=timeout, follow_redirects=False, verify=_tls_context())


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One context for every connector's HTTP client: loading the CA store costs ~0.1 s each time."""
    return ssl.create_default_context()


def endpoint_problem(url: str) -> str | None:
    """Why ``url`` must not receive credentials or tokens, or None. Plain http only to this host:
    the fakes in tests live there, and a secret sent in clear text anywhere else is a leaked secret."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return "must be an http(s) URL"
    if parts.scheme not in ("http", "https") or not host:
        return "must be an http(s) URL"
    if parts.username is not None or parts.query or parts.fragment:
        return "must not carry credentials, a query or a fragment"
    if parts.scheme == "http" and not _loopback(host):
        return "must use https (plain http is allowed only to localhost)"
    return None


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
