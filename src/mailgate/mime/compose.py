"""Turn a ``Draft`` into the RFC 5322 bytes that are queued, signed and delivered.

The MIME tree and bodies come from the stdlib (``EmailMessage``, ``policy.SMTP``/``SMTPUTF8``). Header
lines that carry caller text come from ``mailgate.mime.headers`` instead, because the stdlib's own
rendering of them is unsafe on the Python versions we run (see that module). Policies are cloned with
``cte_type="7bit"`` so every body is 7bit, quoted-printable or base64 and no relay needs 8BITMIME.
"""

from __future__ import annotations

import html as html_lib
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from email import policy as email_policy
from email.headerregistry import HeaderRegistry
from email.message import EmailMessage, MIMEPart
from email.utils import format_datetime
from functools import lru_cache

from mailgate.domain.address import Address, canonical_domain
from mailgate.domain.errors import InvalidInput
from mailgate.mime.headers import (
    RawHeader,
    address_header,
    check_header,
    content_disposition_header,
    text_header,
    verbatim_header,
)


class _CachedHeaderRegistry(HeaderRegistry):
    """The stdlib registry builds a new header class on every lookup (about a third of composing a
    message); the classes depend only on the header name, so build each once."""

    def __init__(self) -> None:
        super().__init__()
        self._classes: dict[str, type] = {}

    def __getitem__(self, name: str) -> type:
        key = name.lower()
        cls = self._classes.get(key)
        if cls is None:
            cls = self._classes[key] = super().__getitem__(name)
        return cls


_HEADERS = _CachedHeaderRegistry()
_POLICY = email_policy.SMTP.clone(cte_type="7bit", header_factory=_HEADERS)
_POLICY_UTF8 = email_policy.SMTPUTF8.clone(cte_type="7bit", header_factory=_HEADERS)

MAX_FILENAME = 255  # what common file systems accept
_INJECTION = re.compile("[\r\n\x00]")
_CONTROLS = re.compile("[\x00-\x1f\x7f]")
_TYPE_NAME = r"[!#$%&'*+.^_`|~0-9a-z-]+"  # RFC 2045 token, lower-cased
_CONTENT_TYPE = re.compile(rf"({_TYPE_NAME})/({_TYPE_NAME})")
_CID_FORBIDDEN = frozenset('"(),:;[\\]')
_ID_PART = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+"
_MESSAGE_ID = re.compile(rf"<{_ID_PART}@{_ID_PART}>")
MAX_MESSAGE_ID = 250


@dataclass
class Attachment:
    filename: str
    content_type: str
    data: bytes
    content_id: str | None = None
    inline: bool = False


@dataclass
class Draft:
    """Everything one message needs. ``bcc`` is here so callers keep one object for the envelope too;
    ``compose`` never writes it. ``headers`` come from ``validate_extra_headers`` (checked again anyway)."""

    from_: Address
    to: list[Address]
    cc: list[Address]
    bcc: list[Address]
    reply_to: list[Address]
    subject: str
    text: str | None
    html: str | None
    attachments: list[Attachment]
    headers: list[tuple[str, str]]
    message_id: str | None = None
    date: datetime | None = None


@dataclass(frozen=True, slots=True)
class _Part:
    """An attachment after validation."""

    filename: str
    maintype: str
    subtype: str
    data: bytes
    content_id: str | None
    inline: bool


