"""The inbound MX listener (RFC 5321 port 25): mail from the internet, handed to the inbound service.

This module only speaks SMTP. Whether a recipient exists, whether a message is spam and where it is
stored are the service's business, reached through ``InboundPort``: one call at RCPT, one after DATA.
A message is acknowledged ``250`` only once ``receive`` says it is durable; if the service fails, raises
or runs past the DATA deadline, the sender hears ``451`` and keeps the message for a later try. No AUTH
is offered: this is where strangers deliver, not where users log in (that is submission).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from dataclasses import dataclass
from typing import Protocol

from aiosmtpd.smtp import Envelope, Session
from prometheus_client import Counter

from mailgate.domain.delivery import Reply
from mailgate.domain.errors import ConfigurationError
from mailgate.domain.inbound import InboundEnvelope
from mailgate.observability.logging import get_logger
from mailgate.observability.metrics import MX_MESSAGES, MX_RECIPIENTS
from mailgate.servers.smtp._common import (
    ENHANCED_CODE,
    LOCAL_ERROR,
    ConnectionLimits,
    ListenerHandler,
    ListenerSMTP,
    printable,
    serve,
)

log = get_logger("mailgate.mx")

NULL_SENDER = "<>"  # how aiosmtpd hands over MAIL FROM:<> (and RCPT TO:<>)
MAX_REPLY_TEXT = 400  # RFC 5321 4.5.3.1.5 allows 512 octets per reply line, code and CRLF included


class InboundPort(Protocol):
    """What the listener needs of the inbound service."""

    async def check_recipient(self, address: str, *, client_ip: str) -> Reply | None:
        """None when ``address`` takes mail; else the refusal, e.g. ``Reply(550, "5.1.1", ...)``."""
        ...

    async def receive(self, envelope: InboundEnvelope) -> Reply:
        """``250`` once the message is durable; ``4xx`` when it cannot be stored now; ``5xx`` when refused."""
        ...


@dataclass(frozen=True, slots=True)
class MxOptions:
    """One MX listener's limits and timeouts, each enforced at the protocol step named beside it."""

    hostname: str | None = None  # greeting/EHLO name; the machine's FQDN when None
    max_message_size: int = 26214400  # SIZE; bigger DATA -> 552 5.3.4, nothing stored
    max_recipients: int = 100  # more -> 452 4.5.3
    command_timeout: float = 300.0  # idle between commands -> 421 and close
    data_timeout: float = 600.0  # the whole DATA phase, storing included (RFC 5321 4.5.3.2.6: 10 min)
    max_connections_per_ip: int = 20  # more -> 421 4.7.0 at connect
    max_connections: int = 1000  # overall
    require_tls: bool = False  # MAIL before STARTTLS -> 530 5.7.0


class MxHandler(ListenerHandler):
    """The aiosmtpd handler: one per listener, shared by its connections; one port call per hook."""

    def __init__(self, port: InboundPort, options: MxOptions) -> None:
        self._port = port
        self.options = options

    async def handle_RCPT(
        self, server: ListenerSMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if address == NULL_SENDER or not printable(address):
            return _counted(MX_RECIPIENTS, "refused", "501 5.1.3 Bad recipient address syntax")
        if len(envelope.rcpt_tos) >= self.options.max_recipients:
            return _counted(MX_RECIPIENTS, "too_many", "452 4.5.3 Too many recipients")
        try:
            refusal = await self._port.check_recipient(address, client_ip=server.client_ip)
        except Exception:
            log.exception("mx recipient check failed", recipient=address, client_ip=server.client_ip)
            return _counted(MX_RECIPIENTS, "error", LOCAL_ERROR)
        if refusal is not None:
            return _counted(MX_RECIPIENTS, *_refusal(refusal))
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return _counted(MX_RECIPIENTS, "accepted", "250 2.1.5 Recipient OK")

    async def handle_DATA(self, server: ListenerSMTP, session: Session, envelope: Envelope) -> str:
        assert envelope.mail_from is not None
        received = InboundEnvelope(
            client_ip=server.client_ip,
            helo=session.host_name or "",
            mail_from="" if envelope.mail_from == NULL_SENDER else envelope.mail_from,
            recipients=tuple(envelope.rcpt_tos),
            data=envelope.original_content or b"",
            tls=session.ssl is not None,
        )
        try:
            reply = await server.within_data_deadline(self._port.receive(received))
        except TimeoutError:
            log.error("mx message not stored in time", client_ip=server.client_ip, size=len(received.data))
            return _counted(MX_MESSAGES, "error", LOCAL_ERROR)
        except Exception:
            log.exception("mx message not stored", client_ip=server.client_ip, size=len(received.data))
            return _counted(MX_MESSAGES, "error", LOCAL_ERROR)
        if reply.code != 250:
            return _counted(MX_MESSAGES, *_refusal(reply))
        log.debug("mx message accepted", client_ip=server.client_ip, recipients=len(received.recipients))
        return _counted(MX_MESSAGES, "accepted", _line(reply))


class MxSMTP(ListenerSMTP):
    listener = "mx"

    async def smtp_AUTH(self, arg: str) -> None:
        """Refused whatever its arguments, as Postfix does with SASL off (aiosmtpd would ask for TLS)."""
        await self.push("503 5.5.1 Error: authentication not enabled")


async def start_mx(
    port: InboundPort,
    sock: socket.socket,
    *,
    tls_context: ssl.SSLContext | None,
    options: MxOptions,
    limits: ConnectionLimits | None = None,
) -> asyncio.Server:
    """Serve on an already bound socket; STARTTLS is offered when ``tls_context`` is given. ``limits``
    are the options' connection limits kept with other processes on the same socket; by default, this
    process's own."""
    if options.require_tls and tls_context is None:
        raise ConfigurationError("the MX listener cannot require TLS without a certificate")
    handler = MxHandler(port, options)
    if limits is None:
        limits = ConnectionLimits(per_ip=options.max_connections_per_ip, total=options.max_connections)

    def factory() -> MxSMTP:
        return MxSMTP(
            handler,
            hostname=options.hostname,
            max_message_size=options.max_message_size,
            command_timeout=options.command_timeout,
            data_timeout=options.data_timeout,
            limits=limits,
            tls_context=tls_context,
            require_starttls=options.require_tls,
            auth_exclude_mechanism=("LOGIN", "PLAIN"),
        )

    return await serve(factory, sock)


def _refusal(reply: Reply) -> tuple[str, str]:
    """The metric outcome and reply line for the service's refusal; a reply that is no refusal (the port
    contract allows only 4xx/5xx here) is a bug on the service's side, answered as a local error."""
    if reply.transient:
        return "deferred", _line(reply)
    if reply.permanent and reply.code < 600:
        return "refused", _line(reply)
    log.error("mx port answered an impossible reply", reply=str(reply))
    return "error", LOCAL_ERROR


def _line(reply: Reply) -> str:
    """One reply line with an enhanced code, whatever the service put in its text: a CR or LF there
    would inject a reply of its own."""
    valid = reply.enhanced is not None and ENHANCED_CODE.fullmatch(reply.enhanced)
    enhanced = reply.enhanced if valid else f"{reply.code // 100}.0.0"
    return f"{reply.code} {enhanced} {' '.join(reply.text.split())[:MAX_REPLY_TEXT]}".rstrip()


def _counted(counter: Counter, outcome: str, line: str) -> str:
    """Count ``line`` under ``outcome`` and its enhanced status code (the second word of every line
    built here), then hand it back."""
    counter.labels(outcome, line.split(" ", 2)[1]).inc()
    return line
