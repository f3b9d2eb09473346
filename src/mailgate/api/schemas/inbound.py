"""Domains, mailboxes, folders and stored (received) messages."""

from __future__ import annotations

from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from mailgate.domain.mailboxes import Domain, Folder, Mailbox, StoredMail
from mailgate.inbound.mail import attachment_id


class DomainCreate(BaseModel):
    name: str = Field(min_length=1, max_length=255)
    tenant: str | None = Field(None, description="Tenant id or name; a tenant's own key may omit it.")


class DomainUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    catch_all: str | None = Field(None, description="Mailbox id or address receiving mail for unknown addresses.")
    spam_tag: float | None = Field(None, ge=0, description="Score at which mail is tagged (default 5).")
    spam_junk: float | None = Field(None, ge=0, description="Score at which mail goes to Junk (default 8).")
    spam_reject: float | None = Field(None, ge=0, description="Score refused at SMTP time with 550 (default 15).")


class SpamThresholdsOut(BaseModel):
    tag: float
    junk: float
    reject: float


class DomainOut(BaseModel):
    id: str
    tenant: str
    name: str
    catch_all: str | None
    spam: SpamThresholdsOut
    created_at: AwareDatetime

    @classmethod
    def of(cls, d: Domain) -> DomainOut:
        spam = SpamThresholdsOut(tag=d.spam.tag, junk=d.spam.junk, reject=d.spam.reject)
        return cls(id=d.id, tenant=d.tenant_id, name=d.name, catch_all=d.catch_all, spam=spam, created_at=d.created_at)


class DomainPage(BaseModel):
    items: list[DomainOut]
    next_cursor: str | None


class MailboxCreate(BaseModel):
    address: str = Field(min_length=3, max_length=320)
    tenant: str | None = Field(None, description="Tenant id or name; a tenant's own key may omit it.")
    display_name: str | None = Field(None, max_length=200)


class MailboxUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    address: str | None = Field(None, max_length=320, description="A new address: renames the mailbox.")
    display_name: str | None = Field(None, max_length=200)


class AliasIn(BaseModel):
    address: str = Field(min_length=3, max_length=320)


class MailboxOut(BaseModel):
    id: str
    tenant: str
    domain: str
    address: str
    display_name: str
    aliases: list[str]
    created_at: AwareDatetime
    updated_at: AwareDatetime

    @classmethod
    def of(cls, m: Mailbox) -> MailboxOut:
        return cls(
            id=m.id,
            tenant=m.tenant_id,
            domain=m.domain_id,
            address=m.address,
            display_name=m.display_name,
            aliases=list(m.aliases),
            created_at=m.created_at,
            updated_at=m.updated_at,
        )


class MailboxPage(BaseModel):
    items: list[MailboxOut]
    next_cursor: str | None


class FolderIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)


class FolderOut(BaseModel):
    id: str
    name: str
    special_use: str | None
    uidvalidity: int
    uidnext: int
    total: int
    unread: int

    @classmethod
    def of(cls, f: Folder) -> FolderOut:
        return cls(
            id=f.id,
            name=f.name,
            special_use=f.special_use,
            uidvalidity=f.uidvalidity,
            uidnext=f.uidnext,
            total=f.total,
            unread=f.unread,
        )


class FolderList(BaseModel):
    items: list[FolderOut]


class MailUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seen: bool | None = None
    flagged: bool | None = None
    answered: bool | None = None
    deleted: bool | None = None
    draft: bool | None = None
    keywords: list[str] | None = Field(None, description="Replaces every keyword.")
    add_keywords: list[str] | None = None
    remove_keywords: list[str] | None = None
    folder: str | None = Field(None, description="Move the message into this folder (it gets a new UID there).")


def _first(addresses: list[dict[str, Any]]) -> dict[str, Any] | None:
    return addresses[0] if addresses else None


def _attachments(record: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "id": attachment_id(a["index"]),
            "filename": a.get("filename"),
            "content_type": a.get("content_type"),
            "size": a.get("size"),
            "sha256": a.get("sha256"),
            "content_id": a.get("content_id"),
            "inline": a.get("inline", False),
        }
        for a in record.get("attachments", [])
    ]


def parsed_fields(r: dict[str, Any]) -> dict[str, Any]:
    """The parsed-message fields every message shows, received or sent (``r`` is a parsed record)."""
    return {
        "subject": r.get("subject", ""),
        "from": _first(r.get("from", [])),
        "sender": r.get("sender"),
        "reply_to": r.get("reply_to", []),
        "to": r.get("to", []),
        "cc": r.get("cc", []),
        "bcc": r.get("bcc", []),
        "date": r.get("date"),
        "message_id": r.get("message_id"),
        "in_reply_to": r.get("in_reply_to"),
        "references": r.get("references", []),
        "text": r.get("text", ""),
        "html": r.get("html"),
        "reply_text": r.get("reply_text", ""),
        "attachments": _attachments(r),
        "calendar": r.get("calendar", []),
        "headers": r.get("headers", []),
        "defects": r.get("defects", []),
    }


def mail_summary(m: StoredMail) -> dict[str, Any]:
    """One row of a mailbox listing: enough to show a message list without fetching each message."""
    r = m.record
    return {
        "id": m.id,
        "direction": m.direction.value,
        "mailbox_id": m.mailbox_id,
        "folder": m.folder,
        "uid": m.uid,
        "received_at": m.received_at.isoformat(),
        "size": m.size,
        "flags": m.flags.to_json(),
        "thread_id": m.thread_id,
        "subject": r.get("subject", ""),
        "from": _first(r.get("from", [])),
        "to": r.get("to", []),
        "date": r.get("date"),
        "snippet": " ".join((r.get("reply_text") or r.get("text") or "").split())[:200],
        "has_attachments": m.has_attachments,
        "spam": r.get("spam", {"score": m.spam_score}),
    }


def mail_detail(m: StoredMail) -> dict[str, Any]:
    """The parsed message, as ``GET /v1/messages/{id}`` answers for received mail."""
    r = m.record
    return {
        **mail_summary(m),
        **parsed_fields(r),
        "auth": r.get("auth", {}),
        "envelope": r.get("envelope", {}),
    }


class MailPage(BaseModel):
    items: list[dict[str, Any]]
    next_cursor: str | None


class ThreadOut(BaseModel):
    id: str
    items: list[dict[str, Any]]
