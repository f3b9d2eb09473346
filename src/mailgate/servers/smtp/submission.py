"""SMTP submission (RFC 6409): applications that only speak SMTP hand mail to the same pipeline as REST.

Each hook makes one service call and turns its outcome into a reply. ``250`` after DATA is sent only
once the message and its deliveries are committed; if the database is gone the client gets ``451`` and
keeps the message. AUTH is required before MAIL, and is offered only on an encrypted connection unless
plaintext AUTH is configured.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from mailgate.domain.address import parse_address
from mailgate.domain.errors import (
    AuthenticationFailed,
    Conflict,
    InvalidInput,
    MailgateError,
    PermissionDenied,
    Unavailable,
)
from mailgate.domain.tenancy import Principal
from mailgate.observability.logging import get_logger
from mailgate.observability.metrics import SUBMISSIONS
from mailgate.servers.smtp._common import ListenerHandler, ListenerSMTP, serve

log = get_logger("mailgate.submission")

MAX_AUTH_FAILURES = 3
SendRaw = Callable[..., Awaitable[dict[str, Any]]]
Authenticate = Callable[[str, str], Awaitable[Principal]]

# aiosmtpd warns on every successful AUTH about an attribute it sets itself.
warnings.filterwarnings("ignore", message=".*login_data is deprecated.*")


@dataclass(frozen=True, slots=True)
class SubmissionOptions:
    hostname: str | None
    max_message_size: int
    max_recipients: int
    allow_plaintext_auth: bool
    timeout: float = 300.0


class SubmissionHandler(ListenerHandler):
    """The aiosmtpd handler: one per listener, shared by its connections."""

    def __init__(self, send_raw: SendRaw, authenticate: Authenticate, options: SubmissionOptions) -> None:
        self._send_raw = send_raw
        self._authenticate = authenticate
        self.options = options

    async def verify(self, server: SubmissionSMTP, captured: AuthResult) -> AuthResult:
        if not captured.success or not isinstance(captured.auth_data, LoginPassword):
            return captured
        login, password = captured.auth_data
        try:
            principal = await self._authenticate(login.decode("utf-8"), password.decode("utf-8"))
        except (AuthenticationFailed, UnicodeDecodeError):
            server.auth_failures += 1
            log.warning("submission auth failed", client_ip=server.client_ip, failures=server.auth_failures)
            SUBMISSIONS.labels("auth_failed").inc()
            if server.auth_failures >= MAX_AUTH_FAILURES:
                await server.push("421 4.7.0 Too many failed authentications, closing connection")
                if server.transport is not None:
                    server.transport.close()
                return AuthResult(success=False, handled=True)
            return AuthResult(success=False, handled=False, message="535 5.7.8 Authentication credentials invalid")
        except Unavailable:
            return AuthResult(success=False, handled=False, message="454 4.7.0 Temporary authentication failure")
        return AuthResult(success=True, auth_data=principal)

    def refuse_sender(self, address: str) -> str | None:
        return "553 5.1.7 Sender address is not valid" if address and not _valid(address) else None

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if not _valid(address):
            return "553 5.1.3 Recipient address is not valid"
        if len(envelope.rcpt_tos) >= self.options.max_recipients:
            return "452 4.5.3 Too many recipients"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Recipient OK"

    async def handle_DATA(self, server: ListenerSMTP, session: Session, envelope: Envelope) -> str:
        principal = session.auth_data
        if not isinstance(principal, Principal):
            return "530 5.7.0 Authentication required"
        content = envelope.original_content or b""
        try:
            accepted = await self._send_raw(
                principal,
                content,
                mail_from=envelope.mail_from or None,
                recipients=list(envelope.rcpt_tos),
                source="smtp",
            )
        except Unavailable:
            SUBMISSIONS.labels("unavailable").inc()
            log.error("submission not stored: database unavailable", client_ip=server.client_ip)
            return "451 4.3.0 Message not stored, try again later"
        except InvalidInput as exc:
            SUBMISSIONS.labels("refused").inc()
            return f"554 5.6.0 {_one_line(exc.detail)}"
        except (PermissionDenied, Conflict) as exc:
            SUBMISSIONS.labels("refused").inc()
            return f"550 5.7.1 {_one_line(exc.detail)}"
        except MailgateError as exc:
            SUBMISSIONS.labels("error").inc()
            log.error("submission failed", error=exc.detail, client_ip=server.client_ip)
            return "451 4.3.0 Message not stored, try again later"
        SUBMISSIONS.labels("accepted").inc()
        log.info(
            "submission accepted", message_id=accepted["id"], recipients=len(envelope.rcpt_tos), actor=principal.actor
        )
        return f"250 2.0.0 Ok: queued as {accepted['id']}"


class SubmissionSMTP(ListenerSMTP):
    """aiosmtpd's server with asynchronous credential checks: its ``authenticator`` hook is synchronous,
    and an argon2 check or a database read must not stall every other connection."""

    listener = "submission"
    event_handler: SubmissionHandler

    def __init__(self, handler: SubmissionHandler, *, implicit_tls: bool, **kwargs: Any) -> None:
        super().__init__(handler, authenticator=_capture, auth_required=True, **kwargs)
        if implicit_tls:
            self._auth_require_tls = False  # the whole connection is TLS already
        self.auth_failures = 0

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self.event_handler.verify(self, await super().auth_PLAIN(_, args))

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self.event_handler.verify(self, await super().auth_LOGIN(_, args))


def _capture(server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any) -> AuthResult:
    """Hand the decoded credentials to ``verify`` unchecked; ``verify`` decides."""
    return AuthResult(success=True, handled=False, auth_data=auth_data)


async def start_submission(
    handler: SubmissionHandler,
    sock: socket.socket,
    *,
    tls_context: ssl.SSLContext,
    implicit_tls: bool,
) -> asyncio.AbstractServer:
    """Serve on an already bound socket: STARTTLS on a plain listener, TLS from the first byte on an
    implicit one (port 465 style). ``timeout`` bounds both the idle time and the DATA phase."""
    options = handler.options

    def factory() -> SubmissionSMTP:
        return SubmissionSMTP(
            handler,
            implicit_tls=implicit_tls,
            hostname=options.hostname,
            max_message_size=options.max_message_size,
            command_timeout=options.timeout,
            data_timeout=options.timeout,
            limits=None,
            tls_context=None if implicit_tls else tls_context,
            auth_require_tls=not options.allow_plaintext_auth,
        )

    return await serve(factory, sock, tls=tls_context if implicit_tls else None)


def _valid(address: str) -> bool:
    try:
        parse_address(address)
    except ValueError:
        return False
    return True


def _one_line(text: str) -> str:
    return " ".join(text.split())[:400]
