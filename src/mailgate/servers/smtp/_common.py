"""What every mailgate SMTP listener adds to aiosmtpd's server, whatever it serves (submission, MX).

- **Connection limits**: a listener refuses a connection over its per-address or overall limit with a
  ``421`` before the greeting, so one client cannot hold every slot.
- **Timeouts**: aiosmtpd drops an idle connection without a word; ours says ``421 4.4.2`` first (the
  client then knows to retry rather than suspect the network), and the DATA phase, from the ``354`` to
  the final reply, has a deadline of its own.
- **Replies**: PIPELINING and ENHANCEDSTATUSCODES are offered (RFC 2920, RFC 2034). aiosmtpd answers
  buffered commands in order, which is all PIPELINING asks of a server; its own replies carry no
  enhanced code, so one is added to each on its way out. Control characters a client got echoed back
  (``500 Error: command "X\\r" not recognized``) are masked so that every reply stays one printable line.
- **Errors**: a handler that raises gets a logged ``451 4.3.0``, not aiosmtpd's ``500`` with the
  exception's text in it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, AnyStr, ClassVar, TypeVar, cast

from aiosmtpd.smtp import SMTP, Envelope, Session, TLSSetupException, syntax

from mailgate.observability.logging import get_logger
from mailgate.observability.metrics import SMTP_CONNECTIONS

log = get_logger("mailgate.smtp")

T = TypeVar("T")
LOCAL_ERROR = "451 4.3.0 Requested action aborted: local error in processing"

ENHANCED_CODE = re.compile(r"[245]\.\d{1,3}\.\d{1,3}(?: |$)")  # RFC 3463, at the start of a reply's text
# RFC 3463 codes for the replies aiosmtpd writes itself; any other code gets "<class>.0.0".
_ENHANCED_FOR = {
    500: "5.5.2",  # syntax error, command unrecognised, line too long
    501: "5.5.4",  # syntax error in parameters
    502: "5.5.1",  # command not implemented
    503: "5.5.1",  # bad sequence of commands
    504: "5.5.4",  # parameter not implemented
    530: "5.7.0",  # STARTTLS first
    552: "5.3.4",  # message too big
    553: "5.1.3",  # malformed address
    554: "5.7.0",  # refused for lack of security
    555: "5.5.4",  # MAIL/RCPT parameter not recognised
}
_END_OF_DATA = b"\r\n.\r\n"
_DOT_LINE = b".\r\n"
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")  # controls, and the surrogates of undecodable bytes


class ConnectionLimits:
    """The live connections of one listener, overall and per client address. One instance is shared
    by every connection of a listener (they all run on one event loop, so plain counts suffice)."""

    def __init__(self, *, per_ip: int, total: int) -> None:
        self.per_ip = per_ip
        self.total = total
        self._live: Counter[str] = Counter()
        self._count = 0

    def admit(self, ip: str) -> str | None:
        """Take a slot for ``ip``, or say which limit is full (a metric label)."""
        if self._count >= self.total:
            return "limit_total"
        if self._live[ip] >= self.per_ip:
            return "limit_per_ip"
        self._live[ip] += 1
        self._count += 1
        return None

    def release(self, ip: str) -> None:
        self._count -= 1
        self._live[ip] -= 1
        if self._live[ip] <= 0:
            del self._live[ip]


def client_ip(peername: Any) -> str:
    """The peer's address as a string; an IPv4 client of a dual-stack socket (``::ffff:192.0.2.1``) is
    named by its IPv4 address, so that its limit and its SPF check see the same client either way."""
    host = str(peername[0] if isinstance(peername, tuple) else peername)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def printable(text: str) -> bool:
    """No control characters and no undecodable bytes (aiosmtpd hands those over as surrogates)."""
    return _UNPRINTABLE.search(text) is None


def with_enhanced_code(line: str, hostname: str) -> str:
    """``line`` with an RFC 3463 code after its reply code, when it lacks one and RFC 2034 asks for it:
    not on the greeting or STARTTLS's ``220``, nor on 1xx/3xx, nor on the lines answering EHLO or HELO
    (the ``250-`` extension lines, ``250 HELP`` closing them, and HELO's ``250 <hostname>``)."""
    code, separator, text = line[:3], line[3:4], line[4:]
    if not code.isdigit() or code[0] not in "245" or code == "220" or separator == "-":
        return line
    if ENHANCED_CODE.match(text) or line in ("250 HELP", f"250 {hostname}"):
        return line
    enhanced = _ENHANCED_FOR.get(int(code), f"{code[0]}.0.0")
    return f"{code} {enhanced} {text}" if text else f"{code} {enhanced}"


# ``<local@domain>`` with a dot-atom local part and an LDH domain, then the parameters (RFC 5321 4.1.2);
# anything else (quoted local parts, literals, comments, no brackets) goes to the stdlib parser
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_ADDRESS = re.compile(rf"<({_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>[ \t]*([^(]*)\Z", re.DOTALL)


class ListenerSMTP(SMTP):
    """aiosmtpd's server with the additions every mailgate listener needs (see the module docstring).

    ``client_ip`` is the peer's address, for handlers; ``listener`` names the listener in metrics."""

    listener: ClassVar[str]

    def __init__(
        self,
        handler: Any,
        *,
        hostname: str | None,
        max_message_size: int,
        command_timeout: float,
        data_timeout: float,
        limits: ConnectionLimits | None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            handler,
            hostname=hostname,
            data_size_limit=max_message_size,
            timeout=command_timeout,
            enable_SMTPUTF8=True,
            ident="mailgate",
            loop=asyncio.get_running_loop(),
            **kwargs,
        )
        self.data_timeout = data_timeout
        self.limits = limits
        self.client_ip = ""
        self._admitted = False
        self._data_deadline: float | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is None:  # the TCP connection; after STARTTLS this runs again with the TLS one
            self.client_ip = client_ip(transport.get_extra_info("peername"))
            refusal = self.limits.admit(self.client_ip) if self.limits is not None else None
            SMTP_CONNECTIONS.labels(self.listener, refusal or "accepted").inc()
            if refusal is not None:
                # uvloop's transports are not asyncio.Transport subclasses, only alike
                writer = cast(asyncio.WriteTransport, transport)
                writer.write(f"421 4.7.0 {self.hostname} Error: too many connections\r\n".encode())
                writer.close()
                return  # aiosmtpd never learns of it: no session, no timer, nothing to release
            self._admitted = True
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if not self._admitted:
            return
        self._admitted = False
        if self.limits is not None:
            self.limits.release(self.client_ip)
        super().connection_lost(error)

    def _timeout_cb(self) -> None:
        """Say why, then close as aiosmtpd does (connection_lost cleans up, TLS included)."""
        if self.transport is not None and not self.transport.is_closing():
            self._writer.write(f"421 4.4.2 {self.hostname} Error: timeout exceeded\r\n".encode())
            self.transport.close()

    async def push(self, status: AnyStr) -> None:
        if isinstance(status, str):
            await super().push(with_enhanced_code(_UNPRINTABLE.sub("?", status), self.hostname))
        else:
            await super().push(status)

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's address parse, where an address the stdlib parser trips over (``<a@[192.0.2.1>``
        raises AttributeError inside it) is malformed, ``553``, rather than a local error, ``451``.

        The common ``<dot-atom@domain>`` is read by a regular expression first, giving what the stdlib
        parser would: that parser was a twelfth of an MX message's cost, on every MAIL and RCPT."""
        plain = _PLAIN_ADDRESS.match(arg)
        if plain is not None:
            local = plain.group(1).rpartition("@")[0]
            if self.local_part_limit and len(local) > self.local_part_limit:
                return None, None
            return plain.group(1), plain.group(2)
        try:
            return super()._getaddr(arg)
        except Exception:  # any failure of a parser we do not own, on input anyone can send
            return None, None

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """The whole DATA phase runs on ``data_timeout``; the idle timer is back once it is answered."""
        self._data_deadline = self.loop.time() + self.data_timeout
        self._reset_timeout(self.data_timeout)
        try:
            await self._data(arg)
        finally:
            self._data_deadline = None
        if self.transport is not None:
            self._reset_timeout()

    async def _data(self, arg: str) -> None:
        """aiosmtpd's DATA, with the message read in chunks up to the terminating ``CRLF.CRLF`` rather
        than line by line: a coroutine step per line cost more than everything else the listener does
        for a 50 KB message. Replies, limits and their order are aiosmtpd's: ``552`` for too much data
        and ``500`` for a line over ``line_length_limit``, each only once the whole DATA is read."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            content, failure = await self._read_data()
        except asyncio.CancelledError:  # the connection went away during DATA
            self._writer.close()
            raise
        if failure is not None:
            await self.push(failure)
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            return
        self.envelope.content = self.envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push(status)

    async def _read_data(self) -> tuple[bytes, str | None]:
        """The message with its dots unstuffed (RFC 5321 4.5.2), or the reply refusing it.

        Reads run up to each ``.CRLF``; the data has ended when that dot began a line, that is when
        what was read ends with ``CRLF.CRLF``, counting the CRLF of the DATA command line before it."""
        limit = self.data_size_limit
        chunks: list[bytes] = []
        size = 0
        tail = b"\r\n"
        while tail != _END_OF_DATA:
            chunk = await self._data_chunk(_DOT_LINE)
            size += len(chunk)
            if not limit or size - len(_DOT_LINE) <= limit:
                chunks.append(chunk)  # past the limit the rest is read to its end and dropped
            tail = (tail + chunk[-len(_END_OF_DATA) :])[-len(_END_OF_DATA) :]
        if limit and size - len(_DOT_LINE) > limit:  # aiosmtpd's count: every line but the lone dot
            return b"", "552 Error: Too much mail data"
        content = b"".join(chunks)[: -len(_DOT_LINE)]
        longest = self.line_length_limit - 2  # CRLF excluded
        if len(content) > longest and max(map(len, content.split(b"\r\n"))) > longest:
            return b"", "500 Line too long (see RFC5321 4.5.3.1.6)"
        if content.startswith(b"."):
            content = content[1:]
        return content.replace(b"\r\n.", b"\r\n"), None

    async def _data_chunk(self, until: bytes) -> bytes:
        """Up to and including ``until``, or as much as the stream's buffer holds short of it (the
        reader's limit bounds one read, not the message)."""
        try:
            return await self._reader.readuntil(until)
        except asyncio.LimitOverrunError as exc:
            return await self._reader.readexactly(exc.consumed)

    async def within_data_deadline(self, call: Awaitable[T]) -> T:
        """Await a handler's ``call`` for what is left of the DATA phase, raising TimeoutError after. The
        idle timer is stopped meanwhile, so that the handler, not the timer, decides the reply."""
        assert self._data_deadline is not None, "only while DATA is being answered"
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()
        async with asyncio.timeout_at(self._data_deadline):  # no task of its own, unlike wait_for
            return await call


