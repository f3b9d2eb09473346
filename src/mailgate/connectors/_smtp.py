"""SMTP client pieces shared by the connectors that speak SMTP (relay, MX): open a session, run one
transaction, and turn every reply and every client/ssl/OS exception into a delivery outcome.

Each recipient gets the outcome of its own RCPT reply, and the envelope goes out byte-exact. When the
server offers PIPELINING, MAIL, every RCPT and DATA go in one write (RFC 2920), and a pooled
connection's RSET rides along: a transaction costs two round trips however many recipients it has.
"""

from __future__ import annotations

import base64
import re
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from mailgate.connectors.oauth2 import TokenError, TokenManager
from mailgate.connectors.smtp_client import (
    Response,
    SmtpClient,
    SmtpClientError,
    SmtpDisconnected,
    SmtpProtocolError,
    auth_plain,
    auth_xoauth2,
)
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


def reply_of(response: Response) -> Reply:
    return parse_reply(response.code, response.text)


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
    """Map a client, TLS or OS exception to a PathFailure with a reason an operator can act on."""
    tls = _ssl_error(exc)
    if isinstance(tls, ssl.SSLCertVerificationError):
        return PathFailure(f"TLS certificate of {peer} not accepted: {tls.verify_message or tls.reason}")
    if tls is not None:
        return PathFailure(f"TLS with {peer} failed during {stage}: {tls.reason or tls}")
    if isinstance(exc, SmtpClientError) and exc.stage:
        stage = exc.stage
    if isinstance(exc, TimeoutError):  # SmtpTimeout included
        if stage in ("connect", "greeting"):
            return PathFailure(f"timed out after {timeout:g}s connecting to {peer} or waiting for its greeting")
        return PathFailure(f"timed out after {timeout:g}s waiting for {peer} to answer {stage}")
    if isinstance(exc, SmtpDisconnected):
        if stage == "greeting":
            return PathFailure(f"{peer} closed the connection before its greeting")
        return PathFailure(f"{peer} closed the connection during {stage}")
    if isinstance(exc, SmtpProtocolError):
        return PathFailure(f"{peer} broke the protocol during {stage}: {exc.message}")
    if isinstance(exc, OSError) and stage == "connect":
        return PathFailure(f"cannot connect to {peer}: {exc.strerror or exc}")
    return PathFailure(f"network error with {peer} during {stage}: {exc.__class__.__name__}: {exc}")


# The exceptions a session can raise for things the network or the server did (ssl.SSLError is an
# OSError). Anything else is a bug and propagates.
NETWORK_ERRORS = (SmtpClientError, OSError, EOFError)


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


def _refused(where: str, stage: str, response: Response) -> PathFailure:
    reply = reply_of(response)
    return PathFailure(f"{where} answered {stage} with {reply}", reply)


async def hello(client: SmtpClient, name: str, where: str) -> None:
    """EHLO, falling back to HELO for the rare server that knows no ESMTP (it then offers no
    extensions, which the callers check)."""
    response = await client.ehlo(name)
    if response.code == 250:
        return
    if response.code in (500, 502, 504) and client.is_connected:
        response = await client.helo(name)
        if response.code == 250:
            return
        raise _refused(where, "HELO", response)
    raise _refused(where, "EHLO", response)


async def start_tls(client: SmtpClient, context: ssl.SSLContext, server_hostname: str, opts: SessionOptions) -> None:
    """STARTTLS, the handshake and the second EHLO. Raises PathFailure; the caller closes."""
    stage = "STARTTLS"
    try:
        response = await client.starttls(context, server_hostname)
        if response.code != 220:
            raise _refused(opts.where, stage, response)
        stage = "EHLO"
        await hello(client, opts.helo_name, opts.where)
    except NETWORK_ERRORS as exc:
        raise explain(exc, stage, opts.where, opts.timeout) from exc


