"""Address headers of received mail: a permissive RFC 5322 address-list reader.

``mailgate.domain.address`` is strict on purpose (callers must hear why an address is refused); received
mail needs the opposite: every header yields its mailboxes and never an error. fast-mail-parser's reader
mishandles groups and trailing comments (``harley@argote.ch )``, ``, q@r``), the stdlib's modern one costs
about 70 µs a header, and ``email.utils.getaddresses`` has the CVE-2023-27043 mis-split on this Python.
This one tokenizes once, in linear time: quoted strings, nested comments (dropped, as the stdlib does),
angle addresses with obsolete routes, groups, and RFC 2047 words in display names.

The reader works on the raw value (encoded-words intact), so a decoded ``,`` or ``<`` can never act as
syntax. An entry that is no mailbox is returned with an empty address, and so is a group without members
(``undisclosed-recipients:;``), so that what the header said is kept without inventing an address.
"""

from __future__ import annotations

import contextlib
import re

from mailgate.mime.header_block import decode_words, safe_text

_TOKEN = re.compile(r'\s+|"(?:[^"\\]|\\.)*"?|\[[^\]]*\]?|[<>,:;@()]|[^\s"<>,:;@()\[\]]+|.', re.DOTALL)
_SPACE_RUN = re.compile(r"\s+")
_QUOTED_PAIR = re.compile(r"\\(.)", re.DOTALL)
_LOCAL = re.compile(r'"(?:[^"\\]|\\.)*"|[^\s()<>\[\],;:@\\"]+')  # a quoted string, or no specials
_DOMAIN = re.compile(r"(?:[\w-]+\.)*[\w-]+\.?|\[[^\[\]\\]*\]")
_MAX_ENTRY_NAME = 200
_SPEC = r'[^<>()\[\],;:@\s"\\]+@[^<>()\[\],;:@\s"\\]+'
_SIMPLE = re.compile(rf'\s*(?:(?:"([^"\\]*)"|([^"<>()\[\],;:@\\]*?))\s*<({_SPEC})>|({_SPEC}))\s*')

Mailbox = tuple[str, str]  # (display name, addr-spec)
_ANGLE = "\0angle\0"  # marks the piece holding an angle address's content (no real piece holds NUL)


def parse_address_list(value: str, found: list[str]) -> tuple[list[Mailbox], bool]:
    """The mailboxes of an address header's raw value, and whether some entry was no mailbox.

    Defects of the encoded-words in display names are appended to ``found``."""
    simple = _simple_list(value, found)
    if simple is not None:
        return simple, False
    reader = _Reader(found)
    angle: list[str] | None = None
    group: str | None = None
    members = 0
    for piece in _tokens(value):
        if angle is not None:
            if piece == ">":
                reader.entry.append(_ANGLE + "".join(angle))
                angle = None
            elif not piece.isspace():
                angle.append(piece)
        elif piece == "<":
            angle = []
        elif piece == ",":
            members += reader.finish()
        elif piece == ":" and group is None and not reader.has_address():
            group, members = reader.phrase(reader.entry), 0
            reader.entry.clear()
        elif piece == ";" and group is not None:
            members += reader.finish()
            if not members:
                reader.mailboxes.append((group, ""))
            group = None
        else:
            reader.entry.append(piece)
    if angle is not None:
        reader.entry.append(_ANGLE + "".join(angle))
    members += reader.finish()
    if group is not None and not members:
        reader.mailboxes.append((group, ""))
    return reader.mailboxes, reader.bad


