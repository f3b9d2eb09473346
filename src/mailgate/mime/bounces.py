"""Reading bounces (RFC 3464 DSNs) and complaints (RFC 5965 ARF reports) into one structured result.

Reports come from every MTA ever written and from anyone who can reach our bounce domain, so nothing
here trusts the structure: every field is optional, a report too broken to act on is ``UNKNOWN`` (never
an exception), and the one error is ``NotAMessage`` for input with no header section at all.

The report blocks are read with our own small field parser rather than the stdlib's sub-messages: the
stdlib splits ``message/delivery-status`` into blocks but reads ``message/global-delivery-status``
(RFC 6533, which may also be base64-encoded) as one message whose recipients end up in a body, and
``text/rfc822-headers`` as plain text. Rebuilding each part's text and parsing it one way covers all of
them. Header values are kept as written (unfolded, RFC 2047 words not decoded): they are looked up, not
shown.

Mail that is no report but reads like one ("Undelivered Mail Returned to Sender" in plain text) is
recognised by a deliberately small set of patterns and marked ``heuristic=True``, so callers can choose
to trust it less.
"""

from __future__ import annotations

import base64
import quopri
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from email import policy
from email.message import Message
from email.parser import BytesParser
from email.utils import parsedate_to_datetime
from itertools import takewhile

from mailgate.domain.bounces import BounceKind, DsnAction, FeedbackType
from mailgate.domain.delivery import Reply
from mailgate.domain.errors import InvalidInput

_Fields = dict[str, list[str]]

_STATUS_TYPES = frozenset({"message/delivery-status", "message/global-delivery-status"})
_FEEDBACK_TYPE = "message/feedback-report"
_ORIGINAL_TYPES = frozenset(
    {"message/rfc822", "message/global", "text/rfc822-headers", "message/global-headers", "message/rfc822-headers"}
)
_RECIPIENT_FIELDS = ("final-recipient", "original-recipient", "action", "status")
# Most consequential first: a report about two recipients is as bad as its worst one.
_SEVERITY = (BounceKind.HARD, BounceKind.SOFT, BounceKind.DELIVERED)
_CLASS_KIND = {"5": BounceKind.HARD, "4": BounceKind.SOFT, "2": BounceKind.DELIVERED}
_ACTIONS = {action.value: action for action in DsnAction}
_FEEDBACK_TYPES = {value.value: value for value in FeedbackType}

_FIELD_NAME = re.compile(r"[!-9;-~]+")
_STATUS = re.compile(r"\s*([245])\.(\d{1,3})\.(\d{1,3})(?!\.?\d)")
_REPLY = re.compile(r"\s*([245]\d\d)(?:[ -]+([245]\.\d{1,3}\.\d{1,3})(?!\.?\d))?[ -]*(.*)", re.DOTALL)
_MESSAGE_ID = re.compile(r"<[^<>\s]+>")
_TOKEN = re.compile(r"[A-Za-z0-9_.-]{1,64}")

# The heuristics: who sends non-standard bounces, what they call them (both must match), and where the
# code and the recipient sit in the text. Only ASCII English forms; anything else stays UNKNOWN.
_DAEMON = re.compile(r"mailer-daemon|postmaster@|mail delivery (?:subsystem|system)|microsoftexchange", re.IGNORECASE)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|returned mail|returning message|delivery status notification|delivery failure"
    r"|delivery (?:has )?failed|failure notice|non-?delivery|could not be delivered|delay",
    re.IGNORECASE,
)
_DELAY_SUBJECT = re.compile(r"delay|still being retried|warning", re.IGNORECASE)
_TEXT_STATUS = re.compile(r"(?<![\d.])([45])\.(\d{1,3})\.(\d{1,3})(?!\.?\d)")
_TEXT_REPLY = re.compile(r"(?:^|said:|error:)[ \t]*([45]\d\d)[ -]", re.IGNORECASE | re.MULTILINE)
# Every pattern below scans a run of text at most once (the lookbehind, the [^<>]), so a hostile body
# of a million "a"s or "<"s costs linear time, not quadratic.
_TEXT_ADDRESS = re.compile(
    r"(?<![A-Za-z0-9._%+=-])[A-Za-z0-9][A-Za-z0-9._%+=-]*@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)+"
)
_NOT_RECIPIENT = re.compile(r"(?:mailer-daemon|postmaster)@", re.IGNORECASE)
_BREAKING_TAGS = re.compile(r"<(?:br|/?(?:p|div|tr|li|h\d|table))\b[^<>]*>", re.IGNORECASE)
_TAGS = re.compile(r"<[^<>]*>")
MAX_HEURISTIC_REASON = 500


