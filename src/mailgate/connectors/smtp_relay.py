"""Deliver through one configured SMTP relay (a smarthost, a provider's submission port) over a small
pool of reused connections.

Connection setup (TCP, TLS, AUTH) costs several round trips and a handshake; a relay that sends a
burst pays it once per connection instead of once per message. The pool is deliberately simple:
connections are never shared between concurrent sends, an idle one is probed with RSET before reuse,
and any error discards the connection rather than trying to repair it.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from mailgate.connectors._smtp import (
    PathFailure,
    SessionOptions,
    address_problem,
    client_tls_context,
    open_session,
    quit_quietly,
    transact,
    valid_helo_name,
)
from mailgate.connectors.base import Sender
from mailgate.connectors.oauth2 import TokenManager, endpoint_problem
from mailgate.connectors.smtp_client import SmtpClient
from mailgate.domain.delivery import DeliveryOutcome, Failed
from mailgate.domain.errors import InvalidInput


@dataclass(frozen=True)
class SmtpRelayConfig:
    """``tls="starttls"`` *requires* STARTTLS: a relay that stops offering it (or a man in the middle
    stripping it) must not get credentials and mail in clear text, so that is a connector fault.

    ``auth="xoauth2"`` logs in as ``username`` with AUTH XOAUTH2 (Gmail, Exchange Online), using an
    access token from ``token_url``: with ``refresh_token``, the refresh-token grant (a user's consent;
    ``client_secret`` unless the client is public); without it, the client-credentials grant with
    ``client_secret`` and ``scope`` (Exchange Online: https://outlook.office365.com/.default).
    """

    host: str
    port: int
    tls: Literal["none", "starttls", "implicit"] = "starttls"
    username: str | None = None
    password: str | None = None
    timeout: float = 30
    max_connections: int = 4
    max_messages_per_connection: int = 100
    idle_timeout: float = 30
    validate_certs: bool = True
    ca_file: str | None = None
    helo_name: str | None = None
    auth: Literal["password", "xoauth2"] = "password"
    token_url: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    refresh_token: str | None = None
    scope: str | None = None

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> InvalidInput:
            return InvalidInput(f"{name}: {why}", field=name)

        if not self.host or any(c.isspace() for c in self.host):
            raise bad("host", "must be a host name or address")
        if not 1 <= self.port <= 65535:
            raise bad("port", "must be between 1 and 65535")
        if self.tls not in ("none", "starttls", "implicit"):
            raise bad("tls", "must be one of none, starttls, implicit")
        if self.password is not None and self.username is None:
            raise bad("username", "a password needs a username")
        for name in ("timeout", "idle_timeout"):
            if not getattr(self, name) > 0:
                raise bad(name, "must be positive")
        for name in ("max_connections", "max_messages_per_connection"):
            if getattr(self, name) < 1:
                raise bad(name, "must be at least 1")
        if self.helo_name is not None and not valid_helo_name(self.helo_name):
            raise bad("helo_name", "must be a host name without spaces or control characters")
        self._check_oauth(bad)

    def _check_oauth(self, bad: Callable[[str, str], InvalidInput]) -> None:
        oauth_fields = ("token_url", "client_id", "client_secret", "refresh_token", "scope")
        if self.auth == "password":
            for name in oauth_fields:
                if getattr(self, name) is not None:
                    raise bad(name, "is used only with auth=xoauth2")
            return
        if self.auth != "xoauth2":
            raise bad("auth", "must be one of password, xoauth2")
        if self.username is None:
            raise bad("username", "auth=xoauth2 needs the mailbox to log in as")
        if self.password is not None:
            raise bad("password", "auth=xoauth2 logs in with a token, not a password")
        for name in ("token_url", "client_id"):
            if not getattr(self, name):
                raise bad(name, "is required with auth=xoauth2")
        problem = endpoint_problem(self.token_url or "")
        if problem:
            raise bad("token_url", problem)
        if self.refresh_token is None and not (self.client_secret and self.scope):
            raise bad("refresh_token", "auth=xoauth2 needs a refresh_token, or client_secret and scope")


@dataclass(eq=False)
class _Connection:
    client: SmtpClient
    generation: int
    transactions: int = 0
    idle_since: float = 0.0


class SmtpRelaySender(Sender):
    """At most ``max_connections`` sends run at once, each on a connection of its own.

    Outcomes: see ``mailgate.connectors._smtp.transact``; a message whose envelope has non-ASCII
    addresses and meets a relay without SMTPUTF8 is bounced (553 5.6.7) for those addresses, as
    Postfix does: retrying the same relay cannot help, and the reply says why.
    """

    def __init__(self, config: SmtpRelayConfig, *, name: str = "smtp_relay") -> None:
        self.name = name
        self.config = config
        tls_context = None
        if config.tls != "none":
            try:
                tls_context = client_tls_context(validate_certs=config.validate_certs, ca_file=config.ca_file)
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                raise InvalidInput(f"ca_file: cannot load {config.ca_file!r}: {exc}", field="ca_file") from None
        self._tls_context = tls_context
        self._helo_name = config.helo_name
        self._slots = asyncio.Semaphore(config.max_connections)
        self._idle: list[_Connection] = []
        self._generation = 0
        self._busy = 0
        self._reaper: asyncio.Task[None] | None = None
        self._tokens = _token_manager(config)

    @property
    def open_connections(self) -> int:
        """Connections held right now, in use or idle (for metrics and tests)."""
        return self._busy + sum(1 for c in self._idle if c.client.is_connected)

    async def send(self, mail_from: str, recipients: Sequence[str], message: bytes) -> dict[str, DeliveryOutcome]:
        wanted = list(dict.fromkeys(recipients))
        if not wanted:
            return {}
        problem = address_problem(mail_from, sender=True)
        if problem:
            return {r: Failed(f"sender {problem}") for r in wanted}
        outcomes: dict[str, DeliveryOutcome] = {}
        for rcpt in wanted:
            problem = address_problem(rcpt)
            if problem:
                outcomes[rcpt] = Failed(problem)
        live = [r for r in wanted if r not in outcomes]
        if live:
            async with self._slots:
                self._busy += 1
                try:
                    outcomes.update(await self._deliver(mail_from, live, message))
                finally:
                    self._busy -= 1
        return {r: outcomes[r] for r in wanted}

    async def _deliver(self, mail_from: str, recipients: list[str], message: bytes) -> dict[str, DeliveryOutcome]:
        conn = self._take_idle()
        for attempt in range(2):
            if conn is None:
                try:
                    conn = await self._open()
                except PathFailure as failure:
                    return failure.outcomes(recipients)
            try:
                outcomes = await transact(
                    conn.client,
                    mail_from,
                    recipients,
                    message,
                    reset=conn.transactions > 0,
                    where=self._where,
                    reply_timeout=self.config.timeout,
                )
            except PathFailure as failure:
                conn.client.close()
                if failure.retry_safe and attempt == 0:
                    conn = None  # the pooled connection was dead: once more, on a fresh one
                    continue
                return failure.outcomes(recipients)
            except BaseException:
                conn.client.close()
                raise
            conn.transactions += 1
            await self._release(conn)
            return outcomes
        raise AssertionError("unreachable: the second attempt always returns")

    @property
    def _where(self) -> str:
        host, port = self.config.host, self.config.port
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    async def _open(self) -> _Connection:
        if self._helo_name is None:
            # getfqdn may block on a resolver; once per sender, off the loop
            fqdn = await asyncio.to_thread(socket.getfqdn)
            self._helo_name = fqdn if valid_helo_name(fqdn) else "localhost"
        cfg = self.config
        client = await open_session(
            SessionOptions(
                host=cfg.host,
                port=cfg.port,
                tls=cfg.tls,
                tls_context=self._tls_context,
                timeout=cfg.timeout,
                helo_name=self._helo_name,
                username=cfg.username,
                password=cfg.password,
                oauth=self._tokens,
            )
        )
        return _Connection(client, self._generation)

    def _take_idle(self) -> _Connection | None:
        """The most recently used live connection: LIFO lets the rest of a burst's connections idle out."""
        while self._idle:
            conn = self._idle.pop()
            if conn.client.is_connected:  # the server may have closed it while it sat idle
                return conn
            conn.client.close()
        return None

    async def _release(self, conn: _Connection) -> None:
        if (
            conn.generation != self._generation
            or conn.transactions >= self.config.max_messages_per_connection
            or not conn.client.is_connected
        ):
            await self._quit(conn)
            return
        conn.idle_since = asyncio.get_running_loop().time()
        self._idle.append(conn)
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.create_task(self._reap(), name=f"{self.name}: close idle SMTP connections")

    async def _reap(self) -> None:
        loop = asyncio.get_running_loop()
        limit = self.config.idle_timeout
        while self._idle:
            oldest = min(c.idle_since for c in self._idle)
            await asyncio.sleep(max(0.0, oldest + limit - loop.time()))
            now = loop.time()
            expired = [c for c in self._idle if now - c.idle_since >= limit]
            self._idle = [c for c in self._idle if now - c.idle_since < limit]
            await asyncio.gather(*(self._quit(c) for c in expired))

    async def _quit(self, conn: _Connection) -> None:
        await quit_quietly(conn.client, self.config.timeout)

    async def close(self) -> None:
        """Closes idle connections now and busy ones when their send finishes. The sender stays usable:
        a later send opens new connections (the router may close a sender it still holds)."""
        self._generation += 1
        idle, self._idle = self._idle, []
        reaper, self._reaper = self._reaper, None
        if reaper is not None and not reaper.done():
            reaper.cancel()
            await asyncio.wait([reaper])
        await asyncio.gather(*(self._quit(c) for c in idle))
        if self._tokens is not None:
            await self._tokens.aclose()


def _token_manager(config: SmtpRelayConfig) -> TokenManager | None:
    if config.auth != "xoauth2":
        return None
    assert config.token_url is not None and config.client_id is not None
    if config.refresh_token is not None:
        return TokenManager.refresh_token(
            config.token_url,
            client_id=config.client_id,
            client_secret=config.client_secret,
            refresh_token=config.refresh_token,
            scope=config.scope,
            timeout=config.timeout,
        )
    assert config.client_secret is not None and config.scope is not None
    return TokenManager.client_credentials(
        config.token_url,
        client_id=config.client_id,
        client_secret=config.client_secret,
        scope=config.scope,
        timeout=config.timeout,
    )