async def open_session(opts: SessionOptions) -> SmtpClient:
    """Connect, greet, STARTTLS as ``opts.tls`` demands, AUTH when a username is set.

    Raises PathFailure for anything the network or the server did, with the client already closed."""
    client: SmtpClient | None = None
    stage = "connect"
    try:
        client, greeting = await SmtpClient.connect(
            opts.host,
            opts.port,
            reply_timeout=opts.timeout,
            tls_context=opts.tls_context if opts.tls == "implicit" else None,
        )
        if greeting.code != 220:
            reply = reply_of(greeting)
            raise PathFailure(f"{opts.where} refused the session: {reply}", reply)
        stage = "EHLO"
        await hello(client, opts.helo_name, opts.where)
        if opts.tls == "starttls":
            if not client.supports("starttls"):
                raise PathFailure(
                    f"{opts.where} does not offer STARTTLS, and this connector requires it (tls=starttls); "
                    "use tls=implicit for port 465, or tls=none only on a trusted network"
                )
            assert opts.tls_context is not None
            await start_tls(client, opts.tls_context, opts.host, opts)
        if opts.username is not None:
            stage = "AUTH"
            if not client.supports("auth"):
                raise PathFailure(f"{opts.where} does not offer AUTH, but the connector has credentials")
            if opts.oauth is None:
                await _login_password(client, opts.username, opts.password or "", opts.where)
            else:
                await _login_xoauth2(client, opts.username, opts.oauth, opts.where)
    except PathFailure:
        if client is not None:
            client.close()
        raise
    except NETWORK_ERRORS as exc:
        if client is not None:
            client.close()
        raise explain(exc, stage, opts.where, opts.timeout) from exc
    except BaseException:
        if client is not None:
            client.close()
        raise
    return client


def _credentials_refused(where: str, response: Response) -> PathFailure:
    reply = reply_of(response)
    return PathFailure(f"{where} rejected the connector's credentials: {reply}", reply)


async def _login_password(client: SmtpClient, username: str, password: str, where: str) -> None:
    """AUTH PLAIN (one round trip) where offered, else LOGIN."""
    methods = client.auth_methods
    if "PLAIN" in methods:
        response = await client.command(b"AUTH PLAIN " + auth_plain(username, password), "AUTH")
    elif "LOGIN" in methods:
        response = await client.command(b"AUTH LOGIN", "AUTH")
        for secret in (username, password):
            if response.code != 334:
                break
            response = await client.command(base64.b64encode(secret.encode()), "AUTH")
    else:
        offered = " ".join(sorted(methods)) or "none"
        raise PathFailure(f"{where} offers no AUTH mechanism the connector can use (PLAIN, LOGIN), only {offered}")
    if response.code != 235:
        raise _credentials_refused(where, response)


async def _login_xoauth2(client: SmtpClient, username: str, tokens: TokenManager, where: str) -> None:
    """A rejected token is retried once with a fresh one: servers revoke tokens before their expiry
    time (password change, admin action), and only a new token tells that apart from credentials
    that no longer work."""
    if "XOAUTH2" not in client.auth_methods:
        raise PathFailure(f"{where} does not offer AUTH XOAUTH2, but the connector is set to auth=xoauth2")
    for attempt in range(2):
        try:
            token = await tokens.token()
        except TokenError as exc:
            raise PathFailure(f"no OAuth2 access token to log in to {where}: {exc.reason}") from exc
        response = await client.command(b"AUTH XOAUTH2 " + auth_xoauth2(username, token), "AUTH")
        if response.code == 334:  # the error details (base64 JSON); an empty line ends the exchange
            response = await client.command(b"", "AUTH")
        if response.code == 235:
            return
        if attempt or not 500 <= response.code < 600:
            raise _credentials_refused(where, response)
        tokens.invalidate(token)


def _utf8_refusal(where: str) -> tuple[Reply, str]:
    reply = Reply(553, "5.6.7", f"SMTPUTF8 is required, but was not offered by {where}")
    return reply, "the envelope has non-ASCII addresses and the server cannot take them (no SMTPUTF8)"


async def _exchange(client: SmtpClient, commands: list[tuple[str, bytes]], replies: list[Response]) -> None:
    """Send the transaction's commands and collect their replies into ``replies``: all at once when
    the server pipelines, else one by one, stopping where the rest could only fail (a refused RSET
    or MAIL, or no recipient accepted before DATA)."""
    if client.supports("pipelining"):
        await client.pipeline([line for _, line in commands], replies, commands[0][0])
        return
    accepted = 0
    for stage, line in commands:
        if stage == "DATA" and not accepted:
            return
        response = await client.command(line, stage)
        replies.append(response)
        if response.code in _PATH_CODES:
            return
        if stage in ("RSET", "MAIL") and response.code != 250:
            return
        if stage == "RCPT" and response.code in (250, 251):
            accepted += 1


