"""Turning the octets of received mail into text: the declared charset, then UTF-8, then cp1252.

Mail labels its charsets wrongly all the time: ``us-ascii`` on UTF-8 text, ``iso-8859-1`` on cp1252
quotes, invented names (``chinesebig5``, ``default``, ``unknown-8bit``). The chain below tries the label
(through the supersets that mail clients and browsers actually use for it, as the WHATWG Encoding
standard does), then UTF-8 (which rarely decodes text that is not UTF-8), then the label again with
replacement characters for the broken sequences (when it names a real charset), else cp1252 with
replacement, which always succeeds. A result that needed the chain carries a defect name, so nothing is silently
guessed.
"""

from __future__ import annotations

import codecs
import functools

from mailgate.mime.defects import CHARSET_FALLBACK, with_detail

# Labels seen in mail that Python does not know, or knows only as a narrower set than what senders use.
_ALIASES = {
    "chinesebig5": "big5hkscs",
    "big5": "big5hkscs",
    "x-x-big5": "big5hkscs",
    "cn-big5": "big5hkscs",
    "gb2312": "gb18030",
    "gb_2312-80": "gb18030",
    "csgb2312": "gb18030",
    "euc-cn": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "chinese": "gb18030",
    "ks_c_5601-1987": "cp949",
    "ks_c_5601": "cp949",
    "euc-kr": "cp949",
    "korean": "cp949",
    "shift_jis": "cp932",
    "shift-jis": "cp932",
    "sjis": "cp932",
    "x-sjis": "cp932",
    "windows-31j": "cp932",
    "iso-2022-jp": "iso2022_jp_ext",
    "iso-8859-1": "cp1252",
    "latin1": "cp1252",
    "iso-8859-8-i": "iso-8859-8",
    "iso-8859-6-i": "iso-8859-6",
    "iso-8859-6-e": "iso-8859-6",
    "x-mac-roman": "mac-roman",
    "tis-620": "cp874",
    "iso-8859-11": "cp874",
}
# Labels that say "I do not know": no charset is declared, go straight to the chain.
_UNKNOWN = frozenset({"", "default", "unknown", "unknown-8bit", "x-unknown", "x-user-defined", "8bit", "none"})


# Encodings whose octets are all ASCII: escape sequences (ISO-2022) or base64 runs (UTF-7) carry the text.
_SEVEN_BIT = frozenset(
    {"iso2022_jp", "iso2022_jp_1", "iso2022_jp_2", "iso2022_jp_2004", "iso2022_jp_3", "iso2022_jp_ext",
     "iso2022_kr", "utf-7", "hz"}
)  # fmt: skip


@functools.lru_cache(maxsize=256)
def codec_for(label: str | None) -> str | None:
    """The Python codec for a charset label, or None when the label names no text encoding we know.

    Codecs that are not text encodings (``base64``, ``rot13``, ``zlib``) are refused: a hostile label must
    not turn a body into the output of a transform."""
    if label is None:
        return None
    name = label.strip().strip("\"'").lower()
    if name in _UNKNOWN:
        return None
    name = _ALIASES.get(name, name)
    for candidate in (name, name.removeprefix("x-"), name.replace("cp-", "cp")):
        try:
            info = codecs.lookup(candidate)
        except (LookupError, ValueError):
            continue
        if info._is_text_encoding:
            return info.name
    return None


def decode(data: bytes, label: str | None) -> tuple[str, str | None]:
    """``data`` as text and the defect to record (None when the declared charset decoded it cleanly).

    Pure ASCII decodes the same under every label but the 7-bit stateful ones, so it skips decoding."""
    codec = codec_for(label)
    if data.isascii() and codec not in _SEVEN_BIT:
        return data.decode("ascii"), None
    if codec is not None:
        try:
            return data.decode(codec), None
        except UnicodeDecodeError:
            pass
    defect = with_detail(CHARSET_FALLBACK, label or "none")
    if codec != "utf-8":
        try:
            return data.decode("utf-8"), defect
        except UnicodeDecodeError:
            pass
    if codec is not None and codec != "ascii":
        # A real charset with a few broken sequences (a truncated multi-byte character, a stray byte): the
        # rest of the text is in it, and cp1252 would garble all of it. ASCII says nothing about 8-bit text.
        return data.decode(codec, "replace"), defect
    return data.decode("cp1252", "replace"), defect


def decode_header_octets(data: bytes, label: str | None) -> tuple[str, bool]:
    """A raw 8-bit header value: UTF-8 (RFC 6532) first, then the message's declared charset, then cp1252.

    Returns the text and whether it had to be guessed (anything but ASCII or UTF-8)."""
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        pass
    codec = codec_for(label)
    if codec is not None:
        try:
            return data.decode(codec), True
        except UnicodeDecodeError:
            pass
    return data.decode("cp1252", "replace"), True
