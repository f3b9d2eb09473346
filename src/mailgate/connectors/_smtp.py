"""SMTP client pieces shared by the connectors that speak SMTP (relay, MX): open a session, run one
transaction, and turn every reply and every aiosmtplib/ssl/OS exception into a delivery outcome.

aiosmtplib's own ``sendmail`` is not used: it raises when *all* recipients are refused and reports
partial refusals in a side dict, and it parses addresses with ``email.utils.parseaddr``, which quietly
rewrites odd input. Driving MAIL/RCPT/DATA ourselves gives one reply per recipient and keeps the
envelope byte-exact.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import aiosmtplib

from mailgate.connectors.oauth2 import TokenError, TokenManager
from mailgate.domain.delivery import Bounced, Deferred, Delivered, DeliveryOutcome, Reply

TlsMode = Literal["none", "starttls", "implicit"]

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?:\s+|$)")
_QUOTED_LOCAL = re.compile(r'^"(?:[^"\\\r\n]|\\[^\r\n])*"@')

# Replies that speak about the path, not the recipient: the server is going away (421) or wants
# credentials the connector did not give (530). Both must count against the connector and fail over.
_PATH_CODES = frozenset({421, 530})


def parse_reply(code: int, message: str) -> Reply:
    """Split an RFC 3463 enhanced status code off a reply; multi-line replies repeat it on every
    line, so it is stripped from each and the lines are joined into one (replies are stored and shown
    as a single line). A code whose class disagrees with the basic code is not trusted as one."""
    enhanced: str | None = None
    lines: list[str] = []
    for line in message.splitlines() or [""]:
        m = _ENHANCED.match(line)
        if m and m.group(1) == str(code)[:1]:
            enhanced = enhanced or ".".join(m.groups())
            line = line[m.end() :]
        lines.append(line.strip())
    return Reply(code, enhanced, " ".join(part for part in lines if part))


def reply_of(response: aiosmtplib.SMTPResponse) -> Reply:
    return parse_reply(response.code, response.message)


def address_problem(address: str, *, sender: bool = False) -> str | None:
    """Why ``address`` cannot go on a MAIL/RCPT line, or None. Only what would corrupt the command is
    refused (a CR/LF smuggles commands, a space or angle bracket smuggles parameters); whether the
    address exists is for the server to say."""
    if address == "":
        return None if sender else "empty recipient address"
    if any(ord(c) < 32 or ord(c) == 127 for c in address):
        return f"address {address!r} contains control characters"
    unquoted = _QUOTED_LOCAL.sub("x@", address, count=1)
    if any(c.isspace() or c in "<>" for c in unquoted):
        return f"address {address!r} contains spaces or angle brackets"
    if address.lower() == "postmaster":  # RFC 5321 4.1.1.3: the one address without a domain
        return None
    local, at, domain = unquoted.rpartition("@")
    if not (local and at and domain):
        return f"address {address!r} is not of the form local@domain"
    return None


def client_tls_context(*, validate_certs: bool, ca_file: str | None) -> ssl.SSLContext:
    """One context per connector: loading a CA bundle costs milliseconds, every connection reuses it."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not validate_certs:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def valid_helo_name(name: str) -> bool:
    return bool(name) and not any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in name)


class PathFailure(Exception):
    """The path failed (connect, TLS, AUTH, a dropped connection, a timeout, 421): every recipient not
    already decided by its own RCPT reply is deferred as a connector fault.

    ``retry_safe`` marks failures on a connection that was idle in a pool, before the DATA command was
    sent: nothing can have been accepted, so the message may go again at once on a fresh connection.
    """

    def __init__(
        self,
        reason: str,
        reply: Reply | None = None,
        *,
        decided: Mapping[str, DeliveryOutcome] | None = None,
        retry_safe: bool = False,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.reply = reply
        self.decided = dict(decided or {})
        self.retry_safe = retry_safe

    def outcomes(self, recipients: Sequence[str]) -> dict[str, DeliveryOutcome]:
        fault = Deferred(self.reason, self.reply, connector_fault=True)
        return {r: self.decided.get(r, fault) for r in recipients}


def _ssl_error(exc: BaseException) -> ssl.SSLError | None:
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def explain(exc: BaseException, stage: str, peer: str, timeout: float) -> PathFailure:
    """Map a foreign exception to a PathFailure with a reason an operator can act on."""
    tls = _ssl_error(exc)
    if isinstance(tls, ssl.SSLCertVerificationError):
        return PathFailure(f"TLS certificate of {peer} not accepted: {tls.verify_message or tls.reason}")
    if tls is not None:
        return PathFailure(f"TLS with {peer} failed during {stage}: {tls.reason or tls}")
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        reply = parse_reply(exc.code, exc.message)
        return PathFailure(f"{peer} rejected the connector's credentials: {reply}", reply)
    if isinstance(exc, aiosmtplib.SMTPConnectTimeoutError):
        return PathFailure(f"timed out after {timeout:g}s connecting to {peer} or waiting for its greeting")
    if isinstance(exc, TimeoutError):  # SMTPTimeoutError and SMTPReadTimeoutError are TimeoutErrors too
        return PathFailure(f"timed out after {timeout:g}s waiting for {peer} to answer {stage}")
    if isinstance(exc, aiosmtplib.SMTPConnectResponseError):
        reply = parse_reply(exc.code, exc.message)
        return PathFailure(f"{peer} refused the session: {reply}", reply)
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        reply = parse_reply(exc.code, exc.message)
        return PathFailure(f"{peer} answered {stage} with {reply}", reply)
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected):
        return PathFailure(f"{peer} closed the connection during {stage}")
    if isinstance(exc, aiosmtplib.SMTPConnectError):
        cause = exc.__cause__
        if isinstance(cause, aiosmtplib.SMTPServerDisconnected):
            return PathFailure(f"{peer} closed the connection before its greeting")
        detail = (cause.strerror or str(cause)) if isinstance(cause, OSError) else exc.message
        return PathFailure(f"cannot connect to {peer}: {detail}")
    if isinstance(exc, aiosmtplib.SMTPException):
        return PathFailure(f"{stage} with {peer} failed: {exc.message}")
    return PathFailure(f"network error with {peer} during {stage}: {exc.__class__.__name__}: {exc}")