async def transact(
    client: SmtpClient,
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
    replies: list[Response] = []
    commands: list[tuple[str, bytes]] = []
    data_sent = False
    try:
        pending = list(recipients)
        smtputf8 = not mail_from.isascii() or not all(r.isascii() for r in pending)
        if smtputf8 and not client.supports("smtputf8"):
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

        mail = b"MAIL FROM:<" + mail_from.encode(encoding) + b">"
        if client.supports("size"):
            mail += b" SIZE=%d" % len(message)
        if not message.isascii() and client.supports("8bitmime"):
            mail += b" BODY=8BITMIME"
        if smtputf8:
            mail += b" SMTPUTF8"
        if reset:
            commands.append(("RSET", b"RSET"))
        commands.append(("MAIL", mail))
        commands += [("RCPT", b"RCPT TO:<" + rcpt.encode(encoding) + b">") for rcpt in pending]
        commands.append(("DATA", b"DATA"))
        broken: BaseException | None = None
        try:
            await _exchange(client, commands, replies)
        except NETWORK_ERRORS as exc:
            broken = exc  # the replies that did arrive still decide their recipients (a 421 mid-RCPT)
        answers = iter(replies)

        def answer() -> Response:
            response = next(answers, None)
            if response is not None:
                return response
            if broken is None:
                raise AssertionError("a reply to a command that was not sent")
            raise broken

        if reset:
            response = answer()
            if response.code != 250:
                failure = _refused(where, "RSET", response)
                failure.retry_safe = True
                raise failure
        response = answer()
        reply = reply_of(response)
        if response.code != 250:
            if response.code in _PATH_CODES or not 400 <= response.code < 600:
                raise PathFailure(f"{where} answered MAIL with {reply}", reply, decided=decided)
            if reply.transient:
                refused: DeliveryOutcome = Deferred("the server refused the sender for now", reply)
            else:
                refused = Bounced(reply, "the server refused the sender")
            decided.update({r: refused for r in pending})
            return _finish(client, replies, commands, decided)

        accepted: list[str] = []
        for rcpt in pending:
            response = answer()
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
            return _finish(client, replies, commands, decided)

        response = answer()
        if response.code == 354:
            data_sent = True
            response = await client.send_content(message)
            if response.code == 250:
                delivered = Delivered(reply_of(response))
                decided.update({r: delivered for r in accepted})
                return decided
        reply = reply_of(response)
        if response.code in _PATH_CODES or not 400 <= response.code < 600:
            raise PathFailure(f"{where} answered DATA with {reply}", reply, decided=decided)
        outcome: DeliveryOutcome
        if reply.transient:
            outcome = Deferred("the server refused the message for now", reply)
        else:
            outcome = Bounced(reply, "the server refused the message")
        decided.update({r: outcome for r in accepted})
        return decided
    except PathFailure as failure:
        failure.decided = {**decided, **failure.decided}
        failure.retry_safe = failure.retry_safe and reset
        raise
    except NETWORK_ERRORS as exc:
        # the command whose reply was awaited names the stage (a pipelined write covers several)
        stage = "DATA" if data_sent else commands[min(len(replies), len(commands) - 1)][0]
        if isinstance(exc, SmtpClientError):
            exc.stage = stage
        mapped = explain(exc, stage, where, reply_timeout)
        mapped.decided = decided
        # An idle pooled connection that the server (or a NAT box) dropped shows up as a disconnect or,
        # at the RSET probe, as silence; before DATA nothing was accepted, so a retry cannot duplicate.
        disconnected = isinstance(exc, SmtpDisconnected | ConnectionError)
        mapped.retry_safe = reset and not data_sent and (not replies or disconnected)
        raise mapped from exc


def _finish(
    client: SmtpClient, replies: list[Response], commands: list[tuple[str, bytes]], decided: dict[str, DeliveryOutcome]
) -> dict[str, DeliveryOutcome]:
    """A transaction that ended before its content. A pipelined DATA that the server took (354) even
    though no recipient was accepted cannot be ended cleanly (RFC 2920 3.1 would send an empty
    message), so that connection is closed instead of reused."""
    if len(replies) == len(commands) and commands[-1][0] == "DATA" and replies[-1].code == 354:
        client.close()
    return decided


async def quit_quietly(client: SmtpClient, patience: float) -> None:
    """QUIT politely, but never wait long for it: the messages are already delivered."""
    await client.quit(min(patience, 5.0))
