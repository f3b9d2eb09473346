"""A fault-injecting SMTP server for tests and benchmarks: a real aiosmtpd server on a real socket,
in the caller's event loop, that can accept, refuse, stall or drop on command.

Connectors are only trustworthy if every way a peer misbehaves has been seen over a socket; fakes at
the Python level skip exactly the parts that break (timeouts, half-closed connections, TLS). Usage::

    sink = SmtpSink(mode="accept")
    await sink.start()                     # binds 127.0.0.1 on a free port: sink.port
    ...                                    # point a connector at it
    sink.mode = "tempfail_rcpt"            # change behaviour between (or during) sessions
    sink.rcpt_replies["gone@example.net"] = "550 5.1.1 No such user"
    await sink.wait_for(3, timeout=5)      # until three messages were accepted
    await sink.stop()                      # closes live connections too; start() again reuses the port

Modes (``SmtpSink.mode``, read at every command, so a change applies to live connections):

==================  ====================================================================
``accept``          accept everything (the default)
``tempfail_rcpt``   every RCPT gets ``451 4.3.0``
``permfail_rcpt``   every RCPT gets ``550 5.1.1``
``tempfail_data``   the message gets ``451 4.3.0`` after its content
``permfail_data``   the message gets ``554 5.7.1`` after its content
``hang``            accept the TCP connection, never send the greeting
``hang_mail``       greet and answer EHLO, then never answer MAIL
``hang_data``       take the whole message, never answer the final dot
``drop``            send the greeting, then close the connection
``drop_data``       close the connection when DATA arrives
``drop_reused``     serve one transaction per connection; close it at the next RSET/MAIL
``busy``            greet with ``421 4.3.2`` and close (a server shedding load)
==================  ====================================================================

``rcpt_replies`` (address → full reply line) overrides the mode per recipient; a ``421`` reply
there also closes the connection, as a real server does.

``pipelining=True`` offers PIPELINING (RFC 2920; aiosmtpd reads commands in order either way), and
``commands_waiting`` records, at every MAIL, how many complete commands the client had already sent
after it: 0 from a client that waits for each reply, the RCPTs and DATA from one that pipelines.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, AnyStr, Literal

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session, TLSSetupException

log = logging.getLogger(__name__)

SinkMode = Literal[
    "accept",
    "tempfail_rcpt",
    "permfail_rcpt",
    "tempfail_data",
    "permfail_data",
    "hang",
    "hang_mail",
    "hang_data",
    "drop",
    "drop_data",
    "drop_reused",
    "busy",
]

TEMPFAIL = "451 4.3.0 Temporary failure, try again later"
NO_SUCH_USER = "550 5.1.1 No such user here"
REJECTED = "554 5.7.1 Message rejected"
BUSY = "421 4.3.2 Service not available, closing transmission channel"


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    """One accepted message. ``mail_from`` is "" for the null sender (aiosmtpd itself records "<>")."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    peer: tuple[str, int]
    tls: bool
    mail_options: list[str] = field(default_factory=list)
    username: str | None = None