# The exceptions a session can raise for things the network or the server did. Anything else is a bug
# and propagates.
NETWORK_ERRORS = (aiosmtplib.SMTPException, OSError, EOFError)


@dataclass(frozen=True, slots=True)
class SessionOptions:
    host: str
    port: int
    tls: TlsMode
    tls_context: ssl.SSLContext | None
    timeout: float
    helo_name: str
    username: str | None = None
    password: str | None = None
    oauth: TokenManager | None = None
    """With a username: log in with AUTH XOAUTH2 and this manager's tokens instead of the password."""

    @property
    def where(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


async def _hello(client: aiosmtplib.SMTP) -> None:
    """EHLO, falling back to HELO for the rare server that knows no ESMTP (it then offers no
    extensions, which the callers check)."""
    try:
        await client.ehlo()
    except aiosmtplib.SMTPHeloError:
        if not client.is_connected:
            raise
        await client.helo()


async def open_session(opts: SessionOptions) -> aiosmtplib.SMTP:
    """Connect, greet, STARTTLS as ``opts.tls`` demands, AUTH when a username is set.

    Raises PathFailure for anything the network or the server did, with the client already closed."""
    client = aiosmtplib.SMTP(
        hostname=opts.host,
        port=opts.port,
        timeout=opts.timeout,
        use_tls=opts.tls == "implicit",
        start_tls=False,
        tls_context=opts.tls_context if opts.tls != "none" else None,
        local_hostname=opts.helo_name,
    )
    stage = "connect"
    try:
        await client.connect()
        stage = "EHLO"
        await _hello(client)
        if opts.tls == "starttls":
            if not client.supports_extension("starttls"):
                raise PathFailure(
                    f"{opts.where} does not offer STARTTLS, and this connector requires it (tls=starttls); "
                    "use tls=implicit for port 465, or tls=none only on a trusted network"
                )
            stage = "STARTTLS"
            await client.starttls()
            stage = "EHLO"
            await _hello(client)
        if opts.username is not None:
            stage = "AUTH"
            if not client.supports_extension("auth"):
                raise PathFailure(f"{opts.where} does not offer AUTH, but the connector has credentials")
            if opts.oauth is None:
                await client.login(opts.username, opts.password or "")
            else:
                await _login_xoauth2(client, opts.username, opts.oauth, opts.where)
    except PathFailure:
        client.close()
        raise
    except NETWORK_ERRORS as exc:
        client.close()
        raise explain(exc, stage, opts.where, opts.timeout) from exc
    except BaseException:
        client.close()
        raise
    return client


async def _login_xoauth2(client: aiosmtplib.SMTP, username: str, tokens: TokenManager, where: str) -> None:
    """A rejected token is retried once with a fresh one: servers revoke tokens before their expiry
    time (password change, admin action), and only a new token tells that apart from credentials
    that no longer work."""
    if "xoauth2" not in client.server_auth_methods:
        raise PathFailure(f"{where} does not offer AUTH XOAUTH2, but the connector is set to auth=xoauth2")
    for attempt in range(2):
        try:
            token = await tokens.token()
        except TokenError as exc:
            raise PathFailure(f"no OAuth2 access token to log in to {where}: {exc.reason}") from exc
        try:
            await client.auth_xoauth2(username, token)
            return
        except aiosmtplib.SMTPAuthenticationError:
            if attempt:
                raise
            tokens.invalidate(token)


def _utf8_refusal(where: str) -> tuple[Reply, str]:
    reply = Reply(553, "5.6.7", f"SMTPUTF8 is required, but was not offered by {where}")
    return reply, "the envelope has non-ASCII addresses and the server cannot take them (no SMTPUTF8)"


async def transact(
    client: aiosmtplib.SMTP,
    mail_from: str,
    recipients: Sequence[str],
    message: bytes,
    *,
    reset: bool,
    where: str,
    reply_timeout: float,
) -> dict[str, DeliveryOutcome]:
    """One mail transaction on an open session; returns an outcome for every recipient.

    ``reset`` sends RSET first: it clears whatever an earlier transaction left behind and doubles as
    the liveness probe of a pooled connection. Raises PathFailure when the path fails; the session must
    then be discarded.
    """
    decided: dict[str, DeliveryOutcome] = {}
    stage = "RSET"
    data_sent = False
    try:
        if reset:
            response = await client.execute_command(b"RSET")
            if response.code != 250:
                reply = reply_of(response)
                raise PathFailure(f"{where} answered RSET with {reply}", reply, retry_safe=True)

        pending = list(recipients)
        smtputf8 = not mail_from.isascii() or not all(r.isascii() for r in pending)
        if smtputf8 and not client.supports_extension("smtputf8"):
            reply, reason = _utf8_refusal(where)
            if not mail_from.isascii():
                return {r: Bounced(reply, reason) for r in pending}
            for r in pending:
                if not r.isascii():
                    decided[r] = Bounced(reply, reason)
            pending = [r for r in pending if r not in decided]
            if not pending:
                return decided
            smtputf8 = False
        encoding = "utf-8" if smtputf8 else "ascii"

        options: list[bytes] = []
        if client.supports_extension("size"):
            options.append(b"SIZE=%d" % len(message))
        if not message.isascii() and client.supports_extension("8bitmime"):
            options.append(b"BODY=8BITMIME")
        if smtputf8:
            options.append(b"SMTPUTF8")

        stage = "MAIL"
        response = await client.execute_command(b"MAIL", b"FROM:<" + mail_from.encode(encoding) + b">", *options)
        reply = reply_of(response)
        if response.code != 250:
            if response.code in _PATH_CODES or not 400 <= response.code < 600:
                raise PathFailure(f"{where} answered MAIL with {reply}", reply, decided=decided)
            if reply.transient:
                refused: DeliveryOutcome = Deferred("the server refused the sender for now", reply)
            else:
                refused = Bounced(reply, "the server refused the sender")
            decided.update({r: refused for r in pending})
            return decided

        stage = "RCPT"
        accepted: list[str] = []
        for rcpt in pending:
            response = await client.execute_command(b"RCPT", b"TO:<" + rcpt.encode(encoding) + b">")
            reply = reply_of(response)
            if response.code in (250, 251):
                accepted.append(rcpt)
            elif response.code in _PATH_CODES or not 400 <= response.code < 600:
                raise PathFailure(f"{where} answered RCPT with {reply}", reply, decided=decided)
            elif reply.transient:
                decided[rcpt] = Deferred("the server refused the recipient for now", reply)
            else:
                decided[rcpt] = Bounced(reply, "the server refused the recipient")
        if not accepted:
            return decided

        stage = "DATA"
        data_sent = True
        try:
            response = await client.data(message)
        except aiosmtplib.SMTPDataError as exc:
            reply = parse_reply(exc.code, exc.message)
            if exc.code in _PATH_CODES or not 400 <= exc.code < 600:
                client.close()  # unlike other commands, aiosmtplib does not close on a 421 to DATA
                raise PathFailure(f"{where} answered DATA with {reply}", reply, decided=decided) from exc
            outcome: DeliveryOutcome
            if reply.transient:
                outcome = Deferred("the server refused the message for now", reply)
            else:
                outcome = Bounced(reply, "the server refused the message")
            decided.update({r: outcome for r in accepted})
            return decided
        delivered = Delivered(reply_of(response))
        decided.update({r: delivered for r in accepted})
        return decided
    except PathFailure as failure:
        failure.decided = {**decided, **failure.decided}
        failure.retry_safe = failure.retry_safe and reset
        raise
    except NETWORK_ERRORS as exc:
        mapped = explain(exc, stage, where, reply_timeout)
        mapped.decided = decided
        # An idle pooled connection that the server (or a NAT box) dropped shows up as a disconnect or,
        # at the RSET probe, as silence; before DATA nothing was accepted, so a retry cannot duplicate.
        disconnected = isinstance(exc, aiosmtplib.SMTPServerDisconnected | ConnectionError)
        mapped.retry_safe = reset and not data_sent and (stage == "RSET" or disconnected)
        raise mapped from exc


async def quit_quietly(client: aiosmtplib.SMTP, patience: float) -> None:
    """QUIT politely, but never wait long for it: the messages are already delivered."""
    try:
        if client.is_connected:
            await client.quit(timeout=min(patience, 5.0))
    except (aiosmtplib.SMTPException, OSError):
        pass
    finally:
        client.close()
