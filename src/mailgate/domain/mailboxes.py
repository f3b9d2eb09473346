"""Domains, mailboxes, folders and the mail stored in them: the model the MX, the API and (later) IMAP
and POP3 share."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from mailgate.domain.address import canonical_domain, parse_address
from mailgate.domain.inbound import SpamThresholds

INBOX = "INBOX"
JUNK = "Junk"
# The folders every mailbox starts with, and their RFC 6154 special-use attribute.
DEFAULT_FOLDERS: tuple[tuple[str, str | None], ...] = (
    (INBOX, None),
    ("Sent", "\\Sent"),
    ("Drafts", "\\Drafts"),
    ("Trash", "\\Trash"),
    (JUNK, "\\Junk"),
)
MAX_FOLDER_NAME = 200
MAX_KEYWORDS = 50


class Direction(StrEnum):
    INBOUND = "inbound"
    OUTBOUND = "outbound"


def mailbox_key(address: str) -> str:
    """The form a hosted address is stored and looked up under: the local part case-folded (we are the
    receiving host, and people expect Alice@ and alice@ to be one mailbox) and the domain canonical.
    Raises ValueError for anything that is not one plain address."""
    parsed = parse_address(address)
    if parsed.display_name:
        raise ValueError("give the address alone, without a display name")
    return f"{parsed.local.lower()}@{parsed.domain}"


def domain_key(name: str) -> str:
    return canonical_domain(name.strip().rstrip("."))


def check_folder_name(name: str) -> str:
    """Folder names become IMAP mailbox names: printable, no leading/trailing space, ``/`` as the only
    hierarchy separator, and no empty levels."""
    name = name.strip()
    if not name or len(name) > MAX_FOLDER_NAME:
        raise ValueError(f"a folder name is 1-{MAX_FOLDER_NAME} characters")
    if any(ord(c) < 32 or c in "\x7f*%" for c in name):
        raise ValueError("a folder name may not hold control characters, '*' or '%'")
    if any(not part.strip() for part in name.split("/")):
        raise ValueError("a folder name may not have an empty level ('//' or a leading or trailing '/')")
    if name.upper() == INBOX:
        return INBOX
    return name


@dataclass(frozen=True, slots=True)
class Domain:
    id: str
    tenant_id: str
    name: str
    catch_all: str | None  # mailbox id that receives mail for unknown local parts
    spam: SpamThresholds
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Mailbox:
    id: str
    tenant_id: str
    domain_id: str
    address: str
    display_name: str
    aliases: tuple[str, ...]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Folder:
    id: str
    mailbox_id: str
    name: str
    special_use: str | None
    uidvalidity: int
    uidnext: int
    total: int = 0
    unread: int = 0


@dataclass(frozen=True, slots=True)
class Flags:
    seen: bool = False
    flagged: bool = False
    answered: bool = False
    deleted: bool = False
    draft: bool = False
    keywords: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "seen": self.seen,
            "flagged": self.flagged,
            "answered": self.answered,
            "deleted": self.deleted,
            "draft": self.draft,
            "keywords": list(self.keywords),
        }


@dataclass(frozen=True, slots=True)
class StoredMail:
    """One message in one mailbox folder. ``record`` is the unsealed parsed form (addresses, bodies,
    attachment metadata, authentication and spam results)."""

    id: str
    tenant_id: str
    mailbox_id: str
    folder: str
    uid: int
    direction: Direction
    received_at: datetime
    size: int
    blob_id: str
    thread_id: str
    has_attachments: bool
    spam_score: float
    flags: Flags
    record: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class MailQuery:
    """The filters of a mailbox listing; every one given must hold. ``query`` is whole words (each
    must occur), ``from_`` one sender address: both are matched through the blind index."""

    folder: str | None = None
    unread: bool | None = None
    from_: str | None = None
    since: datetime | None = None
    before: datetime | None = None
    has_attachments: bool | None = None
    thread_id: str | None = None
    query: str | None = None