class _LoginDataNoise(logging.Filter):
    """aiosmtpd 1.4 logs a deprecation warning from its own code on every successful AUTH."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "login_data is deprecated" not in record.getMessage()


_NOISE_FILTER = _LoginDataNoise()


async def _forever() -> None:
    """Stall until the connection is lost: aiosmtpd cancels the session task then."""
    await asyncio.get_running_loop().create_future()


class _SinkSMTP(SMTP):
    def __init__(self, sink: SmtpSink, handler: _Handler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.sink = sink
        self.transactions = 0
        self._registered = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # called again after STARTTLS, with the TLS transport
        if not self._registered:
            self._registered = True
            self.sink._connected(self)

    def connection_lost(self, error: Exception | None) -> None:
        self.sink._live.discard(self)
        super().connection_lost(error)

    @property
    def tls(self) -> bool:
        return self.transport is not None and self.transport.get_extra_info("sslcontext") is not None

    def buffered_commands(self) -> int:
        """Complete command lines received but not read yet (aiosmtpd's reader is a StreamReader)."""
        return bytes(getattr(self._reader, "_buffer", b"")).count(b"\r\n")

    def abort(self) -> None:
        if isinstance(self.transport, asyncio.Transport):
            self.transport.abort()

    async def drop(self) -> None:
        if self.transport is not None:
            self.transport.close()
        await _forever()

    async def _handle_client(self) -> None:
        mode = self.sink.mode
        if mode == "hang":
            await _forever()
        elif mode == "busy":
            await self.push(BUSY)  # push closes after a 421
        elif mode == "drop":
            await self.push(f"220 {self.hostname} ESMTP")
            await self.drop()
        else:
            await super()._handle_client()

    async def push(self, status: AnyStr) -> None:
        line = status if isinstance(status, bytes) else status.encode()
        if self.sink.delay and line[3:4] != b"-":  # once per reply, not per line of a multi-line one
            await asyncio.sleep(self.sink.delay)
        await super().push(status)
        if line.startswith(b"421") and self.transport is not None:
            self.transport.close()

    async def smtp_DATA(self, arg: str) -> None:
        if self.sink.mode == "drop_data":
            await self.drop()
        await super().smtp_DATA(arg)


class _Handler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_exception(self, error: Exception) -> str:
        """A client refusing our certificate is what TLS tests provoke on purpose: no traceback for it."""
        if not isinstance(error, TLSSetupException):
            log.exception("SMTP sink session failed")
        return f"500 Error: ({error.__class__.__name__}) {error}"

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname  # the 5-argument hook takes this over from aiosmtpd
        if self.sink.auth is None:  # aiosmtpd offers AUTH (always failing) even with no authenticator
            responses = [r for r in responses if not r[4:].upper().startswith("AUTH")]
        if self.sink.pipelining:
            responses.insert(1, "250-PIPELINING")
        return responses

    async def handle_RSET(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(server, _SinkSMTP)
        if self.sink.mode == "drop_reused" and server.transactions:
            await server.drop()
        return "250 2.0.0 OK"

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        assert isinstance(server, _SinkSMTP)
        mode = self.sink.mode
        self.sink.commands_waiting.append(server.buffered_commands())
        if self.sink.auth is not None and not session.authenticated:
            return "530 5.7.0 Authentication required"
        if mode == "drop_reused" and server.transactions:
            await server.drop()
        if mode == "hang_mail":
            await _forever()
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        reply = self.sink._reply_for(address)
        if reply is None:
            if self.sink.mode == "tempfail_rcpt":
                reply = TEMPFAIL
            elif self.sink.mode == "permfail_rcpt":
                reply = NO_SUCH_USER
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(server, _SinkSMTP)
        server.transactions += 1
        mode = self.sink.mode
        if mode == "hang_data":
            await _forever()
        if mode == "tempfail_data":
            return TEMPFAIL
        if mode == "permfail_data":
            return REJECTED
        peer = session.peer
        mail_from = envelope.mail_from or ""
        message = ReceivedMessage(
            mail_from="" if mail_from == "<>" else mail_from,
            rcpt_tos=list(envelope.rcpt_tos),
            data=envelope.original_content or b"",
            peer=(str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else (str(peer), 0),
            tls=server.tls,
            mail_options=list(envelope.mail_options),
            username=session.auth_data if isinstance(session.auth_data, str) else None,
        )
        return self.sink._received(message)


class SmtpSink:
    """A real SMTP server on loopback whose behaviour tests set per connection, command and recipient.

    ``starttls`` offers STARTTLS with that server context; ``implicit_tls`` wraps the whole connection
    (port-465 style). ``auth=(username, password)`` offers AUTH PLAIN/LOGIN (only after STARTTLS when
    STARTTLS is offered, in clear text otherwise) and requires it before MAIL. ``delay`` stalls every
    reply (the greeting included; a multi-line reply once).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        mode: SinkMode = "accept",
        starttls: ssl.SSLContext | None = None,
        implicit_tls: ssl.SSLContext | None = None,
        auth: tuple[str, str] | None = None,
        smtputf8: bool = True,
        delay: float = 0.0,
        rcpt_replies: Mapping[str, str] | None = None,
        hostname: str = "sink.invalid",
        data_size_limit: int | None = 32 * 1024 * 1024,
        idle_timeout: float = 300.0,
        pipelining: bool = False,
    ) -> None:
        if starttls is not None and implicit_tls is not None:
            raise ValueError("choose STARTTLS or implicit TLS, not both")
        self.host = host
        self.port = port
        self.mode: SinkMode = mode
        self.auth = auth
        self.smtputf8 = smtputf8
        self.delay = delay
        self.rcpt_replies: dict[str, str] = dict(rcpt_replies or {})
        self.hostname = hostname
        self.data_size_limit = data_size_limit
        self.idle_timeout = idle_timeout
        self.pipelining = pipelining
        self.commands_waiting: list[int] = []
        self.messages: list[ReceivedMessage] = []
        self.connections = 0
        """Connections accepted so far (kept across stop/start); ``reset()`` zeroes it."""
        self.peak_connections = 0
        """The most connections open at the same time."""
        self._starttls = starttls
        self._implicit_tls = implicit_tls
        self._handler = _Handler(self)
        self._live: set[_SinkSMTP] = set()
        self._server: asyncio.Server | None = None
        self._arrived = asyncio.Event()

    @property
    def active_connections(self) -> int:
        return len(self._live)

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        """Listen; after a stop(), on the same port as before."""
        if self._server is not None:
            raise RuntimeError("the sink is already running")
        logging.getLogger("mail.log").addFilter(_NOISE_FILTER)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, self.host, self.port, ssl=self._implicit_tls)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and cut every live connection, hung ones included."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        await self.close_connections()
        await server.wait_closed()

    async def close_connections(self) -> None:
        """Cut every live connection but keep listening, like a server restarting between sessions."""
        live = list(self._live)
        for proto in live:
            proto.abort()
        sessions = [p._handler_coroutine for p in live if p._handler_coroutine is not None]
        if sessions:
            await asyncio.wait(sessions, timeout=2)

    def reset(self) -> None:
        self.messages.clear()
        self.commands_waiting.clear()
        self.connections = 0
        self.peak_connections = len(self._live)

    async def wait_for(self, n: int, timeout: float = 10.0) -> list[ReceivedMessage]:  # noqa: ASYNC109 (a test helper's bound)
        """Wait until at least ``n`` messages were accepted; raises TimeoutError saying how many came."""
        try:
            async with asyncio.timeout(timeout):
                while len(self.messages) < n:
                    self._arrived.clear()
                    await self._arrived.wait()
        except TimeoutError:
            raise TimeoutError(f"{len(self.messages)} of {n} messages arrived within {timeout:g}s") from None
        return list(self.messages)

    async def __aenter__(self) -> SmtpSink:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _protocol(self) -> _SinkSMTP:
        return _SinkSMTP(
            self,
            self._handler,
            hostname=self.hostname,
            tls_context=self._starttls,
            enable_SMTPUTF8=self.smtputf8,
            decode_data=False,
            data_size_limit=self.data_size_limit,
            timeout=self.idle_timeout,
            # AUTH in clear text only when there is no TLS to wait for; implicit TLS counts as TLS,
            # but aiosmtpd only knows about STARTTLS, so it must not insist there.
            auth_require_tls=self._starttls is not None,
            authenticator=self._authenticate if self.auth is not None else None,
        )

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if self.auth is not None and isinstance(auth_data, LoginPassword):
            user, password = (s.encode() for s in self.auth)
            if hmac.compare_digest(auth_data.login, user) & hmac.compare_digest(auth_data.password, password):
                return AuthResult(success=True, auth_data=self.auth[0])
        # handled=False makes aiosmtpd send 535; with the default (True) it sends nothing and the
        # client waits for its timeout
        return AuthResult(success=False, handled=False)

    def _connected(self, proto: _SinkSMTP) -> None:
        self._live.add(proto)
        self.connections += 1
        self.peak_connections = max(self.peak_connections, len(self._live))

    def _reply_for(self, address: str) -> str | None:
        wanted = address.lower()
        for rcpt, reply in self.rcpt_replies.items():
            if rcpt.lower() == wanted:
                return reply
        return None

    def _received(self, message: ReceivedMessage) -> str:
        self.messages.append(message)
        self._arrived.set()
        return f"250 2.0.0 OK queued as {len(self.messages)}"
