"""Reading a message's MIME body into text parts, HTML parts and attachments.

fast-mail-parser (lazy mode: attachment bytes are decoded once, when read) does the work for nearly all
mail, about forty times faster than the stdlib. When it refuses a message, cannot decode an attachment's
transfer encoding, or decoded a body lossily (an unknown charset read as ASCII with U+FFFD, broken
sequences replaced silently, UTF-8 read as windows-1252), the stdlib reads the message instead, with its
lenient decoders and our charset chain; either way the defects say what was wrong. A top-level multipart
whose boundary is missing or wrong gets the boundary its body actually uses, when there is one, so the
parts are still found.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage, Message
from email.parser import BytesParser

import fast_mail_parser as fmp

from mailgate.mime import charsets, defects
from mailgate.mime.header_block import HeaderBlock, decode_words, param

MAX_DEPTH = 64  # MIME nesting walked by the stdlib reader; fast-mail-parser caps its own at 256
_BOUNDARY_LINE = re.compile(rb"^--([!-~][ -~]{0,69}?)[ \t]*\r?$", re.MULTILINE)
_ENTITY_FIELDS = ("content-type", "content-transfer-encoding", "content-disposition", "content-id")
_MESSAGE_TYPES = frozenset({"message/rfc822", "message/global"})
_BODY_TYPES = frozenset({"text/plain", "text/html"})
# fast-mail-parser's warnings about the header block, which ``header_block`` reads and reports itself.
_HEADER_WARNINGS = frozenset({"address-unparseable", "date-unparseable", "unterminated-header-block"})
_PARSER = BytesParser(_class=EmailMessage, policy=policy.default)


@dataclass(slots=True)
class Part:
    """A leaf that is not body text: an attachment, an inline image, a nested message, a calendar."""

    content_type: str
    filename: str | None
    content_id: str | None
    disposition: str | None
    data: bytes
    charset: str | None = None  # declared on the part; known only to the stdlib reader


@dataclass(slots=True)
class Body:
    text: list[str] = field(default_factory=list)
    html: list[str] = field(default_factory=list)
    parts: list[Part] = field(default_factory=list)
    defects: list[str] = field(default_factory=list)


def read_body(msg: bytes, head: HeaderBlock) -> Body:
    """The body of ``msg``, whose header block is ``head``; never raises for malformed mail.

    The MIME readers see the top-level entity only: the fields that shape the body, then the body. The
    rest of the header block is read by ``header_block``, and fast-mail-parser's cost grows with the
    square of the encoded-words in a header (100,000 of them in a Subject take it half a minute)."""
    found: list[str] = []
    fields = {name: value for name in _ENTITY_FIELDS if (value := head.first(name)) is not None}
    content_type = fields.get("content-type")
    if content_type is not None and content_type.lstrip().lower().startswith("multipart/"):
        fields["content-type"] = _checked_boundary(msg, head.body_offset, content_type, found)
    entity = "".join(f"{name}: {value}\r\n" for name, value in fields.items()).encode("utf-8", "surrogateescape")
    entity += b"\r\n" + msg[head.body_offset :]
    body = _read_fast(entity, found)
    if body is None:
        body = _read_stdlib(entity)
    body.defects[:0] = found
    return body


def _checked_boundary(msg: bytes, offset: int, content_type: str, found: list[str]) -> str:
    """``content_type`` itself when its boundary delimits the body; else one naming the boundary the body
    actually uses, when it has one that opens and closes parts."""
    boundary = param(content_type, "boundary")
    marker = b"--" + boundary.encode("utf-8", "surrogateescape") if boundary else None
    if marker is not None and (msg.startswith(marker, offset) or msg.find(b"\n" + marker, offset) >= 0):
        if msg.find(marker + b"--", offset) < 0:
            found.append(defects.MISSING_CLOSE_BOUNDARY)
        return content_type
    found.append(defects.MISSING_BOUNDARY)
    guess = _BOUNDARY_LINE.search(msg, offset)
    if guess is None or msg.count(b"--" + guess[1], offset) < 2:
        return content_type
    media = content_type.split(";", 1)[0].strip()
    return f'{media}; boundary="{guess[1].decode("ascii")}"'


def _read_fast(msg: bytes, found: list[str]) -> Body | None:
    """fast-mail-parser's reading, or None when the stdlib must read the message instead."""
    try:
        mail = fmp.parse_email(msg, mode="lazy")
        parts = [
            Part(
                content_type=attachment.mimetype.lower(),
                filename=attachment.filename or None,
                content_id=attachment.content_id or None,
                disposition=attachment.disposition.lower() if attachment.disposition else None,
                data=attachment.content,
            )
            for attachment in mail.attachments
        ]
    except fmp.HeaderParseError:
        found.append(defects.HEADER_PARSE)
        return None
    except fmp.DecodeError as exc:
        found.append(_decode_defect(str(exc)))
        return None
    except fmp.MimeStructureError:
        # Nesting past 256 levels or a payload past 100 MiB: the stdlib's parser would recurse once per
        # level for seconds and then fail too, so the body stays unread.
        found.append(defects.MIME_STRUCTURE)
        return Body()
    except fmp.ParseError:
        found.append(defects.MIME_STRUCTURE)
        return None
    if any("/" not in part.content_type for part in parts):
        return None  # "Content-Type: text": RFC 2045 5.2 makes it text/plain, which the stdlib applies
    if any(_misdecoded(text) for text in (*mail.text_plain, *mail.text_html)):
        return None
    body = Body(text=mail.text_plain, html=mail.text_html, parts=parts)
    for warning in mail.warnings:
        if warning.kind == "charset-fallback":
            return None  # it decoded as ASCII with U+FFFD; our chain does better, and names the label
        if warning.kind == "transfer-decode-lossy":
            body.defects.append(_decode_defect(warning.detail))
        elif warning.kind not in _HEADER_WARNINGS:
            body.defects.append(defects.with_detail("repaired", warning.kind))  # a kind newer than this code
    if not (body.text or body.html or body.parts) and msg.strip():
        return None
    return body


