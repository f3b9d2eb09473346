"""A SPAMC/1.5 client for SpamAssassin's spamd, on asyncio streams.

One ``REPORT`` request per connection, as spamc does: the request line, ``Content-length``, a blank
line and the message; the answer is ``SPAMD/1.1 0 EX_OK``, a ``Spam: True ; 1003.3 / 5.0`` header and
the report, whose table gives each rule's points (``SYMBOLS`` would name the rules without them).

spamd sees only the message, not the SMTP session, so the copy it gets starts with the Received
header mailgate's MX would write: spamd's SPF, RBL and trust-path rules all look for the connecting
client there (spamass-milter does the same).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from email.utils import formatdate
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from mailgate.inbound.spam import SpamInput

MAX_ANSWER: Final = 1 << 20  # a report is a few kilobytes; more is not spamd
_STATUS: Final = re.compile(rb"SPAMD/\d+\.\d+ +(\d+) *(.*)")
_SPAM_HEADER: Final = re.compile(rb"(?i)spam: *(true|false|yes|no) *; *(-?\d+(?:\.\d+)?) */ *(-?\d+(?:\.\d+)?)")
_NO_BREAKS: Final = str.maketrans("", "", "\r\n\0")
# the report's table starts after a rule of dashes; a row is the points right-aligned in four
# columns, the rule name and its description; wrapped description lines are indented far deeper
_TABLE: Final = re.compile(rb"^---- [- ]+\r?$", re.MULTILINE)
_ROW: Final = re.compile(rb"^ {0,3}(-?\d+(?:\.\d+)?) +([A-Z][A-Z0-9_]*)\b", re.MULTILINE)


class SpamdClient:
    """Talks to one spamd at ``host:port``; a connection per message, as spamd closes it after one."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port

    async def check(self, item: SpamInput) -> tuple[float, dict[str, float]]:
        """spamd's score and the rules that hit with their points; ValueError when the answer is not
        one, OSError when spamd cannot be reached."""
        message = trace_header(item) + item.raw
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            writer.write(b"REPORT SPAMC/1.5\r\nContent-length: %d\r\n\r\n" % len(message))
            writer.write(message)
            await writer.drain()
            writer.write_eof()
            answer = await _read_all(reader)
        except BaseException:
            writer.transport.abort()  # a peer that stopped reading would hold a graceful close forever
            raise
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return parse_answer(answer)

    async def aclose(self) -> None:
        """Nothing is kept open between messages."""


def trace_header(item: SpamInput) -> bytes:
    """``Received: from HELO (NAME [IP]) by mailgate with ESMTP (envelope-from <FROM>); DATE``; the
    fields come from the client, so line breaks in them are dropped rather than written."""
    helo, ip, mail_from = (v.translate(_NO_BREAKS) for v in (item.helo, item.client_ip, item.mail_from))
    name = f"{item.client_name.translate(_NO_BREAKS)} " if item.client_name else ""
    return (
        f"Received: from {helo or 'unknown'} ({name}[{ip}])\r\n"
        f"\tby mailgate with ESMTP (envelope-from <{mail_from}>); {formatdate()}\r\n"
    ).encode("utf-8", "replace")


async def _read_all(reader: asyncio.StreamReader) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := await reader.read(65536):
        size += len(chunk)
        if size > MAX_ANSWER:
            raise ValueError(f"the answer is longer than {MAX_ANSWER} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_answer(answer: bytes) -> tuple[float, dict[str, float]]:
    """Score and per-rule points of a REPORT answer (a CHECK answer gives the score alone)."""
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, _, headers = head.partition(b"\r\n")
    status = _STATUS.fullmatch(status_line.strip())
    if status is None:
        raise ValueError(f"not a spamd answer: {status_line[:80]!r}")
    if status.group(1) != b"0":
        code, text = status.group(1).decode(), status.group(2).decode(errors="replace")
        raise ValueError(f"spamd refused the request: {code} {text}")
    verdict = _SPAM_HEADER.search(headers)
    if verdict is None:
        raise ValueError("the answer has no Spam header")
    table = _TABLE.search(body)
    rows = _ROW.finditer(body, table.end()) if table else ()
    return float(verdict.group(2)), {m.group(2).decode(): float(m.group(1)) for m in rows}
