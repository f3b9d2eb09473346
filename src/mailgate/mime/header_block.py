"""Reading a message's top-level header block from raw octets: wire order, unfolding, 8-bit text, RFC 2047.

fast-mail-parser reads the MIME structure, but its header mapping groups values by name (so the wire
order of interleaved ``Received``/``DKIM-Signature`` lines is lost), decodes raw 8-bit values as Latin-1
without saying so, takes an mbox ``From `` line for a header, and decodes encoded-words in quadratic time.
The block is small, so reading it here costs little and gives each field exactly once, in order, with a
defect for every guess; the MIME readers are handed only the fields that shape the body.

Values come back raw (unfolded, octets decoded, RFC 2047 words intact) for the parsers of structured
fields (addresses, message ids), which must not see a decoded ``,`` or ``<`` as syntax; ``decode_words``
turns a value into the text shown and matched by rules.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field

from mailgate.mime import charsets, defects

# One field: an ftext name, optional obsolete whitespace before the colon, the value and its folds;
# _FIELDS matches the run of fields a block starts with, so its end is where the block ends.
_FIELD_SOURCE = rb"([!-9;-~]+)[ \t]*:([^\n]*(?:\n[ \t][^\n]*)*)"
_FIELD = re.compile(_FIELD_SOURCE)
_FIELD_TEXT = re.compile(_FIELD_SOURCE.decode())
_FIELDS = re.compile(rb"(?:[!-9;-~]+[ \t]*:[^\n]*(?:\n[ \t][^\n]*)*(?:\n|\Z))*")
_WORD = re.compile(r"=\?([^?\s]+)\?([QqBb])\?([^?]*)\?=")
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")  # missing padding is common and harmless: not a defect
_PARAM = re.compile(r';\s*([^\s=;"]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;\s]*)')
# Text that reaches JSON, storage and other headers: no NUL (PostgreSQL text refuses it), no line breaks
# (a decoded encoded-word may hold CR LF, and a rule that copies the value must not write a new line).
_UNSAFE = str.maketrans({"\x00": "\ufffd", "\r": " ", "\n": " "})
_UNSAFE_CHARS = re.compile("[\x00\r\n]")
_WSP = " \t"


@dataclass(slots=True)
class HeaderBlock:
    """The fields of a header block, where its body starts, and what was wrong with it."""

    raw: list[tuple[str, str]] = field(default_factory=list)
    body_offset: int = 0
    defects: list[str] = field(default_factory=list)
    firsts: dict[str, str] = field(default_factory=dict)  # lower-case name -> raw value of its first field

    def first(self, name: str) -> str | None:
        """The raw value of the first field called ``name`` (lower-case), or None."""
        return self.firsts.get(name)


def mbox_line_end(raw: bytes) -> int:
    """Offset past an mbox ``From `` separator line at the very start, else 0: it is no header field."""
    if raw.startswith(b"From "):
        end = raw.find(b"\n")
        return len(raw) if end < 0 else end + 1
    return 0


def read_header_block(raw: bytes) -> HeaderBlock:
    """Split ``raw`` into its header fields and find its body; never raises.

    The block ends at the first empty line or, as the stdlib and fast-mail-parser both do, at the first
    line that is neither a field nor a fold (recorded as ``missing-header-separator``). Values come back
    unfolded and stripped, without NUL, CR or LF (``safe_text``)."""
    block = HeaderBlock()
    start = 0
    while raw.startswith((b" ", b"\t"), start):  # a fold with no field before it: skipped
        block.defects.append(defects.BAD_HEADER_LINE)
        end = raw.find(b"\n", start)
        start = len(raw) if end < 0 else end + 1
    run = _FIELDS.match(raw, start)
    end = run.end() if run is not None else start
    if raw.startswith(b"\n", end):
        block.body_offset = end + 1
    elif raw.startswith(b"\r\n", end):
        block.body_offset = end + 2
    else:
        block.body_offset = end
        if end < len(raw):
            block.defects.append(defects.MISSING_HEADER_SEPARATOR)
    head = raw[start:end]
    if b"\n" in head and head.count(b"\n") != head.count(b"\r\n"):
        block.defects.append(defects.LF_LINE_ENDS)
    if head.isascii():  # nearly always: one decode for the block, then str operations only
        pairs = _FIELD_TEXT.findall(head.decode("ascii"))
        block.raw = [(name, _unfold(value)) for name, value in pairs]
    else:
        block.raw = _decode_fields(_FIELD.findall(head), block.defects)
    firsts = block.firsts
    for name, value in reversed(block.raw):
        firsts[name.lower()] = value
    return block


def _unfold(value: str) -> str:
    if "\n" in value:
        value = value.replace("\r\n", "").replace("\n", "")
    value = value.strip(" \t\r")
    return safe_text(value) if "\r" in value or "\x00" in value else value


def _decode_fields(fields: list[tuple[bytes, bytes]], found: list[str]) -> list[tuple[str, str]]:
    """Fields with raw 8-bit values: each decoded by ``charsets.decode_header_octets``."""
    charset = _root_charset(fields)
    guessed = False
    decoded = []
    for name, value in fields:
        if value.isascii():
            text = value.decode("ascii")
        else:
            text, guess = charsets.decode_header_octets(value, charset)
            guessed = guessed or guess
        decoded.append((name.decode("ascii"), _unfold(text)))
    if guessed:
        found.append(defects.EIGHT_BIT_HEADER)
    return decoded


def decode_words(value: str, found: list[str]) -> str:
    """``value`` (text as ``read_header_block`` returns it) with its RFC 2047 encoded-words decoded, and
    made safe again (a word may decode to CR LF); defects are appended to ``found``.

    Whitespace between two adjacent words is dropped (RFC 2047 6.2), and adjacent words in the same
    charset are decoded together, because encoders split multi-byte characters across words."""
    if "=?" not in value:
        return value
    out: list[str] = []
    run: list[tuple[str, list[bytes]]] = []  # the current run of adjacent words: (charset, their octets)
    pos = 0
    for match in _WORD.finditer(value):
        between = value[pos : match.start()]
        if not run or between.strip(_WSP):
            _flush(run, out, found)
            out.append(between)
        charset = match[1].split("*", 1)[0].lower()  # RFC 2231 5: a language suffix may follow
        data = _word_octets(match[2], match[3])
        if data is None or (match[2] in "Bb" and not _BASE64.fullmatch(match[3])):
            found.append(defects.BAD_ENCODED_WORD)  # base64 outside its alphabet is decoded without it
        if data is None:
            _flush(run, out, found)
            out.append(match[0])
        elif run and run[-1][0] == charset:
            run[-1][1].append(data)
        else:
            run.append((charset, [data]))
        pos = match.end()
    _flush(run, out, found)
    out.append(value[pos:])
    return safe_text("".join(out))


def safe_text(value: str) -> str:
    """``value`` without NUL, CR or LF (see ``_UNSAFE``)."""
    return value.translate(_UNSAFE) if _UNSAFE_CHARS.search(value) else value


def param(value: str | None, name: str) -> str | None:
    """A parameter of a ``Content-Type``-like value, unquoted; None when absent. Plain RFC 2045 syntax only:
    this serves the charset and boundary checks, not filenames (the MIME readers decode those)."""
    if not value:
        return None
    lower = name.lower()
    for match in _PARAM.finditer(value):
        if match[1].lower() == lower:
            found = match[2]
            if found.startswith('"'):
                found = re.sub(r"\\(.)", r"\1", found[1:-1])
            return found
    return None


def _root_charset(fields: list[tuple[bytes, bytes]]) -> str | None:
    """The charset the top-level Content-Type declares: the best guess for raw 8-bit header text, since the
    same program wrote both."""
    for name, value in fields:
        if name.lower() == b"content-type":
            return param(value.decode("ascii", "replace"), "charset")
    return None


def _word_octets(encoding: str, text: str) -> bytes | None:
    data = text.encode("utf-8", "surrogateescape")
    if encoding in "Qq":
        return binascii.a2b_qp(data, header=True)
    try:
        return base64.b64decode(data + b"=" * (-len(data) % 4))
    except binascii.Error:
        return None


def _flush(run: list[tuple[str, list[bytes]]], out: list[str], found: list[str]) -> None:
    for charset, data in run:
        text, defect = charsets.decode(b"".join(data), charset)
        if defect is not None:
            found.append(defect)
        out.append(text)
    run.clear()
