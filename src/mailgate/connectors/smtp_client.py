"""A small SMTP client (RFC 5321) for the connectors, with command pipelining (RFC 2920).

Why not aiosmtplib (the pick it replaces for sending): its protocol keeps one reply waiter and drops
bytes that arrive while no command is waiting, so replies to pipelined commands are lost; and its
per-command machinery (a lock, a regex and ``wait_for`` per command) was a fifth of a delivery
worker's time. A transaction here is two round trips (MAIL, RCPT..., DATA in one write; then the
content) instead of four or more, which matters on every relay more than a millisecond away.

The client only moves bytes and parses replies. Whether a reply means success, a bounce or a broken
path is decided by ``mailgate.connectors._smtp``; this module raises only for what the connection
itself did (closed, timed out, sent something that is not an SMTP reply).
"""

from __future__ import annotations

import asyncio
import base64
import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

MAX_REPLY_LINES = 100  # a reply longer than this is not a mail server talking
STREAM_LIMIT = 64 * 1024  # longest reply line accepted (RFC 5321 says 512; servers exceed it)
_LONE_EOL = re.compile(rb"\r\n|\r|\n")


class SmtpClientError(Exception):
    """The connection failed; ``stage`` names what the client was doing."""

    def __init__(self, message: str, stage: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.stage = stage


class SmtpDisconnected(SmtpClientError):
    """The server closed the connection, or it broke."""


class SmtpTimeout(SmtpClientError, TimeoutError):
    """No (complete) reply within the timeout."""


class SmtpProtocolError(SmtpClientError):
    """The server sent something that is not an SMTP reply."""


@dataclass(frozen=True, slots=True)
class Response:
    code: int
    text: str  # the reply's lines without their codes, joined with "\n"

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 400


def auth_plain(username: str, password: str) -> bytes:
    return base64.b64encode(b"\0" + username.encode() + b"\0" + password.encode())


def auth_xoauth2(username: str, token: str) -> bytes:
    return base64.b64encode(f"user={username}\x01auth=Bearer {token}\x01\x01".encode())


def data_payload(message: bytes) -> bytes:
    """The message as DATA content: CRLF line endings, leading dots doubled, ended with ``.``. Composed
    messages already have CRLF endings, so the common case is a scan and one replace."""
    crlf = message.count(b"\r\n")
    if message.count(b"\n") != crlf or message.count(b"\r") != crlf:
        message = _LONE_EOL.sub(b"\r\n", message)
    if message.startswith(b"."):
        message = b"." + message
    message = message.replace(b"\r\n.", b"\r\n..")
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    return message + b".\r\n"


class SmtpClient:
    """One SMTP connection. Not safe for concurrent use: the connectors' pools hand a connection to one
    transaction at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, reply_timeout: float) -> None:
        self._reader = reader
        self._writer = writer
        self.reply_timeout = reply_timeout
        self.extensions: dict[str, str] = {}
        self.esmtp = False

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        reply_timeout: float,
        tls_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> tuple[SmtpClient, Response]:
        """Open the connection (TLS from the first byte when ``tls_context`` is given) within
        ``reply_timeout``, then read the greeting within as long again; every later reply gets the same
        time. Raises OSError (ssl.SSLError included) or SmtpClientError."""
        try:
            async with asyncio.timeout(reply_timeout):
                reader, writer = await asyncio.open_connection(
                    host,
                    port,
                    ssl=tls_context,
                    server_hostname=(server_hostname or host) if tls_context is not None else None,
                    limit=STREAM_LIMIT,
                )
        except TimeoutError:
            raise SmtpTimeout(f"timed out after {reply_timeout:g}s connecting", "connect") from None
        client = cls(reader, writer, reply_timeout)
        try:
            greeting = await client.read("greeting")
        except BaseException:
            client.close()
            raise
        return client, greeting

    @property
    def is_connected(self) -> bool:
        return not self._writer.is_closing() and not self._reader.at_eof()

    def supports(self, extension: str) -> bool:
        return extension.upper() in self.extensions

    @property
    def auth_methods(self) -> set[str]:
        return {m.upper() for m in self.extensions.get("AUTH", "").split()}

    async def read(self, stage: str) -> Response:
        async with self._deadline(stage):
            return await self._read_reply(stage)

    async def _read_reply(self, stage: str) -> Response:
        lines: list[str] = []
        while True:
            try:
                line = await self._reader.readuntil(b"\n")
            except asyncio.IncompleteReadError:
                raise SmtpDisconnected("the server closed the connection", stage) from None
            except asyncio.LimitOverrunError:
                raise SmtpProtocolError("a reply line is too long", stage) from None
            code = line[:3]
            sep = line[3:4]
            if not code.isdigit() or sep not in (b" ", b"-", b"\r", b"\n"):
                shown = line[:80].decode("utf-8", "replace").rstrip()
                raise SmtpProtocolError(f"malformed reply line {shown!r}", stage)
            lines.append(line[4:].strip().decode("utf-8", "surrogateescape"))
            if sep != b"-":
                return Response(int(code), "\n".join(lines))
            if len(lines) >= MAX_REPLY_LINES:
                raise SmtpProtocolError(f"a reply of more than {MAX_REPLY_LINES} lines", stage)

    def _deadline(self, stage: str) -> _Deadline:
        return _Deadline(self.reply_timeout, stage)

    def _send_lines(self, lines: Sequence[bytes], stage: str) -> None:
        """Commands go out only whole: a CR or LF inside one would smuggle a command of its own."""
        for line in lines:
            if b"\r" in line or b"\n" in line:
                raise ValueError(f"an SMTP command may not contain CR or LF: {line[:40]!r}")
        self._write(b"".join(line + b"\r\n" for line in lines), stage)

    def _write(self, data: bytes, stage: str) -> None:
        if self._writer.is_closing():
            raise SmtpDisconnected("the connection is closed", stage)
        self._writer.write(data)

    async def command(self, line: bytes, stage: str) -> Response:
        """One command and its reply; ``line`` is the command without CRLF."""
        self._send_lines([line], stage)
        return await self.read(stage)

    async def pipeline(self, lines: Sequence[bytes], replies: list[Response], stage: str) -> None:
        """Send every command in one write, then append each reply to ``replies`` in order. The list is
        the caller's so that after a failure it still shows which commands were answered."""
        self._send_lines(lines, stage)
        async with self._deadline(stage):
            for _ in lines:
                replies.append(await self._read_reply(stage))

    async def ehlo(self, name: str) -> Response:
        reply = await self.command(b"EHLO " + name.encode("ascii"), "EHLO")
        if reply.code == 250:
            self.esmtp = True
            self.extensions = {}
            for line in reply.text.split("\n")[1:]:
                keyword, _, params = line.partition(" ")
                self.extensions[keyword.upper()] = params.strip()
        return reply

    async def helo(self, name: str) -> Response:
        reply = await self.command(b"HELO " + name.encode("ascii"), "HELO")
        if reply.code == 250:
            self.esmtp = False
            self.extensions = {}
        return reply

    async def starttls(self, context: ssl.SSLContext, server_hostname: str) -> Response:
        """STARTTLS and the handshake; the extensions are forgotten (RFC 3207: EHLO again). A reply
        other than 220 is returned and the connection stays in clear text."""
        reply = await self.command(b"STARTTLS", "STARTTLS")
        if reply.code != 220:
            return reply
        async with self._deadline("STARTTLS"):
            await self._writer.start_tls(context, server_hostname=server_hostname)
        self.extensions = {}
        self.esmtp = False
        return reply

    async def send_content(self, message: bytes) -> Response:
        """After a 354: the content (see ``data_payload``) and the final reply."""
        self._write(data_payload(message), "DATA")
        async with self._deadline("DATA"):
            await self._writer.drain()
            return await self._read_reply("DATA")

    async def quit(self, patience: float) -> None:
        """QUIT and close; never raises (the mail is already delivered when this runs)."""
        try:
            if self.is_connected:
                self._writer.write(b"QUIT\r\n")
                async with asyncio.timeout(patience):
                    await self._read_reply("QUIT")
        except (SmtpClientError, OSError, TimeoutError):
            pass
        finally:
            self.close()

    def close(self) -> None:
        self._writer.close()


class _Deadline:
    """``asyncio.timeout`` that raises SmtpTimeout and maps a broken connection to SmtpDisconnected."""

    __slots__ = ("_seconds", "_stage", "_timeout")

    def __init__(self, seconds: float, stage: str) -> None:
        self._seconds = seconds
        self._stage = stage
        self._timeout = asyncio.timeout(seconds)

    async def __aenter__(self) -> None:
        await self._timeout.__aenter__()

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            await self._timeout.__aexit__(kind, exc, tb)
        except TimeoutError:
            raise SmtpTimeout(f"timed out after {self._seconds:g}s", self._stage) from None
        if isinstance(exc, ConnectionError):
            raise SmtpDisconnected(f"the connection broke: {exc.strerror or exc}", self._stage) from exc
