"""Which headers a caller may add, and how every header built from caller text is written.

Header lines that carry caller text are rendered here, not by the stdlib folder, because the stdlib
re-parses what it is given: it decodes RFC 2047 encoded-words found in plain input (so a subject of
``=?utf-8?q?a=0D=0ABcc:_x@y?=`` is written as a real ``Bcc`` line on Python < 3.11.10, CVE-2024-6923),
it encodes long structured values such as ``List-Unsubscribe`` as encoded-words (which breaks them), and
its parser keeps the space between encoded-words in display names. Rendering ourselves keeps the bytes
exactly as reasoned about here; ``RawHeader`` hands them to ``EmailMessage`` unchanged.
"""

from __future__ import annotations

import base64
import re
import string
from collections.abc import Mapping, Sequence
from email.errors import HeaderParseError
from email.header import decode_header
from typing import Any
from urllib.parse import quote

from mailgate.domain.address import Address
from mailgate.domain.errors import InvalidInput

MAX_LINE_OCTETS = 998  # RFC 5322 2.1.1, excluding CRLF
FOLD_WIDTH = 78  # RFC 5322 2.1.1 "SHOULD"
MAX_ENCODED_WORD = 75  # RFC 2047 2

# Headers mailgate owns: addressing and threading identity, the MIME structure, and trace/authentication
# headers whose forgery would mislead receivers (or our own inbound checks when mail loops back).
STRUCTURAL_HEADERS = frozenset(
    {
        "from",
        "sender",
        "to",
        "cc",
        "bcc",
        "reply-to",
        "subject",
        "date",
        "message-id",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
        "content-disposition",
        "return-path",
        "received",
        "received-spf",
        "dkim-signature",
        "authentication-results",
    }
)
# ``content-`` covers Content-ID, Content-Location and the like: compose owns the MIME entity.
STRUCTURAL_PREFIXES = ("arc-", "resent-", "x-mailgate-", "content-")

