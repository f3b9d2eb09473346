"""Received mail, raw bytes in, one structured message out: what storage, rules and the API work from.

``parse_message`` never raises. Received mail is written by every program ever and by attackers, so each
fault is repaired as far as it can be and named in ``defects`` (see ``mailgate.mime.defects``); a message
that is mostly garbage still yields its size, whatever headers it has and its text. Only a bug of ours
ends in ``internal-error``, and then it is logged.

The pieces: ``header_block`` reads the top-level header fields (wire order, 8-bit text, RFC 2047),
``addresses`` and ``threads`` the structured ones, ``body`` the MIME structure (fast-mail-parser, the stdlib
when it fails), ``html`` sanitizes and derives text, ``quoting`` finds the visible reply, and ``tnef``
opens winmail.dat.
"""

from __future__ import annotations

import hashlib
import mimetypes
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from mailgate.mime import charsets, defects
from mailgate.mime.addresses import parse_address_list
from mailgate.mime.body import Body, Part, read_body
from mailgate.mime.header_block import HeaderBlock, decode_words, mbox_line_end, read_header_block, safe_text
from mailgate.mime.html import sanitize, sanitized_to_text, tags_stripped, too_deep
from mailgate.mime.quoting import reply_text
from mailgate.mime.threads import message_id, reference_ids
from mailgate.mime.tnef import TnefError, unpack
from mailgate.observability.logging import get_logger

__all__ = ["Address", "Attachment", "ParsedMessage", "parse_message"]

_log = get_logger(__name__)
_TNEF_TYPES = frozenset({"application/ms-tnef", "application/vnd.ms-tnef"})
_OCTET_STREAM = "application/octet-stream"


@dataclass(frozen=True, slots=True)
class Address:
    """One mailbox of an address header. ``address`` is "" for a group without members or an entry that
    is no mailbox; ``name`` then holds what the header said."""

    name: str  # decoded display name, "" if none
    address: str  # addr-spec, its domain's A-labels decoded to Unicode

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "address": self.address}


@dataclass(frozen=True, slots=True)
class Attachment:
    index: int  # position among this message's attachments, 0-based; the same for the same bytes
    filename: str | None  # RFC 2231 / RFC 2047 decoded
    content_type: str  # lower-case "type/subtype"
    size: int  # decoded byte length
    sha256: str  # hex digest of the decoded bytes
    content_id: str | None  # without <>
    inline: bool
    data: bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "filename": self.filename,
            "content_type": self.content_type,
            "size": self.size,
            "sha256": self.sha256,
            "content_id": self.content_id,
            "inline": self.inline,
        }


@dataclass(frozen=True, slots=True)
class ParsedMessage:
    headers: tuple[tuple[str, str], ...]  # every top-level field in wire order, RFC 2047 decoded
    subject: str
    from_: tuple[Address, ...]
    sender: Address | None
    reply_to: tuple[Address, ...]
    to: tuple[Address, ...]
    cc: tuple[Address, ...]
    bcc: tuple[Address, ...]
    date: datetime | None  # aware, UTC; None when missing or unparseable (with a defect)
    message_id: str | None  # ids without <>
    in_reply_to: str | None
    references: tuple[str, ...]
    text: str  # the text/plain parts; derived from the HTML when there is none
    html: str | None  # the text/html parts, sanitized
    reply_text: str  # ``text`` without quoted messages and signature
    attachments: tuple[Attachment, ...]  # with nested messages, and the files inside winmail.dat
    calendar: tuple[str, ...]  # text/calendar parts, decoded
    defects: tuple[str, ...]
    size: int  # len(raw)

    def to_json(self) -> dict[str, Any]:
        """Everything but the attachment bytes, as JSON-ready values."""
        return {
            "headers": [{"name": name, "value": value} for name, value in self.headers],
            "subject": self.subject,
            "from": [address.to_json() for address in self.from_],
            "sender": self.sender.to_json() if self.sender is not None else None,
            "reply_to": [address.to_json() for address in self.reply_to],
            "to": [address.to_json() for address in self.to],
            "cc": [address.to_json() for address in self.cc],
            "bcc": [address.to_json() for address in self.bcc],
            "date": self.date.isoformat() if self.date is not None else None,
            "message_id": self.message_id,
            "in_reply_to": self.in_reply_to,
            "references": list(self.references),
            "text": self.text,
            "html": self.html,
            "reply_text": self.reply_text,
            "attachments": [attachment.to_json() for attachment in self.attachments],
            "calendar": list(self.calendar),
            "defects": list(self.defects),
            "size": self.size,
        }


def parse_message(raw: bytes) -> ParsedMessage:
    """Parse one received message. Never raises, whatever the bytes."""
    try:
        return _parse(bytes(raw))
    except Exception:
        _log.exception("mime.parse_failed", size=len(raw))
        return _unparsed(len(raw))


