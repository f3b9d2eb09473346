"""The database schema, as SQLAlchemy Core tables. Migrations under ``migrations/`` build exactly this."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from mailgate.store.types import BigIntId, JsonText, UtcDateTime

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

tenants = Table(
    "tenants",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("created_at", UtcDateTime(), nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant_id", String(32), ForeignKey("tenants.id", ondelete="CASCADE"), nullable=True, index=True),
    Column("name", String(200), nullable=False),
    Column("secret_hash", String(64), nullable=False),
    Column("scopes", String(200), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("revoked_at", UtcDateTime(), nullable=True),
)

# Audit rows carry no foreign keys: the trail must outlive the objects it describes.
audit_log = Table(
    "audit_log",
    metadata,
    Column("seq", BigInteger(), primary_key=True, autoincrement=False),
    Column("at", UtcDateTime(), nullable=False),
    Column("actor", String(200), nullable=False),
    Column("tenant_id", String(32), nullable=True, index=True),
    Column("action", String(100), nullable=False),
    Column("object_type", String(50), nullable=True),
    Column("object_id", String(200), nullable=True),
    Column("request_id", String(100), nullable=True),
    Column("outcome", String(20), nullable=False),
    Column("details", JsonText(), nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)

# One row (id = 1): the chain's tip, so that deleting the newest entries is detected too.
audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer(), primary_key=True, autoincrement=False),
    Column("seq", BigInteger(), nullable=False),
    Column("hash", String(64), nullable=False),
)

events = Table(
    "events",
    metadata,
    Column("id", BigIntId, primary_key=True, autoincrement=True),
    Column("at", UtcDateTime(), nullable=False),
    Column("tenant_id", String(32), nullable=True),
    Column("type", String(100), nullable=False),
    Column("object_id", String(200), nullable=True),
    Column("data", JsonText(), nullable=False),
    Index("ix_events_tenant_id_id", "tenant_id", "id"),
    sqlite_autoincrement=True,
)

data_keys = Table(
    "data_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("purpose", String(20), nullable=False),
    Column("master_kid", String(40), nullable=False),
    Column("wrapped", LargeBinary(), nullable=False),
    Column("active", Boolean(), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
)

blobs = Table(
    "blobs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("size", BigInteger(), nullable=False),
    Column("key_id", String(32), nullable=False),
    Column("location", String(10), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
)

blob_data = Table(
    "blob_data",
    metadata,
    Column("id", String(64), ForeignKey("blobs.id", ondelete="CASCADE"), primary_key=True),
    Column("data", LargeBinary(), nullable=False),
)

meta = Table(
    "meta",
    metadata,
    Column("key", String(100), primary_key=True),
    Column("value", Text(), nullable=False),
)

# ----- outbound -----

# ``scope`` is the owning tenant's id, or "" for global objects: a NOT NULL column, so the unique
# constraint holds for global names too (NULLs would never collide).
connectors = Table(
    "connectors",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("scope", String(32), nullable=False),
    Column("name", String(100), nullable=False),
    Column("type", String(30), nullable=False),
    Column("config", LargeBinary(), nullable=False),  # sealed JSON: it may hold credentials
    Column("created_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    UniqueConstraint("scope", "name"),
)

routes = Table(
    "routes",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("scope", String(32), nullable=False),
    Column("name", String(100), nullable=False),
    Column("connectors", JsonText(), nullable=False),
    Column("match", JsonText(), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    UniqueConstraint("scope", "name"),
)

messages = Table(
    "messages",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant_id", String(32), ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("mail_from", String(320), nullable=False),
    Column("blob_id", String(64), nullable=False),
    Column("size", BigInteger(), nullable=False),
    Column("summary", LargeBinary(), nullable=False),  # sealed JSON: subject, header From/To
    Column("tags", JsonText(), nullable=False),
    Column("meta", JsonText(), nullable=False),
    Column("route", String(100), nullable=True),
    Column("source", String(20), nullable=False),
    Index("ix_messages_tenant_id_created_at", "tenant_id", "created_at"),
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("message_id", String(32), ForeignKey("messages.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("tenant_id", String(32), nullable=False),
    Column("recipient", String(320), nullable=False),
    Column("domain", String(255), nullable=False),
    Column("status", String(20), nullable=False),
    Column("attempts", Integer(), nullable=False),
    Column("next_attempt_at", UtcDateTime(), nullable=False),
    Column("lease_owner", String(64), nullable=True),
    Column("lease_expires_at", UtcDateTime(), nullable=True),
    Column("last_reply", Text(), nullable=True),
    Column("last_connector", String(100), nullable=True),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    Index("ix_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
)

attempts = Table(
    "attempts",
    metadata,
    Column("id", BigIntId, primary_key=True, autoincrement=True),
    Column("delivery_id", String(32), ForeignKey("deliveries.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("at", UtcDateTime(), nullable=False),
    Column("connector", String(100), nullable=True),
    Column("outcome", String(20), nullable=False),
    Column("reply", Text(), nullable=True),
    Column("duration_ms", Integer(), nullable=False),
    sqlite_autoincrement=True,
)

suppressions = Table(
    "suppressions",
    metadata,
    Column("tenant_id", String(32), ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True),
    Column("address", String(320), primary_key=True),
    Column("reason", String(30), nullable=False),
    Column("detail", Text(), nullable=True),
    Column("created_at", UtcDateTime(), nullable=False),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("tenant_id", String(32), ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True),
    Column("key", String(200), primary_key=True),
    Column("request_hash", String(64), nullable=False),
    Column("response", JsonText(), nullable=True),
    Column("created_at", UtcDateTime(), nullable=False),
)

dkim_keys = Table(
    "dkim_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("scope", String(32), nullable=False),
    Column("domain", String(255), nullable=False),
    Column("selector", String(63), nullable=False),
    Column("algorithm", String(10), nullable=False),
    Column("private_key", LargeBinary(), nullable=False),  # sealed PEM
    Column("dns_value", Text(), nullable=False),
    Column("active", Boolean(), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    UniqueConstraint("domain", "selector"),
)

smtp_credentials = Table(
    "smtp_credentials",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant_id", String(32), ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("username", String(64), nullable=False, unique=True),
    Column("password_hash", String(200), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("revoked_at", UtcDateTime(), nullable=True),
)

templates = Table(
    "templates",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant_id", String(32), ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(200), nullable=False),
    Column("subject", Text(), nullable=False),
    Column("text", Text(), nullable=True),
    Column("html", Text(), nullable=True),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    UniqueConstraint("tenant_id", "name"),
)

# ----- inbound: domains, mailboxes, folders, stored mail -----

# The spam thresholds are per domain; NULL means the gateway's configured default.
domains = Table(
    "domains",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant_id", String(32), ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("name", String(255), nullable=False, unique=True),
    Column("catch_all", String(32), nullable=True),  # a mailbox id; no FK: deleting it clears the setting
    Column("spam_tag", Float(), nullable=True),
    Column("spam_junk", Float(), nullable=True),
    Column("spam_reject", Float(), nullable=True),
    Column("created_at", UtcDateTime(), nullable=False),
)

mailboxes = Table(
    "mailboxes",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant_id", String(32), ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("domain_id", String(32), ForeignKey("domains.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("address", String(320), nullable=False, unique=True),
    Column("display_name", LargeBinary(), nullable=True),  # sealed: a person's name
    Column("settings", JsonText(), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
)

aliases = Table(
    "aliases",
    metadata,
    Column("address", String(320), primary_key=True),
    Column("tenant_id", String(32), nullable=False),
    Column("mailbox_id", String(32), ForeignKey("mailboxes.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("created_at", UtcDateTime(), nullable=False),
)

# ``uidnext`` is taken with UPDATE ... RETURNING inside the storing transaction, so UIDs are strictly
# ascending per folder, as IMAP requires; ``uidvalidity`` changes only if the folder is recreated.
folders = Table(
    "folders",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("mailbox_id", String(32), ForeignKey("mailboxes.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(200), nullable=False),
    Column("special_use", String(20), nullable=True),
    Column("uidvalidity", BigInteger(), nullable=False),
    Column("uidnext", BigInteger(), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    UniqueConstraint("mailbox_id", "name"),
)

# Content (subject, names, bodies, attachment names) is only in the sealed ``record``; the clear columns
# are what listing and filtering need and reveal no content: keyed hashes stand in for ids and subjects.
mail = Table(
    "mail",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant_id", String(32), ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    Column("mailbox_id", String(32), ForeignKey("mailboxes.id", ondelete="CASCADE"), nullable=False),
    Column("folder_id", String(32), ForeignKey("folders.id", ondelete="CASCADE"), nullable=False),
    Column("uid", BigInteger(), nullable=False),
    Column("direction", String(10), nullable=False),
    Column("received_at", UtcDateTime(), nullable=False),
    Column("size", BigInteger(), nullable=False),
    Column("blob_id", String(64), nullable=False, index=True),
    Column("record", LargeBinary(), nullable=False),  # sealed JSON of the parsed message
    Column("thread_id", String(32), nullable=False),
    Column("message_key", String(20), nullable=True),  # keyed hash of the Message-ID
    Column("subject_key", String(20), nullable=True),  # keyed hash of the normalized subject
    Column("has_attachments", Boolean(), nullable=False),
    Column("spam_score", Float(), nullable=False),
    Column("seen", Boolean(), nullable=False),
    Column("flagged", Boolean(), nullable=False),
    Column("answered", Boolean(), nullable=False),
    Column("deleted", Boolean(), nullable=False),
    Column("draft", Boolean(), nullable=False),
    Column("keywords", JsonText(), nullable=False),
    UniqueConstraint("folder_id", "uid"),
    Index("ix_mail_mailbox_id_received_at", "mailbox_id", "received_at"),
    Index("ix_mail_mailbox_id_thread_id", "mailbox_id", "thread_id"),
    Index("ix_mail_mailbox_id_message_key", "mailbox_id", "message_key"),
)

# The blind index: one row per (keyed hash of a normalized word, message). A word's hash is per tenant,
# so the same word in two tenants' mail gives unrelated rows.
mail_terms = Table(
    "mail_terms",
    metadata,
    Column("term", String(20), primary_key=True),
    Column("mail_id", String(32), ForeignKey("mail.id", ondelete="CASCADE"), primary_key=True, index=True),
    sqlite_with_rowid=False,
)