def compose(draft: Draft, *, message_id_domain: str) -> tuple[bytes, str]:
    """Return the message (CRLF line endings, no line over 998 octets) and its Message-ID (``<...>``).

    Structure: text → text/plain; html → multipart/alternative with a text/plain rendering (derived from
    the html when no text is given); inline attachments with a Content-ID → multipart/related around the
    html; any other attachment → multipart/mixed around the rest. Raises ``InvalidInput`` with ``field``.
    """
    subject = _header_text(draft.subject, "subject")
    text = _body_text(draft.text, "text")
    html = _body_text(draft.html, "html")
    parts = [_check_attachment(i, a) for i, a in enumerate(draft.attachments)]
    if text is None and html is None and not parts:
        raise InvalidInput("a message needs text, html or at least one attachment", field="text")
    _reject_duplicate_content_ids(parts)
    extra = [check_header(name, value) for name, value in draft.headers]
    message_id = _message_id(draft.message_id, message_id_domain)
    date = draft.date or datetime.now(UTC)
    if date.tzinfo is None:
        date = date.replace(tzinfo=UTC)  # naive datetimes in this code base are UTC

    headers = [address_header("From", [draft.from_])]
    if draft.to:
        headers.append(address_header("To", draft.to))
    elif not draft.cc:
        # Bcc-only mail still gets a To, as MUAs do: some filters score a missing one as spam.
        headers.append(RawHeader("To", ["To: undisclosed-recipients:;"]))
    if draft.cc:
        headers.append(address_header("Cc", draft.cc))
    if draft.reply_to:
        headers.append(address_header("Reply-To", draft.reply_to))
    headers.append(text_header("Subject", subject))
    headers.append(_date_header(int(date.timestamp()), date.utcoffset()))
    headers.append(verbatim_header("Message-ID", message_id))
    headers.extend(verbatim_header(name, value) for name, value in extra)
    headers.append(_MIME_VERSION)

    utf8 = any(a.needs_smtputf8 for a in [draft.from_, *draft.to, *draft.cc, *draft.reply_to])
    seven_bit = _seven_bit_body(text) if text is not None and html is None and not parts else None
    if seven_bit is not None:
        return _render_plain(headers, seven_bit, utf8=utf8), message_id
    return _render(headers, _body(text, html, parts), utf8=utf8), message_id


_MIME_VERSION = RawHeader("MIME-Version", ["MIME-Version: 1.0"])
_PLAIN_7BIT = ['Content-Type: text/plain; charset="utf-8"', "Content-Transfer-Encoding: 7bit"]


@lru_cache(maxsize=8)
def _date_header(timestamp: int, offset: timedelta | None) -> RawHeader:
    """The Date line, made once per second (``format_datetime`` is a tenth of composing a message)."""
    when = datetime.fromtimestamp(timestamp, timezone(offset or timedelta(0)))
    return verbatim_header("Date", format_datetime(when))


def _render(headers: Sequence[RawHeader], body: MIMEPart, *, utf8: bool) -> bytes:
    message = EmailMessage(policy=_POLICY)
    for header in headers:
        message[header.name] = header
    for name, value in body.raw_items():
        message[name] = value
    message.set_payload(body.get_payload())
    return message.as_bytes(policy=_POLICY_UTF8 if utf8 else _POLICY)


def _render_plain(headers: Sequence[RawHeader], seven_bit: str, *, utf8: bool) -> bytes:
    """What ``_render`` writes for one 7bit text/plain body, without building the message: for such a
    message the generator only joins the lines, and it was half the cost of composing one."""
    lines = [line for header in headers for line in header.lines]
    head = "\r\n".join([*lines, *_PLAIN_7BIT, "", ""])
    return (head + seven_bit).encode("utf-8" if utf8 else "ascii", "surrogateescape")