def _parse(raw: bytes) -> ParsedMessage:
    found: list[str] = [defects.NUL_BYTES] if b"\x00" in raw else []  # every step appends what it repaired
    start = mbox_line_end(raw)
    msg = raw[start:] if start else raw
    head = read_header_block(msg)
    found += head.defects
    body = read_body(msg, head)
    found += body.defects
    headers = tuple((name, decode_words(value, found) if "=?" in value else value) for name, value in head.raw)
    addresses = _Addresses(head, found)
    from_, sender, reply_to = addresses.read("from"), addresses.read("sender"), addresses.read("reply-to")
    to, cc, bcc = addresses.read("to"), addresses.read("cc"), addresses.read("bcc")
    date = _date(head, found)
    text, html = _bodies(body, found)
    attachments, calendar = _attachments(body, found)
    return ParsedMessage(
        headers=headers,
        subject=next((value for name, value in headers if name.lower() == "subject"), ""),
        from_=from_,
        sender=sender[0] if sender else None,
        reply_to=reply_to,
        to=to,
        cc=cc,
        bcc=bcc,
        date=date,
        message_id=message_id(head.first("message-id")),
        in_reply_to=next(iter(reference_ids(head.first("in-reply-to"))), None),
        references=reference_ids(head.first("references")),
        text=text,
        html=html,
        reply_text=reply_text(text),
        attachments=attachments,
        calendar=calendar,
        defects=tuple(dict.fromkeys(found)),
        size=len(raw),
    )


class _Addresses:
    """Reads address fields of one header block, recording a ``bad-address:<field>`` defect per field."""

    __slots__ = ("found", "head")

    def __init__(self, head: HeaderBlock, found: list[str]) -> None:
        self.head = head
        self.found = found
        if head.first("from") is None:
            found.append(defects.NO_FROM)

    def read(self, name: str) -> tuple[Address, ...]:
        value = self.head.first(name)
        if value is None:
            return ()
        mailboxes, bad = parse_address_list(value, self.found)
        if bad:
            self.found.append(defects.with_detail(defects.BAD_ADDRESS, name))
        return tuple(Address(display, spec) for display, spec in mailboxes)


def _date(head: HeaderBlock, found: list[str]) -> datetime | None:
    value = head.first("date")
    if value is None:
        found.append(defects.NO_DATE)
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        found.append(defects.BAD_DATE)
        return None
    if parsed.tzinfo is None:  # "-0000": the time is UTC, the zone unknown (RFC 5322 3.3)
        return parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # year 1 or 9999 shifted past the representable range
        found.append(defects.BAD_DATE)
        return None


def _bodies(body: Body, found: list[str]) -> tuple[str, str | None]:
    """The text and the sanitized HTML; text comes from the HTML when no text part has any."""
    sanitized, unsafe = [], []
    for part in map(_clean, body.html):
        if too_deep(part):
            found.append(defects.HTML_TOO_DEEP)
            unsafe.append(tags_stripped(part))
        else:
            sanitized.append(sanitize(part))
    html = "\n".join(sanitized) if sanitized else None
    text = "\n".join(map(_clean, body.text))
    if not text.strip() and (html is not None or unsafe):
        text = "\n".join([sanitized_to_text(html)] if html is not None else unsafe)
    return text, html


def _attachments(body: Body, found: list[str]) -> tuple[tuple[Attachment, ...], tuple[str, ...]]:
    """The attachments in part order, winmail.dat replaced by its files, and the calendar texts.

    A text/calendar part is an alternative of the body unless it is marked as an attachment or named."""
    parts: list[Part] = []
    calendar: list[str] = []
    for part in body.parts:
        if part.content_type == "text/calendar":
            text, defect = charsets.decode(part.data, part.charset)
            calendar.append(_clean(text))
            if defect is not None:
                found.append(defect)
            if part.disposition != "attachment" and not part.filename:
                continue
        if part.content_type in _TNEF_TYPES or (part.filename or "").lower() == "winmail.dat":
            try:
                files = unpack(part.data)
            except TnefError:
                found.append(defects.BAD_TNEF)
                files = []
            if files:
                parts.extend(
                    Part(
                        content_type=file.content_type or _guess_type(file.filename),
                        filename=file.filename,
                        content_id=file.content_id,
                        disposition="attachment",
                        data=file.data,
                    )
                    for file in files
                )
                continue
        parts.append(part)
    return tuple(_attachment(i, part) for i, part in enumerate(parts)), tuple(calendar)


def _attachment(index: int, part: Part) -> Attachment:
    content_type = part.content_type if part.content_type.count("/") == 1 else _OCTET_STREAM
    if content_type == _OCTET_STREAM and part.filename:
        content_type = _guess_type(part.filename)
    return Attachment(
        index=index,
        filename=safe_text(part.filename) if part.filename else None,
        content_type=content_type,
        size=len(part.data),
        sha256=hashlib.sha256(part.data).hexdigest(),
        content_id=safe_text(part.content_id) if part.content_id else None,
        inline=part.disposition == "inline" or (part.disposition is None and part.content_id is not None),
        data=part.data,
    )


def _guess_type(filename: str | None) -> str:
    guessed = mimetypes.guess_type(filename or "", strict=False)[0]
    return guessed.lower() if guessed else _OCTET_STREAM


def _clean(text: str) -> str:
    """Body text with LF line ends and no NUL (which PostgreSQL text and many renderers refuse)."""
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def _unparsed(size: int) -> ParsedMessage:
    return ParsedMessage(
        headers=(),
        subject="",
        from_=(),
        sender=None,
        reply_to=(),
        to=(),
        cc=(),
        bcc=(),
        date=None,
        message_id=None,
        in_reply_to=None,
        references=(),
        text="",
        html=None,
        reply_text="",
        attachments=(),
        calendar=(),
        defects=(defects.INTERNAL_ERROR,),
        size=size,
    )
