"""Mail addresses: one strict parser and one canonical form.

We parse addresses ourselves rather than with ``email.utils.parseaddr`` or the ``email`` header parser:
callers hand us exactly one address per string and must be told *why* one is refused, while the stdlib
guesses (``parseaddr`` answers ``('', '')`` or a wrong split), records defects instead of refusing, and
decodes RFC 2047 encoded-words inside names, which is how a ``CRLF`` gets smuggled into a header.

Domains are kept in one canonical Unicode form (IDNA 2003 via the stdlib ``idna`` codec, lower-cased), so
``User@BÜCHER.example`` and ``User@xn--bcher-kva.example`` are the same key everywhere (suppressions,
routing, DKIM). The codec applies IDNA 2003 mappings: ``straße.de`` becomes ``strasse.de``, which is where
such mail actually goes when the domain is encoded by this codec.
"""

from __future__ import annotations

import functools
import re
import string
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

MAX_LOCAL_OCTETS = 64  # RFC 5321 4.5.3.1.1
MAX_DOMAIN_OCTETS = 253  # RFC 1035 name length without the root dot
MAX_LABEL_OCTETS = 63
MAX_ADDRESS_OCTETS = 254  # RFC 5321 path (256) minus the angle brackets
# Parsed addresses and domains are remembered: a sending burst repeats the same few senders and
# domains, and validating one (IDNA round trips, label checks) cost a tenth of accepting a message.
# Results are immutable and failures are not cached.
PARSE_CACHE_SIZE = 4096

_ATEXT = frozenset(string.ascii_letters + string.digits + "!#$%&'*+-/=?^_`{|}~")
_WSP = " \t"
# The separators the idna codec itself splits on; splitting on fewer would let U+3002 hide a label.
_DOTS = re.compile("[.\u3002\uff0e\uff61]")
_LDH = frozenset(string.ascii_lowercase + string.digits + "-")
_FORBIDDEN = re.compile("[\r\n\x00]")
_SPACE_RUN = re.compile(r"\s+")
# Specials that stay meaningful in an unquoted display name; '.' and '@' are tolerated because people
# write "J.R. Smith <j@x>" and "j@x <j@x>" and the angle brackets already make the split unambiguous.
_PHRASE_SPECIALS = frozenset(":;\\[]")


@dataclass(frozen=True, slots=True)
class Address:
    """One mailbox. Construction validates, so an ``Address`` that exists is safe to put in a header.

    ``local`` is the local part's content (no quotes; ``addr_spec`` re-quotes it when needed), ``domain``
    the canonical Unicode form, ``display_name`` with whitespace collapsed as readers show it.
    """

    display_name: str
    local: str
    domain: str

    def __post_init__(self) -> None:
        _check_text(self.display_name, "display name")
        object.__setattr__(self, "display_name", _collapse_whitespace(self.display_name))
        _check_local(self.local)
        object.__setattr__(self, "domain", canonical_domain(self.domain))
        size = max(len(self.addr_spec.encode()), len(self.ascii_addr_spec.encode()))
        if size > MAX_ADDRESS_OCTETS:
            raise ValueError(f"address is {size} octets long; the limit is {MAX_ADDRESS_OCTETS}")

    @property
    def addr_spec(self) -> str:
        return f"{quote_local(self.local)}@{self.domain}"

    @property
    def ascii_domain(self) -> str:
        return _ascii_domain(self.domain)

    @property
    def ascii_addr_spec(self) -> str:
        """The form for SMTP envelopes and headers: only the domain can be made ASCII (the local part
        belongs to the receiving host and has no ASCII encoding)."""
        return f"{quote_local(self.local)}@{self.ascii_domain}"

    @property
    def needs_smtputf8(self) -> bool:
        return not self.local.isascii()


@functools.lru_cache(maxsize=PARSE_CACHE_SIZE)
def parse_address(text: str) -> Address:
    """Parse one ``local@domain``, ``Name <local@domain>`` or ``"Quoted, Name" <local@domain>``.

    Raises ``ValueError`` saying what is wrong. Comments, groups and address literals are refused:
    they are legal RFC 5322 but nobody means them in an API field, and each is a parsing ambiguity.
    """
    if _FORBIDDEN.search(text):
        raise ValueError("address contains a CR, LF or NUL character")
    s = text.strip(_WSP)
    if not s:
        raise ValueError("address is empty")
    display, spec = _split_mailbox(s)
    local, domain = _split_addr_spec(spec)
    return Address(display, local, domain)


def parse_address_list(items: Sequence[str]) -> list[Address]:
    """Parse one address per item; the error names the item, since a list is usually a form field."""
    if isinstance(items, str):
        raise TypeError("parse_address_list takes a list of addresses, not one string")
    out = []
    for i, item in enumerate(items):
        try:
            out.append(parse_address(item))
        except ValueError as exc:
            raise ValueError(f"item {i}: {exc}") from None
    return out