class ListenerHandler:
    """The hooks every mailgate listener's handler shares: the EHLO reply, HELO, MAIL, and unexpected errors."""

    async def handle_EHLO(
        self, server: ListenerSMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        if not printable(hostname):
            return ["501 5.5.4 Syntax: EHLO hostname"]
        session.host_name = hostname  # what aiosmtpd does itself when no hook is set
        # aiosmtpd writes "250-AUTH " even when it has no mechanism left to offer
        kept = [line for line in responses[:-1] if line.rstrip() != "250-AUTH"]
        return [*kept, "250-PIPELINING", "250-ENHANCEDSTATUSCODES", responses[-1]]

    async def handle_MAIL(
        self, server: ListenerSMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        refusal = self.refuse_sender(address)
        if refusal is not None:
            return refusal
        envelope.mail_from = address  # "<>" for the null sender: aiosmtpd needs it truthy to allow RCPT
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Sender OK"

    def refuse_sender(self, address: str) -> str | None:
        """The reply refusing ``address`` as MAIL FROM, or None to take it; a listener may check more."""
        return None if printable(address) else "501 5.1.7 Bad sender address syntax"

    async def handle_HELO(self, server: ListenerSMTP, session: Session, envelope: Envelope, hostname: str) -> str:
        if not printable(hostname):
            return "501 5.5.4 Syntax: HELO hostname"
        session.host_name = hostname
        return f"250 {server.hostname}"

    async def handle_exception(self, error: Exception) -> str:
        """A client failing the TLS handshake is routine (aiosmtpd then closes); anything else is our bug."""
        if isinstance(error, TLSSetupException):
            log.info("smtp tls handshake failed", error=repr(error.__cause__))
        else:
            log.exception("smtp session error")
        return LOCAL_ERROR


async def serve(
    factory: Callable[[], ListenerSMTP], sock: socket.socket, *, tls: ssl.SSLContext | None = None
) -> asyncio.Server:
    """Serve ``factory``'s protocol on an already bound socket (aiosmtpd's Controller cannot bind port 0);
    ``tls`` is implicit TLS from the first byte, STARTTLS is the protocol's own ``tls_context``."""
    return await asyncio.get_running_loop().create_server(factory, sock=sock, ssl=tls)