_WSP = " \t"
_FTEXT = frozenset(chr(c) for c in range(33, 127)) - {":"}
_CONTROLS = re.compile("[\x00-\x08\x0a-\x1f\x7f]")
_INJECTION = re.compile("[\r\n\x00]")
_ENCODED_WORD = re.compile(r"=\?[^?\s]+\?[qQbB]\?[^?\s]*\?=")
_ATOM_PHRASE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?: [A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_PIECES = re.compile(r"[ \t]*[^ \t]+")
_Q_SAFE = frozenset(string.ascii_letters + string.digits + "!*+-/")  # RFC 2047 5(3): safe even in a phrase
_ATTR_SAFE = "!#$&+^`|"  # RFC 2231 attribute-char beyond what quote() keeps


class RawHeader:
    """A header line the stdlib must write exactly as rendered.

    ``EmailPolicy`` stores a value that has a matching ``name`` as is and folds it by calling its
    ``fold`` (documented in ``email.policy``); that is the one supported way past its re-parsing.
    """

    __slots__ = ("lines", "name")

    def __init__(self, name: str, lines: Sequence[str]) -> None:
        self.name = name
        self.lines = list(lines)

    def fold(self, *, policy: Any) -> str:
        linesep: str = policy.linesep
        return "".join(line + linesep for line in self.lines)

    @property
    def longest_line(self) -> int:
        """Octets in the longest line (UTF-8 local parts make octets and characters differ)."""
        return max(len(line.encode()) for line in self.lines)

    def __str__(self) -> str:
        return "".join(self.lines)[len(self.name) + 1 :].lstrip(_WSP)

    def __repr__(self) -> str:
        return f"RawHeader({self.name!r}, {self.lines!r})"


def is_structural(name: str) -> bool:
    lower = name.lower()
    return lower in STRUCTURAL_HEADERS or lower.startswith(STRUCTURAL_PREFIXES)


def validate_extra_headers(headers: Mapping[str, str]) -> list[tuple[str, str]]:
    """Check caller-supplied headers; raise ``InvalidInput`` naming ``headers.<name>`` on the first fault.

    Returns the pairs with surrounding whitespace removed (it is not part of a header's value).
    """
    return [check_header(name, value) for name, value in headers.items()]


def check_header(name: str, value: str) -> tuple[str, str]:
    """One extra header; see ``validate_extra_headers``. Compose calls it again so that a ``Draft`` built
    by hand cannot carry ``Bcc`` or an injected line either."""
    field = f"headers.{name}"
    if not isinstance(name, str) or not name:
        raise InvalidInput("header name is empty", field=field)
    if not set(name) <= _FTEXT:
        raise InvalidInput(
            f"header name {name!r} may only contain printable ASCII other than ':' (RFC 5322 ftext)", field=field
        )
    if is_structural(name):
        raise InvalidInput(f"{name} is set by mailgate and cannot be supplied as an extra header", field=field)
    if not isinstance(value, str):
        raise InvalidInput(f"header {name} must be a string", field=field)
    if _INJECTION.search(value):
        raise InvalidInput(f"header {name} contains CR, LF or NUL (header injection)", field=field)
    if _CONTROLS.search(value):
        raise InvalidInput(f"header {name} contains a control character", field=field)
    if len(value) > MAX_LINE_OCTETS:
        raise InvalidInput(
            f"header {name} is {len(value)} characters long; the limit is {MAX_LINE_OCTETS}", field=field
        )
    _require_unicode(value, f"header {name}", field)
    if _smuggles_line_break(value):
        raise InvalidInput(
            f"header {name} holds an RFC 2047 encoded-word that decodes to CR, LF or NUL (header injection)",
            field=field,
        )
    value = value.strip(_WSP)
    if verbatim_header(name, value).longest_line > MAX_LINE_OCTETS:
        raise InvalidInput(
            f"header {name} cannot be folded into lines of at most {MAX_LINE_OCTETS} octets; "
            "put whitespace into long values",
            field=field,
        )
    return name, value


# ----- rendering -----


def text_header(name: str, text: str) -> RawHeader:
    """Free text (Subject) that must read back exactly: plain when it safely can, else encoded-words."""
    if _is_plain(text):
        header = RawHeader(name, _fold_at_whitespace(name, text))
        if header.longest_line <= MAX_LINE_OCTETS:
            return header
    first = FOLD_WIDTH - len(name) - 2
    return RawHeader(name, _fold_tokens(name, encode_words(text, first_width=first)))


def verbatim_header(name: str, value: str) -> RawHeader:
    """A caller-supplied value: ASCII is written as given (it may be structured, e.g. List-Unsubscribe,
    where encoded-words are not allowed), folded only at its own whitespace; non-ASCII can only be
    unstructured text, so it is encoded."""
    if value.isascii():
        return RawHeader(name, _fold_at_whitespace(name, value))
    first = FOLD_WIDTH - len(name) - 2
    return RawHeader(name, _fold_tokens(name, encode_words(value, first_width=first)))


def address_header(name: str, addresses: Sequence[Address]) -> RawHeader:
    """An address list; domains in A-label form so that the line is ASCII unless a local part is not."""
    tokens: list[str] = []
    for i, address in enumerate(addresses):
        phrase = phrase_tokens(address.display_name)
        mailbox = [*phrase, f"<{address.ascii_addr_spec}>"] if phrase else [address.ascii_addr_spec]
        if i < len(addresses) - 1:
            mailbox[-1] += ","
        tokens.extend(mailbox)
    return RawHeader(name, _fold_tokens(name, tokens))


def phrase_tokens(display_name: str) -> list[str]:
    """A display name as atoms, one quoted-string, or encoded-words; each token may be folded after.

    Plain forms only when they read back exactly: no ``=?`` (readers would decode it), no edge or tab
    whitespace, and short enough not to need folding inside a quoted-string.
    """
    if not display_name:
        return []
    if _is_plain(display_name) and "\t" not in display_name:
        if _ATOM_PHRASE.fullmatch(display_name) and len(display_name) <= FOLD_WIDTH - 2:
            return display_name.split(" ")
        quoted = '"' + display_name.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if len(quoted) <= FOLD_WIDTH - 2:
            return [quoted]
    return encode_words(display_name)


def content_disposition_header(disposition: str, filename: str) -> RawHeader:
    """``filename="..."`` for plain ASCII names, else RFC 2231 (``filename*=utf-8''...``, continued
    ``filename*0*=``... when long): RFC 2047 words are not allowed in parameters and the stdlib's quoted
    form would let a reader decode ``=?...?=`` inside it."""
    name = "Content-Disposition"
    plain = _is_plain(filename) and not set(filename) & set('"\\\t')
    params: list[str]
    if plain and len(filename) <= FOLD_WIDTH - 13:
        params = [f'filename="{filename}"']
    else:
        pieces = [quote(ch.encode(), safe=_ATTR_SAFE) for ch in filename]
        segments: list[str] = []
        segment = ""
        for piece in pieces:
            if segment and len(segment) + len(piece) > 56:
                segments.append(segment)
                segment = ""
            segment += piece
        segments.append(segment)
        if len(segments) == 1:
            params = [f"filename*=utf-8''{segments[0]}"]
        else:
            segments[0] = "utf-8''" + segments[0]
            params = [f"filename*{i}*={segment}" for i, segment in enumerate(segments)]
    tokens = [f"{disposition};", *(p + ";" for p in params[:-1]), params[-1]]
    return RawHeader(name, _fold_tokens(name, tokens))


def encode_words(text: str, *, first_width: int = MAX_ENCODED_WORD) -> list[str]:
    """RFC 2047 encoded-words for ``text``, each at most 75 characters (the first at most ``first_width``
    so it fits after the header name), never splitting a character; Q or B, whichever is shorter."""
    data = text.encode()
    use_q = sum(_q_cost(ch) for ch in text) <= 4 * -(-len(data) // 3)
    words: list[str] = []
    chunk = ""
    limit = min(first_width, MAX_ENCODED_WORD)
    for ch in text:
        if chunk and len(_encoded_word(chunk + ch, use_q)) > limit:
            words.append(_encoded_word(chunk, use_q))
            chunk = ""
            limit = MAX_ENCODED_WORD
        chunk += ch
    if chunk:
        words.append(_encoded_word(chunk, use_q))
    return words


# ----- internals -----


def _require_unicode(value: str, what: str, field: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"{what} contains a lone surrogate (not valid Unicode)", field=field) from None


def _is_plain(text: str) -> bool:
    """Text a reader gets back unchanged when written as is: printable ASCII and inner whitespace only."""
    if not text:
        return True
    return (
        all(" " <= ch <= "~" or ch == "\t" for ch in text)
        and "=?" not in text
        and text[0] not in _WSP
        and text[-1] not in _WSP
    )


def _smuggles_line_break(value: str) -> bool:
    """Whether a reader that decodes encoded-words (and re-serializes, like the stdlib) would get CR/LF."""
    return any(_INJECTION.search(_decode_word(m.group(0))) for m in _ENCODED_WORD.finditer(value))


def _decode_word(word: str) -> str:
    try:
        parts = decode_header(word)
    except (HeaderParseError, ValueError):
        return ""  # malformed: readers leave it as literal text
    out = []
    for chunk, charset in parts:
        raw = chunk.encode("latin-1") if isinstance(chunk, str) else chunk
        try:
            out.append(raw.decode(charset or "latin-1", "replace"))
        except LookupError:
            out.append(raw.decode("latin-1"))
    return "".join(out)


def _q_cost(ch: str) -> int:
    return 1 if ch in _Q_SAFE or ch == " " else 3 * len(ch.encode())


def _encoded_word(chunk: str, use_q: bool) -> str:
    if use_q:
        body = "".join(
            ch if ch in _Q_SAFE else "_" if ch == " " else "".join(f"={b:02X}" for b in ch.encode()) for ch in chunk
        )
        return f"=?utf-8?q?{body}?="
    return f"=?utf-8?b?{base64.b64encode(chunk.encode()).decode('ascii')}?="


def _fold_at_whitespace(name: str, value: str) -> list[str]:
    """Fold by putting a line break before existing whitespace only, so unfolding restores ``value``."""
    pieces = _PIECES.findall(value)
    if not pieces:
        return [f"{name}:"]
    lines = [f"{name}: {pieces[0]}"]
    for piece in pieces[1:]:
        if len(lines[-1]) + len(piece) <= FOLD_WIDTH:
            lines[-1] += piece
        else:
            lines.append(piece)
    return lines


def _fold_tokens(name: str, tokens: Sequence[str]) -> list[str]:
    """Join tokens with single spaces, any of which may become a fold. The first token stays on the name's
    line: a fold right after the colon reads back with a leading space in the stdlib's parser."""
    if not tokens:
        return [f"{name}:"]
    lines = [f"{name}: {tokens[0]}"]
    for token in tokens[1:]:
        if len(lines[-1]) + 1 + len(token) <= FOLD_WIDTH:
            lines[-1] += " " + token
        else:
            lines.append(" " + token)
    return lines