class _Reader:
    """The entry being read and what the header has yielded so far."""

    __slots__ = ("bad", "entry", "found", "mailboxes")

    def __init__(self, found: list[str]) -> None:
        self.found = found
        self.entry: list[str] = []
        self.mailboxes: list[Mailbox] = []
        self.bad = False

    def has_address(self) -> bool:
        return any(piece == "@" or piece.startswith(_ANGLE) for piece in self.entry)

    def finish(self) -> int:
        """Turn the pieces of one entry into a mailbox; returns how many were added (0 or 1)."""
        entry, self.entry = self.entry, []
        if all(piece.isspace() for piece in entry):
            return 0
        angle = next((piece for piece in entry if piece.startswith(_ANGLE)), None)
        if angle is not None:
            name = self.phrase([piece for piece in entry if piece is not angle])
            spec = angle.removeprefix(_ANGLE)
            if spec.startswith("@"):
                spec = spec.rpartition(":")[2]  # RFC 5322 obs-route: "<@relay:user@host>"
            if not spec and not name:
                return 0  # "<>": the null reverse-path, not a mailbox
        else:
            words = _words(entry)
            spec = words.pop() if words and "@" in words[-1] else ""
            name = self.phrase([" ".join(words)])
            if spec and name:
                self.bad = True  # "John Smith john@x.com": the angle brackets are missing
        if spec and not _valid(spec):
            name, spec = (f"{name} {spec}" if name else spec), ""
        if not spec:
            self.bad = True
            name = name[:_MAX_ENTRY_NAME]
        self.mailboxes.append((name, idn_to_unicode(safe_text(spec))))
        return 1

    def phrase(self, pieces: list[str]) -> str:
        """A display name: quoted strings unquoted, RFC 2047 words decoded, whitespace collapsed."""
        parts = []
        for piece in pieces:
            if piece.startswith('"'):
                body = piece[1:-1] if len(piece) > 1 and piece.endswith('"') else piece[1:]
                parts.append(_QUOTED_PAIR.sub(r"\1", body))
            else:
                parts.append(piece)
        return _SPACE_RUN.sub(" ", decode_words("".join(parts), self.found)).strip()


def _simple_list(value: str, found: list[str]) -> list[Mailbox] | None:
    """The common forms (``a@b``, ``Name <a@b>``, ``"Name" <a@b>``, comma-separated) read with one match
    per entry; None for anything else (comments, groups, routes, escapes), which the tokenizer reads."""
    if "(" in value or ":" in value or ";" in value or "\\" in value:
        return None
    mailboxes = []
    for entry in value.split(",") if '"' not in value else [value]:
        if not entry.strip():
            continue
        match = _SIMPLE.fullmatch(entry)
        if match is None:
            return None
        spec = match[3] or match[4]
        if not _valid(spec):
            return None
        name = match[1] if match[1] is not None else match[2] or ""
        if "=?" in name:
            name = decode_words(name, found)
        mailboxes.append((" ".join(name.split()), idn_to_unicode(spec)))
    return mailboxes


def idn_to_unicode(address: str) -> str:
    """The addr-spec with A-labels (``xn--``) of its domain decoded; labels that do not decode stay."""
    local, at, domain = address.rpartition("@")
    if not at or "xn--" not in domain.lower():
        return address
    labels = []
    for label in domain.split("."):
        if label[:4].lower() == "xn--":
            with contextlib.suppress(UnicodeError):
                label = label.encode("ascii").decode("idna")
        labels.append(label)
    return f"{local}@{'.'.join(labels)}"


def _tokens(value: str) -> list[str]:
    """Tokens with comments removed (they may nest, which no regular expression can follow)."""
    pieces: list[str] = []
    depth = 0
    for match in _TOKEN.finditer(value):
        piece = match[0]
        if piece == "(":
            depth += 1
        elif depth:
            if piece == ")":
                depth -= 1
        elif piece != ")":
            pieces.append(piece)
    return pieces


def _words(entry: list[str]) -> list[str]:
    """A bare entry as whitespace-separated words; pieces around ``@`` and ``.`` join (obs-local-part)."""
    words: list[list[str]] = [[]]
    for i, piece in enumerate(entry):
        if not piece.isspace():
            words[-1].append(piece)
            continue
        # Runs of whitespace are one piece, so the next piece is a word (or there is none).
        after = entry[i + 1] if i + 1 < len(entry) else ""
        current = words[-1]
        if current and not (current[-1].endswith(("@", ".")) or after.startswith(("@", "."))):
            words.append([])
    return ["".join(word) for word in words if word]


def _valid(spec: str) -> bool:
    local, at, domain = spec.rpartition("@")
    return bool(at and _LOCAL.fullmatch(local) and _DOMAIN.fullmatch(domain))