class NotAMessage(InvalidInput, ValueError):
    """The bytes have no header section: not a report, not mail at all. Everything else parses."""


@dataclass(frozen=True, slots=True)
class OriginalMessage:
    """The headers of the message a report is about, as the reporter quoted them.

    Anyone can write these headers, so a match made from them is weaker than one from a VERP token;
    they are what is left when a forwarder rewrote the return path.
    """

    headers: tuple[tuple[str, str], ...]

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        return next((value for key, value in self.headers if key.lower() == wanted), None)

    @property
    def message_id(self) -> str | None:
        value = self.header("message-id")
        if value is None:
            return None
        found = _MESSAGE_ID.search(value)
        return found.group() if found else value.strip() or None

    @property
    def delivery_id(self) -> str | None:
        return _token(self.header("x-mailgate-delivery"))

    @property
    def mailgate_message_id(self) -> str | None:
        return _token(self.header("x-mailgate-message"))

    @property
    def return_path(self) -> str | None:
        """Present when the reporter quoted the message as delivered (ARF does): it holds the VERP token."""
        value = self.header("return-path")
        return _bare_address(value) if value else None


@dataclass(frozen=True, slots=True)
class RecipientStatus:
    """One per-recipient block of a DSN (or what a heuristic found in a plain-text bounce)."""

    kind: BounceKind
    final_recipient: str | None = None
    original_recipient: str | None = None
    action: DsnAction | None = None
    status: str | None = None
    diagnostic_type: str | None = None
    diagnostic_code: str | None = None
    remote_mta: str | None = None

    @property
    def reply(self) -> Reply | None:
        """The SMTP reply the remote server gave, when the diagnostic is one (``smtp; 550 5.1.1 ...``)."""
        if self.diagnostic_code is None or self.diagnostic_type not in (None, "smtp"):
            return None
        return _parse_reply(self.diagnostic_code)

    @property
    def reason(self) -> str:
        if self.diagnostic_code:
            reply = self.reply
            return str(reply) if reply else self.diagnostic_code
        return " ".join(p for p in (self.action, self.status) if p) or "no status given"


@dataclass(frozen=True, slots=True)
class FeedbackReport:
    """The machine-readable part of an ARF report (RFC 5965 3.1 and 3.2)."""

    feedback_type: FeedbackType | None
    user_agent: str | None = None
    version: str | None = None
    original_mail_from: str | None = None
    original_rcpt_to: tuple[str, ...] = ()
    source_ip: str | None = None
    reported_domain: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class BounceReport:
    """What an inbound report says. ``kind`` is the worst outcome among its recipients; ``reason`` is
    the text a person reads to learn why (usually the remote server's reply)."""

    kind: BounceKind
    reason: str
    heuristic: bool = False
    reporting_mta: str | None = None
    arrival_date: datetime | None = None
    recipients: tuple[RecipientStatus, ...] = ()
    feedback: FeedbackReport | None = None
    original: OriginalMessage | None = None


def parse_report(raw: bytes) -> BounceReport:
    """Read one inbound message; raises ``NotAMessage`` only for bytes without a single header field."""
    message = BytesParser(policy=policy.default).parsebytes(raw)
    if not message.keys():
        raise NotAMessage("input has no header fields: it is not an email message")
    parts = _top_parts(message)
    report_type = (_param(message, "report-type") or "").lower()
    status_part = _first(parts, _STATUS_TYPES)
    feedback_part = _first(parts, {_FEEDBACK_TYPE})
    original = _original(parts)
    if report_type == "feedback-report" or (feedback_part is not None and status_part is None):
        return _feedback(feedback_part, original)
    if report_type == "delivery-status" or status_part is not None:
        return _dsn(status_part, original)
    return _heuristic(message, original)