def html_to_text(html: str) -> str:
    """A crude plain-text rendering, for the text/plain alternative that html-only mail should carry
    (spam filters penalise html without one). Linear-time on hostile input; not a layout engine."""
    text = _strip_hidden(html)
    text = re.sub(r"\s+", " ", text)
    text = _BREAK.sub("\n", text)
    text = _TAG.sub("", text)
    text = html_lib.unescape(text)
    lines = (" ".join(line.split()) for line in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


# ----- validation -----


def _header_text(value: str, field: str) -> str:
    if _INJECTION.search(value):
        raise InvalidInput(f"{field} contains CR, LF or NUL (header injection)", field=field)
    _require_unicode(value, field)
    return value


def _body_text(value: str | None, field: str) -> str | None:
    """An empty body counts as none: API clients send "" for fields they leave out."""
    if not value:
        return None
    _require_unicode(value, field)
    return value


def _require_unicode(value: str, field: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"{field} contains a lone surrogate (not valid Unicode)", field=field) from None


def _check_attachment(index: int, attachment: Attachment) -> _Part:
    prefix = f"attachments[{index}]"
    field = f"{prefix}.filename"
    # Readers strip it (the stdlib's get_filename() does), so edge whitespace would not survive anyway.
    filename = attachment.filename.strip()
    if not filename:
        raise InvalidInput(f"{field} is empty", field=field)
    if _INJECTION.search(filename):
        raise InvalidInput(f"{field} contains CR, LF or NUL (header injection)", field=field)
    if _CONTROLS.search(filename):
        raise InvalidInput(f"{field} contains a control character", field=field)
    if len(filename) > MAX_FILENAME:
        raise InvalidInput(f"{field} is {len(filename)} characters long; the limit is {MAX_FILENAME}", field=field)
    _require_unicode(filename, field)

    field = f"{prefix}.content_type"
    match = _CONTENT_TYPE.fullmatch(attachment.content_type.strip().lower())
    if match is None:
        raise InvalidInput(
            f"{field} {attachment.content_type!r} is not a MIME type of the form type/subtype", field=field
        )
    maintype, subtype = match.groups()
    if maintype == "multipart":
        raise InvalidInput(f"{field} cannot be multipart/*: compose builds the multipart structure", field=field)
    if maintype == "message":
        # RFC 2046 5.2 forbids base64 for message/*, and only base64 keeps arbitrary bytes intact.
        raise InvalidInput(f"{field} cannot be message/*; attach a message as application/octet-stream", field=field)
    return _Part(
        filename=filename,
        maintype=maintype,
        subtype=subtype,
        data=bytes(attachment.data),
        content_id=_content_id(attachment.content_id, f"{prefix}.content_id"),
        inline=attachment.inline,
    )


def _content_id(value: str | None, field: str) -> str | None:
    """The bare id (no angle brackets); one enclosing pair is accepted since people copy ids from headers."""
    if value is None:
        return None
    if _INJECTION.search(value):
        raise InvalidInput(f"{field} contains CR, LF or NUL (header injection)", field=field)
    cid = value.strip(" \t")
    if cid.startswith("<") and cid.endswith(">"):
        cid = cid[1:-1]
    if not cid:
        raise InvalidInput(f"{field} is empty", field=field)
    if "<" in cid or ">" in cid:
        raise InvalidInput(f"{field} has angle brackets inside; give the id bare or in one enclosing pair", field=field)
    bad = [ch for ch in cid if not "!" <= ch <= "~" or ch in _CID_FORBIDDEN]
    if bad:
        raise InvalidInput(
            f'{field} contains {bad[0]!r}; use printable ASCII without spaces or any of ()<>,;:\\"[]', field=field
        )
    if "=?" in cid:
        raise InvalidInput(f"{field} contains '=?', which readers decode as an RFC 2047 encoded-word", field=field)
    if len(cid) > MAX_MESSAGE_ID:
        raise InvalidInput(f"{field} is longer than {MAX_MESSAGE_ID} characters", field=field)
    return cid


def _reject_duplicate_content_ids(parts: Sequence[_Part]) -> None:
    seen: set[str] = set()
    for i, part in enumerate(parts):
        if part.content_id is None:
            continue
        if part.content_id in seen:
            field = f"attachments[{i}].content_id"
            raise InvalidInput(f"{field} {part.content_id!r} is used by an earlier attachment", field=field)
        seen.add(part.content_id)


def _message_id(given: str | None, domain: str) -> str:
    if given is None:
        try:
            host = canonical_domain(domain).encode("idna").decode("ascii")
        except ValueError as exc:
            raise InvalidInput(f"message_id_domain: {exc}", field="message_id_domain") from None
        return f"<{secrets.token_hex(16)}@{host}>"
    value = given.strip(" \t")
    if not (value.startswith("<") and value.endswith(">")):
        value = f"<{value}>"
    if len(value) > MAX_MESSAGE_ID or not _MESSAGE_ID.fullmatch(value):
        raise InvalidInput(
            f"message_id {given!r} is not of the form <left@right> (dot-atom text, at most {MAX_MESSAGE_ID} "
            "characters)",
            field="message_id",
        )
    return value


# ----- structure -----


def _body(text: str | None, html: str | None, parts: Sequence[_Part]) -> MIMEPart:
    def is_related(part: _Part) -> bool:
        return html is not None and part.inline and part.content_id is not None

    related = [p for p in parts if is_related(p)]
    others = [p for p in parts if not is_related(p)]
    core: MIMEPart | None = None
    if html is not None:
        html_part = _text_part(html, "html")
        if related:
            html_part = _multipart("related", [html_part, *map(_attachment_part, related)])
            html_part.set_param("type", "text/html")  # RFC 2387: the root's type
        plain = text if text is not None else html_to_text(html)
        core = _multipart("alternative", [_text_part(plain, "plain"), html_part])
    elif text is not None:
        core = _text_part(text, "plain")
    if not others:
        assert core is not None  # compose refuses a message with no body and no attachment
        return core
    return _multipart("mixed", [*([core] if core is not None else []), *map(_attachment_part, others)])


def _text_part(content: str, subtype: str) -> MIMEPart:
    seven_bit = _seven_bit_body(content)
    if seven_bit is not None:
        # What set_content writes for such text, without its header parser (a third of composing a
        # plain message): the same headers, the same CRLF-joined lines.
        part = MIMEPart(policy=_POLICY)
        part["Content-Type"] = RawHeader("Content-Type", [f'Content-Type: text/{subtype}; charset="utf-8"'])
        part["Content-Transfer-Encoding"] = RawHeader("Content-Transfer-Encoding", ["Content-Transfer-Encoding: 7bit"])
        part.set_payload(seven_bit)
        return part
    part = MIMEPart(policy=_POLICY)
    # The policy picks 7bit, quoted-printable or base64, but would call ASCII with NUL "7bit", which
    # RFC 2045 2.7 forbids (and some MTAs reject).
    cte = "quoted-printable" if "\x00" in content else None
    part.set_content(content, subtype=subtype, cte=cte)
    return part


def _seven_bit_body(content: str) -> str | None:
    """The body as the stdlib would send it as 7bit (lines split as ``bytes.splitlines`` does, joined by
    CRLF, a final CRLF), or None when it needs an encoding: non-ASCII, NUL, or a line over 78 octets."""
    if not content.isascii() or "\x00" in content:
        return None
    lines = content.encode("ascii").splitlines()
    if lines and max(len(line) for line in lines) > (_POLICY.max_line_length or 0):
        return None
    return "\r\n".join(line.decode("ascii") for line in lines) + "\r\n"


def _attachment_part(spec: _Part) -> MIMEPart:
    part = MIMEPart(policy=_POLICY)
    part.set_content(spec.data, spec.maintype, spec.subtype)  # bytes are always base64
    part["Content-Disposition"] = content_disposition_header("inline" if spec.inline else "attachment", spec.filename)
    if spec.content_id is not None:
        part["Content-ID"] = verbatim_header("Content-ID", f"<{spec.content_id}>")
    return part


def _multipart(subtype: str, children: Sequence[MIMEPart]) -> MIMEPart:
    container = MIMEPart(policy=_POLICY)
    container["Content-Type"] = f"multipart/{subtype}"  # the generator adds a boundary absent from the parts
    for child in children:
        container.attach(child)
    return container


# ----- html to text -----

_HIDDEN_OPEN = re.compile(r"<!--|<(script|style|head|title|template)\b", re.IGNORECASE)
_BREAK = re.compile(
    r"<\s*(?:br|hr|/?(?:p|div|li|tr|h[1-6]|table|ul|ol|blockquote|pre|section|article|header|footer))\b[^<>]*>",
    re.IGNORECASE,
)
_TAG = re.compile(r"<[^<>]*>")  # [^<>] not [^>]: a run of '<' without '>' must not make this quadratic


def _strip_hidden(html: str) -> str:
    """Drop comments and elements whose content is never shown, scanning forward only (no backtracking)."""
    out: list[str] = []
    pos = 0
    while (opening := _HIDDEN_OPEN.search(html, pos)) is not None:
        out.append(html[pos : opening.start()])
        out.append(" ")
        if opening.group(1) is None:
            end = html.find("-->", opening.end())
            pos = len(html) if end < 0 else end + 3
        else:
            closing = re.compile(rf"</{opening.group(1)}\s*>", re.IGNORECASE).search(html, opening.end())
            pos = len(html) if closing is None else closing.end()
    out.append(html[pos:])
    return "".join(out)