def normalize(addr_spec: str) -> str:
    """The key under which an address is suppressed, deduplicated and looked up.

    Only the domain is case-folded. The local part is kept exactly: RFC 5321 2.4 makes it case-sensitive
    and its meaning belongs to the receiving host alone, so folding it could merge two real mailboxes and
    let suppressing (or unsuppressing) one silently apply to another. Accepts anything ``parse_address``
    does (a display name is dropped) and raises ``ValueError`` likewise.
    """
    return parse_address(addr_spec).addr_spec


@functools.lru_cache(maxsize=PARSE_CACHE_SIZE)
def canonical_domain(domain: str) -> str:
    """Validate a domain and return its lower-cased Unicode form; raises ``ValueError`` naming the fault.

    Labels are checked in their ASCII (A-label) form because that is what DNS and SMTP see. A label the
    stdlib codec cannot turn back into Unicode (IDNA 2008-only, e.g. ``xn--strae-oqa``) is kept as its
    A-label rather than refused: it is a valid host name all the same.
    """
    if not domain:
        raise ValueError("domain is empty")
    if domain.startswith("["):
        raise ValueError("address literals such as [192.0.2.1] are not supported; use a domain name")
    if _FORBIDDEN.search(domain) or any(c in _WSP for c in domain):
        raise ValueError(f"domain {domain!r} contains whitespace or a control character")
    ascii_labels: list[str] = []
    for label in _DOTS.split(domain):
        if not label:
            raise ValueError(f"domain {domain!r} has an empty label (a leading, trailing or doubled dot)")
        if label.isascii() and len(label) > MAX_LABEL_OCTETS:
            raise ValueError(f"domain label {label[:20]!r}... is {len(label)} characters; the limit is 63")
        try:
            encoded = label.encode("idna").decode("ascii")
        except UnicodeError as exc:
            cause = exc.__cause__ or exc
            if "too long" in str(cause):
                raise ValueError(f"domain label {label!r} is longer than 63 characters once IDNA-encoded") from None
            raise ValueError(f"domain label {label!r} is not a valid internationalized label ({cause})") from None
        # nameprep can map a character to a dot (U+2024), so the encoded label may hold several labels.
        ascii_labels.extend(encoded.lower().split("."))
    for label in ascii_labels:
        _check_ascii_label(label, domain)
    ascii_domain = ".".join(ascii_labels)
    if len(ascii_domain) > MAX_DOMAIN_OCTETS:
        raise ValueError(f"domain is {len(ascii_domain)} characters in ASCII form; the limit is {MAX_DOMAIN_OCTETS}")
    return ".".join(_to_unicode(label) for label in ascii_labels)


def quote_local(local: str) -> str:
    """The local part as written in an addr-spec: bare when it is a dot-atom, else a quoted-string."""
    if _dot_atom_problem(local) is None:
        return local
    return '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'


# ----- internals -----


@functools.lru_cache(maxsize=PARSE_CACHE_SIZE)
def _ascii_domain(domain: str) -> str:
    return domain.encode("idna").decode("ascii")


def _check_ascii_label(label: str, domain: str) -> None:
    if not label:
        raise ValueError(f"domain {domain!r} has an empty label")
    if len(label) > MAX_LABEL_OCTETS:
        raise ValueError(f"domain label {label!r} is {len(label)} characters; the limit is {MAX_LABEL_OCTETS}")
    bad = sorted(set(label) - _LDH)
    if bad:
        raise ValueError(f"domain label {label!r} contains {bad[0]!r}; only letters, digits and hyphens are allowed")
    if label[0] == "-" or label[-1] == "-":
        raise ValueError(f"domain label {label!r} starts or ends with a hyphen")


def _to_unicode(label: str) -> str:
    try:
        return label.encode("ascii").decode("idna")
    except UnicodeError:
        return label


def _collapse_whitespace(name: str) -> str:
    """Whitespace in a display name (a phrase) is not significant, and readers collapse it even inside
    encoded-words (the stdlib folds any run of Unicode whitespace touching a space into that space).
    Holding the collapsed form makes what we store equal to what readers show. Linear on any input."""
    return _SPACE_RUN.sub(lambda m: " " if " " in m[0] or "\t" in m[0] else m[0], name).strip()


def _check_text(value: str, what: str) -> None:
    if _FORBIDDEN.search(value):
        raise ValueError(f"{what} contains a CR, LF or NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} contains a lone surrogate (not valid Unicode)") from None


def _check_local(local: str) -> None:
    if not local:
        raise ValueError("local part (before the @) is empty")
    _check_text(local, "local part")
    for ch in local:
        # RFC 5321 allows only printable ASCII and space even inside quotes; RFC 6531 adds UTF-8, which we
        # narrow to characters that are not controls or invisible separators.
        if ch.isascii():
            if not " " <= ch <= "~":
                raise ValueError(f"local part contains the control character {ch!r}")
        elif unicodedata.category(ch) in {"Cc", "Cf", "Zl", "Zp", "Zs"}:
            raise ValueError(f"local part contains the invisible or control character {ch!r}")
    size = len(quote_local(local).encode())
    if size > MAX_LOCAL_OCTETS:
        raise ValueError(f"local part is {size} octets long; the limit is {MAX_LOCAL_OCTETS}")