def _dsn(part: Message | None, original: OriginalMessage | None) -> BounceReport:
    if part is None:
        return BounceReport(BounceKind.UNKNOWN, "delivery-status report without a status part", original=original)
    blocks = _blocks(_part_text(part))
    per_message = blocks[0] if blocks else {}
    recipients = tuple(_recipient(block) for block in blocks if any(name in block for name in _RECIPIENT_FIELDS))
    kind = next((k for k in _SEVERITY if any(r.kind is k for r in recipients)), BounceKind.UNKNOWN)
    worst = next((r for r in recipients if r.kind is kind), None)
    reason = worst.reason if worst is not None else "delivery-status part names no recipient with a usable status"
    return BounceReport(
        kind,
        reason,
        reporting_mta=_typed(_get(per_message, "reporting-mta"))[1],
        arrival_date=_date(_get(per_message, "arrival-date")),
        recipients=recipients,
        original=original,
    )


def _recipient(block: _Fields) -> RecipientStatus:
    # Sendmail writes "delivered (to mailbox)"; the comment is for people.
    action_words = (_get(block, "action") or "").lower().split()
    action = _ACTIONS.get(action_words[0]) if action_words else None
    diagnostic_type, diagnostic = _typed(_get(block, "diagnostic-code"))
    reply = _parse_reply(diagnostic) if diagnostic else None
    status = _status(_get(block, "status")) or (reply.enhanced if reply else None)
    status_class = status[0] if status else (str(reply.code)[0] if reply else None)
    return RecipientStatus(
        kind=_recipient_kind(action, status_class),
        final_recipient=_bare_address(_typed(_get(block, "final-recipient"))[1]),
        original_recipient=_bare_address(_typed(_get(block, "original-recipient"))[1]),
        action=action,
        status=status,
        diagnostic_type=diagnostic_type,
        diagnostic_code=diagnostic,
        remote_mta=_typed(_get(block, "remote-mta"))[1],
    )


def _recipient_kind(action: DsnAction | None, status_class: str | None) -> BounceKind:
    """RFC 3464's action decides; the status class only says whether a failure was permanent.

    ``failed`` with a 4.x.x status is an MTA giving up after retrying a temporary error: the address
    may well be fine, so that is soft, not hard.
    """
    if action is DsnAction.FAILED:
        return BounceKind.SOFT if status_class == "4" else BounceKind.HARD
    if action is DsnAction.DELAYED:
        return BounceKind.SOFT
    if action is not None:
        return BounceKind.DELIVERED
    return _CLASS_KIND.get(status_class or "", BounceKind.UNKNOWN)


def _feedback(part: Message | None, original: OriginalMessage | None) -> BounceReport:
    if part is None:
        return BounceReport(BounceKind.UNKNOWN, "feedback report without a feedback-report part", original=original)
    fields: _Fields = {}
    for block in _blocks(_part_text(part)):
        for name, values in block.items():
            fields.setdefault(name, []).extend(values)
    type_text = (_get(fields, "feedback-type") or "").strip().lower()
    if not type_text:
        return BounceReport(BounceKind.UNKNOWN, "feedback report without a Feedback-Type", original=original)
    feedback_type = _FEEDBACK_TYPES.get(type_text)
    user_agent = _get(fields, "user-agent")
    report = FeedbackReport(
        feedback_type=feedback_type,
        user_agent=user_agent,
        version=_get(fields, "version"),
        original_mail_from=_bare_address(_get(fields, "original-mail-from")),
        original_rcpt_to=tuple(a for v in fields.get("original-rcpt-to", ()) if (a := _bare_address(v))),
        source_ip=_get(fields, "source-ip"),
        reported_domain=tuple(v for v in fields.get("reported-domain", ()) if v),
    )
    kind = BounceKind.COMPLAINT if feedback_type is not None and feedback_type.complaint else BounceKind.FEEDBACK
    reason = f"{type_text} report" + (f" from {user_agent}" if user_agent else "")
    # RFC 5965 3.1 names it Arrival-Date; the older drafts' Received-Date is still what several FBLs send.
    arrival = _get(fields, "arrival-date") or _get(fields, "received-date")
    return BounceReport(kind, reason, arrival_date=_date(arrival), feedback=report, original=original)


