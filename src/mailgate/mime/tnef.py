"""Unpacking winmail.dat: the files Outlook wraps into one ``application/ms-tnef`` part ([MS-OXTNEF]).

Only what a gateway shows is read: each attachment's bytes, its name and, when Outlook recorded them,
its MIME type and Content-ID. The message body (compressed RTF) and the other MAPI properties are
skipped by their declared lengths. Checksums are not verified: Outlook writes wrong ones often enough
that refusing them would only lose files. Every length is bounds-checked, so a hostile stream ends the
reading with ``TnefError`` or a shorter result, never with an overrun.

A stream is a signature, a legacy key, then attributes: level (1 message, 2 attachment), a 32-bit id
whose low half names the attribute, a length, the value and a checksum. ``attAttachRenddata`` starts
each attachment; ``attAttachment`` holds its MAPI properties, a counted list of typed values.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field

SIGNATURE = 0x223E9F78
_LEVEL_MESSAGE = 1
_LEVEL_ATTACHMENT = 2
_ATT_OEM_CODEPAGE = 0x9007
_ATT_ATTACH_RENDDATA = 0x9002
_ATT_ATTACH_TITLE = 0x8010
_ATT_ATTACH_DATA = 0x800F
_ATT_ATTACHMENT = 0x9005

_PR_DISPLAY_NAME = 0x3001
_PR_ATTACH_DATA = 0x3701  # PT_BINARY for files, PT_OBJECT for embedded messages and OLE objects
_PR_ATTACH_FILENAME = 0x3704
_PR_ATTACH_LONG_FILENAME = 0x3707
_PR_ATTACH_MIME_TAG = 0x370E
_PR_ATTACH_CONTENT_ID = 0x3712
_WANTED = frozenset(
    {_PR_DISPLAY_NAME, _PR_ATTACH_DATA, _PR_ATTACH_FILENAME, _PR_ATTACH_LONG_FILENAME, _PR_ATTACH_MIME_TAG,
     _PR_ATTACH_CONTENT_ID}
)  # fmt: skip

_PT_STRING8 = 0x001E
_PT_UNICODE = 0x001F
_PT_BINARY = 0x0102
_PT_OBJECT = 0x000D
_MULTI_VALUED = 0x1000
_VARIABLE = frozenset({_PT_STRING8, _PT_UNICODE, _PT_BINARY, _PT_OBJECT, 0x00FB, 0x00FD, 0x00FE})
# Fixed-size property types and the bytes each value takes in the stream (padded to 4).
_FIXED = {0x0001: 4, 0x0002: 4, 0x0003: 4, 0x0004: 4, 0x0005: 8, 0x0006: 8, 0x0007: 8, 0x000A: 4, 0x000B: 4,
          0x0014: 8, 0x0040: 8, 0x0048: 16}  # fmt: skip
_IID_SIZE = 16  # a PT_OBJECT value starts with the interface id of the object
MAX_ATTACHMENTS = 1000
MAX_PROPERTIES = 10_000


class TnefError(ValueError):
    """The bytes are not a TNEF stream, or no attachment could be read from it."""


@dataclass(frozen=True, slots=True)
class TnefFile:
    filename: str | None
    content_type: str | None  # PR_ATTACH_MIME_TAG, when Outlook recorded it
    content_id: str | None
    data: bytes


@dataclass(slots=True)
class _Attachment:
    title: str | None = None
    data: bytes | None = None
    props: dict[int, str | bytes] = field(default_factory=dict)


def unpack(data: bytes) -> list[TnefFile]:
    """The files inside a TNEF stream, in order. Raises ``TnefError`` when it is not one."""
    if len(data) < 6 or int.from_bytes(data[:4], "little") != SIGNATURE:
        raise TnefError("no TNEF signature")
    codepage = "cp1252"
    attachments: list[_Attachment] = []
    pos = 6
    while pos + 9 <= len(data) and len(attachments) <= MAX_ATTACHMENTS:
        level = data[pos]
        attribute = int.from_bytes(data[pos + 1 : pos + 5], "little") & 0xFFFF
        end = pos + 9 + int.from_bytes(data[pos + 5 : pos + 9], "little")
        if end > len(data):
            break  # truncated: keep what was read before
        value = data[pos + 9 : end]
        pos = end + 2  # the checksum
        if level == _LEVEL_MESSAGE and attribute == _ATT_OEM_CODEPAGE and len(value) >= 4:
            codepage = _codepage(int.from_bytes(value[:4], "little"))
        elif level == _LEVEL_ATTACHMENT:
            if attribute == _ATT_ATTACH_RENDDATA or not attachments:
                attachments.append(_Attachment())
            current = attachments[-1]
            if attribute == _ATT_ATTACH_TITLE:
                current.title = _string8(value, codepage)
            elif attribute == _ATT_ATTACH_DATA:
                current.data = value
            elif attribute == _ATT_ATTACHMENT:
                _read_properties(value, codepage, current.props)
    return [file for file in map(_file, attachments) if file is not None]


def _file(attachment: _Attachment) -> TnefFile | None:
    props = attachment.props
    data = attachment.data if attachment.data is not None else props.get(_PR_ATTACH_DATA)
    if not isinstance(data, bytes):
        return None
    name = next(
        (
            value
            for value in (
                props.get(_PR_ATTACH_LONG_FILENAME),
                attachment.title,
                props.get(_PR_ATTACH_FILENAME),
                props.get(_PR_DISPLAY_NAME),
            )
            if isinstance(value, str) and value
        ),
        None,
    )
    mime = props.get(_PR_ATTACH_MIME_TAG)
    cid = props.get(_PR_ATTACH_CONTENT_ID)
    return TnefFile(
        filename=name,
        content_type=mime.strip().lower() if isinstance(mime, str) and "/" in mime else None,
        content_id=cid.strip().strip("<>") if isinstance(cid, str) and cid.strip() else None,
        data=data,
    )


class _Cursor:
    """Little-endian reads over one property block; an overrun is a ``TnefError``."""

    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, size: int) -> bytes:
        if size < 0 or self.pos + size > len(self.buf):
            raise TnefError("property block overrun")
        chunk = self.buf[self.pos : self.pos + size]
        self.pos += size
        return chunk

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "little")

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "little")

    def padded(self, size: int) -> bytes:
        chunk = self.take(size)
        self.take(-size % 4)
        return chunk


def _read_properties(block: bytes, codepage: str, into: dict[int, str | bytes]) -> None:
    """The wanted MAPI properties of one block, into ``into``; a malformed block ends the reading early,
    keeping the properties read before it."""
    cursor = _Cursor(block)
    try:
        count = cursor.u32()
        for _ in range(min(count, MAX_PROPERTIES)):
            kind, prop = cursor.u16(), cursor.u16()
            if prop >= 0x8000:  # a named property: a GUID, then a numeric id or a UTF-16 name
                cursor.take(16)
                if cursor.u32() == 0:
                    cursor.take(4)
                else:
                    cursor.padded(cursor.u32())
            base = kind & ~_MULTI_VALUED
            if base in _VARIABLE:
                values = [cursor.padded(cursor.u32()) for _ in range(cursor.u32())]
            elif base in _FIXED:
                repeat = cursor.u32() if kind & _MULTI_VALUED else 1
                values = [cursor.take(_FIXED[base]) for _ in range(repeat)]
            else:
                return  # an unknown type has an unknown size: nothing after it can be located
            if prop in _WANTED and values and prop not in into:
                into[prop] = _property_value(base, values[0], codepage)
    except TnefError:
        return


def _property_value(kind: int, raw: bytes, codepage: str) -> str | bytes:
    if kind == _PT_STRING8:
        return _string8(raw, codepage)
    if kind == _PT_UNICODE:
        return raw.decode("utf-16-le", "replace").split("\0", 1)[0]
    if kind == _PT_OBJECT:
        return raw[_IID_SIZE:]
    return raw


def _string8(raw: bytes, codepage: str) -> str:
    return raw.split(b"\0", 1)[0].decode(codepage, "replace")


def _codepage(number: int) -> str:
    name = f"cp{number}"
    try:
        codecs.lookup(name)
    except LookupError:
        return "cp1252"
    return name