def _misdecoded(text: str) -> bool:
    """Whether fast-mail-parser decoded a body lossily without a warning: it replaces broken sequences
    with U+FFFD silently, and it reads ``us-ascii`` and ``iso-8859-1`` as windows-1252 (as browsers do),
    which garbles the UTF-8 that mail under an ASCII label often is ("cafÃ©"). Real cp1252 text almost
    never re-encodes to valid UTF-8."""
    if text.isascii():
        return False
    if "\ufffd" in text:
        return True
    try:
        text.encode("cp1252").decode("utf-8")
    except UnicodeError:
        return False
    return True


def _decode_defect(detail: str) -> str:
    lower = detail.lower()
    if "base64" in lower:
        return defects.BAD_BASE64
    if "quoted-printable" in lower:
        return defects.BAD_QUOTED_PRINTABLE
    return defects.BAD_TRANSFER_ENCODING


def _read_stdlib(msg: bytes) -> Body:
    """The last reader: when even it cannot read the body, the message keeps its headers and no body."""
    body = Body()
    try:
        message = _PARSER.parsebytes(msg)
    except RecursionError:  # its parser recurses once per nested multipart
        body.defects.append(defects.MIME_TOO_DEEP)
        return body
    except Exception:  # its header value parser has crashed on hostile parameters before
        body.defects.append(defects.MIME_STRUCTURE)
        return body
    _walk(message, body, 0)
    return body


def _walk(part: Message, body: Body, depth: int) -> None:
    if depth > MAX_DEPTH:
        body.defects.append(defects.MIME_TOO_DEEP)
        return
    content_type = part.get_content_type()
    if content_type in _MESSAGE_TYPES or not part.is_multipart():
        try:
            _leaf(part, content_type, body)
        except Exception:  # the stdlib's header parsers have crashed on hostile parameters; lose one part only
            body.defects.append(defects.MIME_STRUCTURE)
        _collect(part, body)  # after decoding, which records the transfer-encoding defects on the part
        return
    _collect(part, body)
    for child in part.get_payload():
        if isinstance(child, Message):
            _walk(child, body, depth + 1)


def _leaf(part: Message, content_type: str, body: Body) -> None:
    disposition = part.get_content_disposition()
    if content_type in _MESSAGE_TYPES:
        data = _message_bytes(part)
    else:
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
    charset = part.get_content_charset()
    if (content_type in _BODY_TYPES and disposition != "attachment") or content_type.startswith("multipart/"):
        text, defect = charsets.decode(data, charset)  # a multipart leaf lost its boundary: its body is text
        if defect is not None:
            body.defects.append(defect)
        (body.html if content_type == "text/html" else body.text).append(text)
        return
    filename = part.get_filename()
    content_id = str(part.get("content-id", "")).strip().strip("<>").strip()
    body.parts.append(
        Part(
            content_type=content_type,
            filename=decode_words(filename, body.defects) if filename else None,
            content_id=content_id or None,
            disposition=disposition,
            data=data,
            charset=charset,
        )
    )


def _message_bytes(part: Message) -> bytes:
    """A nested message as bytes: the stdlib keeps only the parsed form, so it is serialized again."""
    inner = part.get_payload(0) if isinstance(part.get_payload(), list) else None
    if not isinstance(inner, Message):
        payload = part.get_payload(decode=True)
        return payload if isinstance(payload, bytes) else b""
    try:
        return inner.as_bytes(policy=policy.compat32)
    except (ValueError, LookupError, UnicodeError):
        return b""


def _collect(part: Message, body: Body) -> None:
    for defect in part.defects:
        name = defects.from_stdlib(defect)
        if name is not None:
            body.defects.append(name)