def _heuristic(message: Message, original: OriginalMessage | None) -> BounceReport:
    sender = _raw_header(message, "from") or ""
    subject = _raw_header(message, "subject") or ""
    if not (_DAEMON.search(sender) and _BOUNCE_SUBJECT.search(subject)):
        return BounceReport(BounceKind.UNKNOWN, "not a delivery or feedback report", original=original)
    text = _body_text(message)
    code = _TEXT_STATUS.search(text) or _TEXT_REPLY.search(text)
    addresses = (found.group() for found in _TEXT_ADDRESS.finditer(text))
    recipient = next((a for a in addresses if not _NOT_RECIPIENT.match(a)), None)
    if code is None or recipient is None:
        reason = "bounce-like message without a status code and a recipient"
        return BounceReport(BounceKind.UNKNOWN, reason, original=original)
    if code.re is _TEXT_STATUS:
        status: str | None = code.group()
        status_class = code.group(1)
    else:
        status = None
        status_class = code.group(1)[0]
    kind = BounceKind.SOFT if status_class == "4" or _DELAY_SUBJECT.search(subject) else BounceKind.HARD
    line = _line_at(text, code.start())
    found = RecipientStatus(kind, final_recipient=recipient, status=status, diagnostic_code=line)
    return BounceReport(kind, found.reason, heuristic=True, recipients=(found,), original=original)


def _line_at(text: str, offset: int) -> str:
    """The line holding ``offset`` with its indented continuations (Postfix and Exim wrap replies so)."""
    lines = text[text.rfind("\n", 0, offset) + 1 :].splitlines()
    taken = lines[:1] + list(takewhile(lambda line: line[:1] in (" ", "\t") and line.strip(), lines[1:]))
    return " ".join(" ".join(taken).split())[:MAX_HEURISTIC_REASON]


def _top_parts(message: Message) -> list[Message]:
    payload = message.get_payload() if message.is_multipart() else None
    if not isinstance(payload, list):
        return []
    return [part for part in payload if isinstance(part, Message)]


def _first(parts: Iterable[Message], types: Iterable[str]) -> Message | None:
    wanted = frozenset(types)
    return next((part for part in parts if part.get_content_type() in wanted), None)


def _original(parts: list[Message]) -> OriginalMessage | None:
    part = _first(parts, _ORIGINAL_TYPES)
    if part is None:
        return None
    payload = part.get_payload()
    quoted: Message | None
    if isinstance(payload, list):
        quoted = payload[0] if payload and isinstance(payload[0], Message) else None
    else:  # text/rfc822-headers: the stdlib leaves it as text
        quoted = BytesParser(policy=policy.default).parsebytes(_payload_bytes(part), headersonly=True)
    items = () if quoted is None else tuple((name, _unfold(value)) for name, value in _raw_items(quoted))
    return OriginalMessage(items) if items else None


def _part_text(part: Message) -> str:
    """A report part's content as text, whichever way the stdlib chose to parse it."""
    payload = part.get_payload()
    if not isinstance(payload, list):
        return _decode(_payload_bytes(part), part.get_content_charset())
    text = "\n".join(_message_text(block) for block in payload if isinstance(block, Message))
    encoding = (_raw_header(part, "content-transfer-encoding") or "").strip().lower()
    if encoding not in ("base64", "quoted-printable"):
        return text
    # The stdlib never decodes a message/* part; RFC 6533 lets message/global-delivery-status be encoded.
    data = text.encode("ascii", "replace")
    try:
        decoded = base64.b64decode(data) if encoding == "base64" else quopri.decodestring(data)
    except ValueError:  # binascii.Error included
        return text
    return _decode(decoded, "utf-8")


def _message_text(message: Message) -> str:
    head = "".join(f"{name}: {value}\n" for name, value in _raw_items(message))
    body = message.get_payload()
    return head + "\n" + (body if isinstance(body, str) else "")


def _blocks(text: str) -> list[_Fields]:
    """RFC 3464 2.1 / RFC 5965 3: groups of header-style fields separated by blank lines.

    Folded lines are collected and joined once per field: appending to a growing string would make a
    field folded over a million lines cost quadratic time.
    """
    blocks: list[list[tuple[str, list[str]]]] = [[]]
    pieces: list[str] | None = None
    for line in text.splitlines():
        if not line.strip():
            if blocks[-1]:
                blocks.append([])
            pieces = None
        elif line[0] in " \t":
            if pieces is not None:
                pieces.append(line)
        else:
            key, colon, value = line.partition(":")
            key = key.strip().lower()
            pieces = [value] if colon and _FIELD_NAME.fullmatch(key) else None
            if pieces is not None:
                blocks[-1].append((key, pieces))
    result: list[_Fields] = []
    for block in filter(None, blocks):
        fields: _Fields = {}
        for key, folded in block:
            fields.setdefault(key, []).append(" ".join(" ".join(folded).split()))
        result.append(fields)
    return result


