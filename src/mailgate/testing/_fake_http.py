"""The machinery the fake HTTP mail APIs share: a Starlette app served by uvicorn on a real loopback
socket in the caller's event loop, an OAuth2 token issuer, and scripted faults.

Faults are queued and used up one request each, in order: ``fake.fail(503)`` makes the next send
fail once; ``fake.throttle(times=3, retry_after=2)`` the next three. A hanging request answers only
when the server stops, so a client timeout is what ends it.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Self
from urllib.parse import parse_qsl

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


@dataclass(frozen=True, slots=True)
class Fault:
    """One scripted failure. ``code`` is the service's error code (Graph ``error.code``, Gmail
    ``errors[].reason``, OAuth2 ``error``)."""

    status: int
    code: str = ""
    message: str = ""
    retry_after: int | None = None
    hang: bool = False


@dataclass(frozen=True, slots=True)
class SentMessage:
    """What the service accepted: the decoded MIME bytes, for whom, with which token."""

    user_id: str
    mime: bytes
    token: str


class _Uvicorn(uvicorn.Server):
    """Inside the test's loop: pytest, not uvicorn, owns the signal handlers. Stopping wakes the
    server at once instead of at its next 0.1 s tick, which every test would pay for."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.exit = asyncio.Event()

    def capture_signals(self) -> Any:
        return nullcontext()

    async def main_loop(self) -> None:
        await self.exit.wait()


class FakeApiServer(ABC):
    def __init__(
        self, *, host: str = "127.0.0.1", token_lifetime: int = 3599, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.host = host
        self.port = 0
        self.token_lifetime = token_lifetime
        self.token_delay = 0.0
        """Seconds the token endpoint takes to answer, to make concurrent token requests overlap."""
        self.clock = clock
        self.sent: list[SentMessage] = []
        self.token_requests = 0
        self.send_requests = 0
        self.token_faults: deque[Fault] = deque()
        self.send_faults: deque[Fault] = deque()
        self._tokens: dict[str, float] = {}
        self._server: _Uvicorn | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # ----- scripting -----

    def fail(
        self, status: int, code: str = "", message: str = "", *, times: int = 1, retry_after: int | None = None
    ) -> None:
        """The next ``times`` sends fail with this answer."""
        self.send_faults.extend([Fault(status, code, message, retry_after)] * times)

    @abstractmethod
    def throttle(self, *, times: int = 1, retry_after: int | None = 1) -> None:
        """The next ``times`` sends are throttled the way the service throttles."""

    def hang(self, *, times: int = 1) -> None:
        """The next ``times`` sends get no answer until the server stops."""
        self.send_faults.extend([Fault(0, hang=True)] * times)

    def fail_token(self, status: int, code: str = "", message: str = "", *, times: int = 1) -> None:
        """The next ``times`` token requests fail with this answer (``code`` empty: no OAuth2 body)."""
        self.token_faults.extend([Fault(status, code, message)] * times)

    def expire_tokens(self) -> None:
        """Every token issued so far stops working, as when a token is revoked or outlives its
        lifetime before the client noticed: the next send gets a 401."""
        self._tokens.clear()

    def token_valid(self, token: str) -> bool:
        expiry = self._tokens.get(token)
        return expiry is not None and self.clock() < expiry

    # ----- lifecycle -----

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("the fake is already running")
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            Starlette(routes=self._routes()),
            log_config=None,
            access_log=False,
            lifespan="off",
            server_header=False,
            timeout_graceful_shutdown=1,
        )
        self._stopping = asyncio.Event()
        self._server = _Uvicorn(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name=f"{type(self).__name__}")
        while not self._server.started:
            if self._task.done():
                await self._task  # raises what stopped it
                raise RuntimeError("the fake server stopped during startup")
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        """Stop listening; hanging requests are released first so shutdown is quick."""
        server, task, self._server, self._task = self._server, self._task, None, None
        if server is None or task is None:
            return
        self._stopping.set()
        server.should_exit = True
        server.exit.set()
        await task

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ----- for the service-specific subclasses -----

    @abstractmethod
    def _routes(self) -> list[Route]: ...

    def _issue_token(self) -> str:
        token = "fake-" + secrets.token_urlsafe(24)
        self._tokens[token] = self.clock() + self.token_lifetime
        return token

    def _bearer(self, request: Request) -> str | None:
        """The request's token if this server issued it and it has not expired."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not self.token_valid(token.strip()):
            return None
        return token.strip()

    async def _next_fault(self, faults: deque[Fault]) -> Fault | None:
        if not faults:
            return None
        fault = faults.popleft()
        if fault.hang:
            await self._stopping.wait()
            return Fault(503, "ServiceUnavailable", "the fake server is stopping")
        return fault

    async def _token_pause(self) -> None:
        self.token_requests += 1
        if self.token_delay:
            await asyncio.sleep(self.token_delay)

    @staticmethod
    async def _form(request: Request) -> dict[str, str]:
        """Token requests are form-encoded; parsed here because Starlette's parser needs an extra."""
        return dict(parse_qsl((await request.body()).decode("utf-8", "replace"), keep_blank_values=True))

    @staticmethod
    def _retry_headers(fault: Fault) -> dict[str, str]:
        return {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}

    @staticmethod
    def _empty(status: int, headers: dict[str, str] | None = None) -> Response:
        return Response(status_code=status, headers=headers)
