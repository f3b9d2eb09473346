"""A message an application submitted whole (SMTP submission, or raw MIME over REST), made ready to queue.

The body is kept byte for byte: only the header block is touched, as a message submission agent may
(RFC 6409 section 8): line ends become CRLF, ``Bcc`` is removed (its recipients are in the envelope and
must not see each other), a missing ``Date`` or ``Message-ID`` is added, and ``X-Mailgate-*`` lines are
taken out: they are instructions to us (idempotency key, tags, route), never something a recipient sees
or a client can forge into our own trace headers.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from email.utils import format_datetime, getaddresses

from mailgate.domain.address import parse_address
from mailgate.domain.errors import InvalidInput

CONTROL_PREFIX = b"x-mailgate-"
IDEMPOTENCY_HEADER = "x-mailgate-idempotency-key"
TAGS_HEADER = "x-mailgate-tags"
ROUTE_HEADER = "x-mailgate-route"
MAX_TAGS = 20

_LINE_ENDS = re.compile(rb"\r\n|\r|\n")
_FIELD_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+")


@dataclass(frozen=True, slots=True)
class Submitted:
    raw: bytes
    from_addresses: list[str]
    header_recipients: list[str]
    subject: str
    message_id: str
    idempotency_key: str | None = None
    tags: list[str] = field(default_factory=list)
    route: str | None = None


@dataclass(slots=True)
class _Field:
    name: str
    lines: list[bytes]

    @property
    def value(self) -> str:
        """The unfolded value, decoded leniently: submitted headers may carry raw UTF-8 (RFC 6532)."""
        joined = b"".join(self.lines)[len(self.name) + 1 :]
        return joined.replace(b"\r\n", b"").decode("utf-8", "replace").strip()


def prepare(raw: bytes, *, hostname: str, now: datetime | None = None) -> Submitted:
    """Check and normalise ``raw``; raises ``InvalidInput`` when it is not an RFC 5322 message.

    A Message-ID we add takes the From domain (as compose does), else ``hostname``.
    """
    if not raw.strip():
        raise InvalidInput("the message is empty", field="message")
    text = _LINE_ENDS.sub(b"\r\n", raw)
    head, sep, body = text.partition(b"\r\n\r\n")
    if not sep:
        if text.endswith(b"\r\n") or not text:
            head, body = text.removesuffix(b"\r\n"), b""
        else:
            head, body = text, b""
    fields = _fields(head)
    names = {f.name.lower() for f in fields}
    if "from" not in names:
        raise InvalidInput("the message has no From header", field="message")
    for unique in ("from", "subject", "date", "message-id", "sender"):
        if sum(f.name.lower() == unique for f in fields) > 1:
            raise InvalidInput(f"the message has more than one {unique.title()} header", field="message")
    control = {f.name.lower(): f.value for f in fields if f.name.lower().encode().startswith(CONTROL_PREFIX)}
    recipients = _addresses([f.value for f in fields if f.name.lower() in ("to", "cc", "bcc")])
    kept = [f for f in fields if f.name.lower() != "bcc" and not f.name.lower().encode().startswith(CONTROL_PREFIX)]
    added: list[bytes] = []
    if "date" not in names:
        added.append(b"Date: " + format_datetime(now or datetime.now(UTC)).encode() + b"\r\n")
    from_addresses = _addresses([f.value for f in kept if f.name.lower() == "from"])
    if not from_addresses:
        raise InvalidInput("the From header holds no address", field="message")
    message_id = next((f.value for f in kept if f.name.lower() == "message-id"), "")
    if not message_id:
        message_id = f"<{secrets.token_hex(16)}@{_id_domain(from_addresses[0], hostname)}>"
        added.append(b"Message-ID: " + message_id.encode() + b"\r\n")
    header_bytes = b"".join(line for f in kept for line in f.lines) + b"".join(added)
    subject = next((_decoded(f.value) for f in kept if f.name.lower() == "subject"), "")
    return Submitted(
        raw=header_bytes + b"\r\n" + body,
        from_addresses=from_addresses,
        header_recipients=recipients,
        subject=subject,
        message_id=message_id,
        idempotency_key=control.get(IDEMPOTENCY_HEADER) or None,
        tags=_tags(control.get(TAGS_HEADER, "")),
        route=control.get(ROUTE_HEADER) or None,
    )


def _fields(head: bytes) -> list[_Field]:
    fields: list[_Field] = []
    for number, line in enumerate(head.split(b"\r\n"), start=1):
        if line[:1] in (b" ", b"\t"):
            if not fields:
                raise InvalidInput("the message starts with a continuation line, not a header", field="message")
            fields[-1].lines.append(line + b"\r\n")
            continue
        name, colon, _ = line.partition(b":")
        if not colon or not _FIELD_NAME.fullmatch(name.rstrip(b" \t")):
            raise InvalidInput(
                f"header line {number} is not 'Name: value' (a blank line must separate the header from the body)",
                field="message",
            )
        if b"\x00" in line:
            raise InvalidInput(f"header line {number} contains NUL", field="message")
        fields.append(_Field(name.rstrip(b" \t").decode("ascii"), [line + b"\r\n"]))
    if not fields:
        raise InvalidInput("the message has no header", field="message")
    return fields


def _addresses(values: list[str]) -> list[str]:
    return [addr for _, addr in getaddresses(values) if "@" in addr]


def _id_domain(address: str, fallback: str) -> str:
    try:
        return parse_address(address).ascii_domain
    except (ValueError, UnicodeError):
        return fallback


def _decoded(value: str) -> str:
    try:
        return str(make_header(decode_header(value)))
    except (HeaderParseError, LookupError, UnicodeDecodeError, ValueError):
        return value


def _tags(value: str) -> list[str]:
    tags = [t.strip() for t in value.split(",") if t.strip()]
    if len(tags) > MAX_TAGS:
        raise InvalidInput(
            f"X-Mailgate-Tags holds {len(tags)} tags; at most {MAX_TAGS}", field="headers.X-Mailgate-Tags"
        )
    return tags