def _body_text(message: Message) -> str:
    """The first human-readable body of a plain bounce; HTML-only NDRs are read with tags dropped."""
    html = None
    for part in _text_parts(message):
        text = _decode(_payload_bytes(part), part.get_content_charset())
        if part.get_content_subtype() == "plain":
            return text
        html = html if html is not None else _TAGS.sub(" ", _BREAKING_TAGS.sub("\n", text))
    return html or ""


def _text_parts(message: Message) -> Iterator[Message]:
    """Text parts of the bounce itself, not of a quoted original (``walk`` would descend into it)."""
    payload = message.get_payload()
    if message.get_content_maintype() == "multipart" and isinstance(payload, list):
        for part in payload:
            if isinstance(part, Message):
                yield from _text_parts(part)
    elif message.get_content_type() in ("text/plain", "text/html") and isinstance(payload, str):
        yield message


def _payload_bytes(part: Message) -> bytes:
    data = part.get_payload(decode=True)
    return data if isinstance(data, bytes) else b""


def _decode(data: bytes, charset: str | None) -> str:
    try:
        return data.decode(charset or "utf-8", "replace")
    except (LookupError, UnicodeError, ValueError):  # unknown or non-text codecs ("idna", "base64")
        return data.decode("utf-8", "replace")


def _raw_items(message: Message) -> list[tuple[str, str]]:
    return [(_clean(name), _clean(str(value))) for name, value in message.raw_items()]


def _raw_header(message: Message, name: str) -> str | None:
    wanted = name.lower()
    return next((_unfold(v) for k, v in _raw_items(message) if k.lower() == wanted), None)


def _param(message: Message, name: str) -> str | None:
    """A Content-Type parameter read from the raw value, so a broken header cannot make us raise."""
    content_type = _raw_header(message, "content-type") or ""
    found = re.search(rf'(?:^|;)\s*{re.escape(name)}\s*=\s*"?([^";\s]*)', content_type, re.IGNORECASE)
    return found.group(1) if found else None


def _clean(text: str) -> str:
    """Parsed bytes carry non-ASCII octets as surrogate escapes. Report fields declare no charset that
    survives the stdlib's split, so the octets are read as UTF-8 when they are UTF-8 and otherwise as
    Windows-1252, the legacy charset 8-bit MTAs most often emit."""
    try:
        data = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that no octet produced
        return text.encode("utf-8", "replace").decode("utf-8")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", "replace")


def _unfold(value: str) -> str:
    return " ".join(value.split())


def _get(fields: _Fields, name: str) -> str | None:
    values = fields.get(name)
    return values[0] if values and values[0] else None


def _typed(value: str | None) -> tuple[str | None, str | None]:
    """Split ``type; value`` fields (``rfc822; a@b``, ``dns; mx.example``, ``smtp; 550 ...``)."""
    if value is None:
        return None, None
    kind, semicolon, rest = value.partition(";")
    if not semicolon:
        return None, value.strip() or None
    return kind.strip().lower() or None, rest.strip() or None


def _bare_address(value: str | None) -> str | None:
    if value is None:
        return None
    text = value.strip()
    if text.startswith("<") and ">" in text:
        text = text[1 : text.index(">")]
    return text.strip() or None


def _status(value: str | None) -> str | None:
    found = _STATUS.match(value) if value else None
    return ".".join(found.groups()) if found else None


def _parse_reply(text: str) -> Reply | None:
    found = _REPLY.fullmatch(text)
    if found is None:
        return None
    code, enhanced, rest = found.groups()
    # Multi-line replies arrive folded into one line, each continuation repeating "550-5.1.1".
    marker = rf"\s{code}[ -]+" + (rf"(?:{re.escape(enhanced)}\s*)?" if enhanced else "")
    return Reply(int(code), enhanced, " ".join(re.sub(marker, " ", f" {rest}").split()))


def _date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _token(value: str | None) -> str | None:
    text = value.strip() if value else ""
    return text if _TOKEN.fullmatch(text) else None