def _dot_atom_problem(local: str) -> str | None:
    if local.startswith(".") or local.endswith("."):
        return "starts or ends with a dot"
    if ".." in local:
        return "has two dots in a row"
    for ch in local:
        if ch == "@":
            return "contains a second @ (quote the local part if it really contains one)"
        if ch.isascii() and not " " <= ch <= "~":
            return f"contains the control character {ch!r}"
        if ch.isascii() and ch not in _ATEXT and ch != ".":
            return f"contains {ch!r}, which is only allowed inside a quoted local part"
    return None


def _split_mailbox(s: str) -> tuple[str, str]:
    """Split ``Name <spec>`` / bare ``spec`` into (display name, spec), scanning quotes properly."""
    opening = closing = -1
    in_quote = False
    i = 0
    while i < len(s):
        ch = s[i]
        if in_quote:
            if ch == "\\":
                i += 1
            elif ch == '"':
                in_quote = False
        elif ch == '"':
            in_quote = True
        elif ch == ",":
            raise ValueError("several addresses given (a comma outside quotes); pass one address per item")
        elif ch in "()":
            raise ValueError("comments in parentheses are not supported; quote the display name instead")
        elif ch == "<":
            if opening >= 0:
                raise ValueError("several addresses given (more than one '<'); pass one address per item")
            opening = i
        elif ch == ">":
            if opening < 0:
                raise ValueError("'>' without a matching '<'")
            if closing >= 0:
                raise ValueError("more than one '>'")
            closing = i
        i += 1
    if in_quote:
        raise ValueError("unterminated quoted string")
    if opening < 0:
        _reject_whitespace(s)
        return "", s
    if closing < 0:
        raise ValueError("'<' without a matching '>'")
    tail = s[closing + 1 :].strip(_WSP)
    if tail:
        if "@" in tail:
            raise ValueError("several addresses given; pass one address per item")
        raise ValueError(f"unexpected text {tail!r} after '>'")
    spec = s[opening + 1 : closing].strip(_WSP)
    _reject_whitespace(spec)
    return _parse_phrase(s[:opening]), spec


def _reject_whitespace(spec: str) -> None:
    in_quote = escaped = False
    ats = 0
    spaced = False
    for ch in spec:
        if escaped:
            escaped = False
        elif in_quote and ch == "\\":
            escaped = True
        elif ch == '"':
            in_quote = not in_quote
        elif not in_quote and ch == "@":
            ats += 1
        elif not in_quote and ch in _WSP:
            spaced = True
    if spaced and ats > 1:
        raise ValueError("several addresses given (separated by spaces); pass one address per item")
    if spaced:
        raise ValueError("whitespace inside the address; write 'Name <user@example.com>' to give a name")


def _parse_phrase(text: str) -> str:
    """A display name: atoms and quoted-strings; words are joined by one space, quoted content is exact."""
    words: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch in _WSP:
            i += 1
        elif ch == '"':
            i, word = _read_quoted(text, i)
            words.append(word)
        else:
            j = i
            while j < len(text) and text[j] not in _WSP and text[j] != '"':
                if text[j] in _PHRASE_SPECIALS:
                    raise ValueError(f"{text[j]!r} in a display name must be inside quotes")
                j += 1
            words.append(text[i:j])
            i = j
    return " ".join(words)


def _read_quoted(text: str, start: int) -> tuple[int, str]:
    """Read the quoted-string opening at ``start``; return the index after it and its unescaped content."""
    out: list[str] = []
    i = start + 1
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            if i + 1 >= len(text):
                break
            out.append(text[i + 1])
            i += 2
        elif ch == '"':
            return i + 1, "".join(out)
        else:
            out.append(ch)
            i += 1
    raise ValueError("unterminated quoted string")


def _split_addr_spec(spec: str) -> tuple[str, str]:
    if not spec:
        raise ValueError("no address inside '<>'")
    if spec.startswith('"'):
        end, local = _read_quoted(spec, 0)
        rest = spec[end:]
        if not rest.startswith("@"):
            raise ValueError("expected @ right after the quoted local part")
        domain = rest[1:]
        if not local:
            raise ValueError("local part (before the @) is empty")
    else:
        if "@" not in spec:
            raise ValueError(f"{spec!r} has no @ (expected local-part@domain)")
        local, _, domain = spec.rpartition("@")
        if not local:
            raise ValueError("local part (before the @) is empty")
        if '"' in local:
            raise ValueError("quotes must enclose the whole local part")
        problem = _dot_atom_problem(local)
        if problem is not None:
            raise ValueError(f"local part {local!r} {problem}")
    if not domain:
        raise ValueError("domain (after the @) is empty")
    if "@" in domain:
        raise ValueError("more than one @ outside quotes")
    return local, domain
