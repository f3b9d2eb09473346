"""Bodies of the sending API: connectors, routes, messages, suppressions."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from mailgate.config import CONNECTOR_SECRETS
from mailgate.domain.outbound import (
    AttemptRecord,
    ConnectorSpec,
    DeliveryRecord,
    RouteSpec,
    Suppression,
    TemplateRecord,
)
from mailgate.outbound.service import MessageView


class _ConnectorBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")
    tenant: str | None = Field(None, description="Owning tenant; omit for a global connector (admin).")
    timeout: float = Field(30.0, gt=0, le=600)
    rate_limit: float | None = Field(
        None, gt=0, le=100000, description="Most messages per second through this connector, per worker."
    )

    def config(self) -> dict[str, Any]:
        return self.model_dump(exclude={"name", "type", "tenant"}, exclude_none=True)


class SmtpRelayIn(_ConnectorBase):
    """A smarthost or a provider's submission port."""

    type: Literal["smtp_relay"]
    host: str = Field(min_length=1, max_length=255)
    port: int = Field(587, ge=1, le=65535)
    tls: Literal["none", "starttls", "implicit"] = "starttls"
    auth: Literal["password", "xoauth2"] = "password"
    username: str | None = None
    password: str | None = None
    token_url: str | None = Field(None, description="XOAUTH2: the OAuth2 token endpoint.")
    client_id: str | None = None
    client_secret: str | None = None
    refresh_token: str | None = Field(None, description="XOAUTH2: refresh-token grant; unset: client credentials.")
    scope: str | None = None
    max_connections: int = Field(4, ge=1, le=100)
    max_messages_per_connection: int = Field(100, ge=1, le=100000)
    idle_timeout: float = Field(30.0, gt=0, le=3600)
    validate_certs: bool = True
    ca_file: str | None = None
    helo_name: str | None = None


class MxIn(_ConnectorBase):
    """Direct delivery to each recipient domain's MX hosts (opportunistic STARTTLS, MTA-STS enforced)."""

    type: Literal["mx"]
    port: int = Field(25, ge=1, le=65535, description="25 on the Internet; others for closed networks and tests.")
    tls: Literal["may", "encrypt", "none"] = "may"
    mta_sts: bool = True
    ca_file: str | None = None
    helo_name: str | None = None
    timeout: float = Field(60.0, gt=0, le=600)
    max_connections_per_domain: int = Field(3, ge=1, le=100)
    max_messages_per_connection: int = Field(100, ge=1, le=100000)
    idle_timeout: float = Field(5.0, gt=0, le=3600)


class GraphIn(_ConnectorBase):
    """Microsoft 365 / Exchange Online through Microsoft Graph (client-credentials app registration)."""

    type: Literal["graph"]
    tenant_id: str = Field(min_length=1, description="The Entra ID (Azure AD) tenant of the app registration.")
    client_id: str = Field(min_length=1)
    client_secret: str = Field(min_length=1)
    user_id: str = Field(min_length=1, description="The mailbox that sends (id or user principal name).")
    base_url: str = "https://graph.microsoft.com"
    authority: str = "https://login.microsoftonline.com"
    scope: str = "https://graph.microsoft.com/.default"


class GmailIn(_ConnectorBase):
    """Google Workspace / Gmail through the Gmail API (OAuth2 refresh token)."""

    type: Literal["gmail"]
    client_id: str = Field(min_length=1)
    client_secret: str = Field(min_length=1)
    refresh_token: str = Field(min_length=1)
    user_id: str = "me"
    base_url: str = "https://gmail.googleapis.com"
    token_url: str = "https://oauth2.googleapis.com/token"  # noqa: S105 - a URL, not a secret


ConnectorIn = Annotated[SmtpRelayIn | MxIn | GraphIn | GmailIn, Field(discriminator="type")]


class ConnectorOut(BaseModel):
    id: str
    name: str
    type: str
    tenant: str | None
    config: dict[str, Any]
    created_at: AwareDatetime
    updated_at: AwareDatetime

    @classmethod
    def of(cls, c: ConnectorSpec) -> ConnectorOut:
        shown = {k: ("********" if k in CONNECTOR_SECRETS and v else v) for k, v in c.config.items()}
        return cls(
            id=c.id,
            name=c.name,
            type=c.type,
            tenant=c.scope or None,
            config=shown,
            created_at=c.created_at,
            updated_at=c.updated_at,
        )


class ConnectorPage(BaseModel):
    items: list[ConnectorOut]
    next_cursor: str | None = None


class RouteMatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sender_domains: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)


class RouteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    connectors: list[str] = Field(min_length=1, description="Connector names, tried in this order.")
    match: RouteMatch = Field(default_factory=RouteMatch)
    tenant: str | None = None


class RouteOut(BaseModel):
    id: str
    name: str
    tenant: str | None
    connectors: list[str]
    match: dict[str, Any]
    created_at: AwareDatetime
    updated_at: AwareDatetime

    @classmethod
    def of(cls, r: RouteSpec) -> RouteOut:
        return cls(
            id=r.id,
            name=r.name,
            tenant=r.scope or None,
            connectors=r.connectors,
            match=r.match,
            created_at=r.created_at,
            updated_at=r.updated_at,
        )


class RoutePage(BaseModel):
    items: list[RouteOut]
    next_cursor: str | None = None


class AttachmentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    filename: str = Field(min_length=1, max_length=255)
    content: str = Field(description="The bytes, base64-encoded.")
    content_type: str = "application/octet-stream"
    content_id: str | None = Field(None, description="For inline parts referenced as cid: in the html.")
    inline: bool = False


class SendIn(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_: str = Field(alias="from", min_length=3, max_length=998)
    to: list[str] = Field(default_factory=list, max_length=1000)
    cc: list[str] = Field(default_factory=list, max_length=1000)
    bcc: list[str] = Field(default_factory=list, max_length=1000)
    reply_to: list[str] = Field(default_factory=list, max_length=20)
    subject: str = Field("", max_length=998)
    text: str | None = None
    html: str | None = None
    headers: dict[str, str] = Field(default_factory=dict, max_length=100)
    attachments: list[AttachmentIn] = Field(default_factory=list, max_length=100)
    tags: list[str] = Field(default_factory=list, max_length=20)
    metadata: dict[str, Any] = Field(default_factory=dict)
    send_at: AwareDatetime | None = None
    template: str | None = None
    variables: dict[str, Any] = Field(default_factory=dict)
    route: str | None = Field(None, description="Name of the route to use instead of matching one.")


class DeliveryBrief(BaseModel):
    id: str
    recipient: str
    status: str


class SendAccepted(BaseModel):
    id: str
    deliveries: list[DeliveryBrief]


class AttemptOut(BaseModel):
    at: AwareDatetime
    connector: str | None
    status: str
    reply: str | None
    duration_ms: int

    @classmethod
    def of(cls, a: AttemptRecord) -> AttemptOut:
        return cls(at=a.at, connector=a.connector, status=a.outcome, reply=a.reply, duration_ms=a.duration_ms)


class DeliveryOut(BaseModel):
    id: str
    recipient: str
    status: str
    attempts: int
    next_attempt_at: AwareDatetime | None
    last_reply: str | None
    last_connector: str | None
    history: list[AttemptOut]

    @classmethod
    def of(cls, d: DeliveryRecord, history: list[AttemptRecord]) -> DeliveryOut:
        return cls(
            id=d.id,
            recipient=d.recipient,
            status=d.status.value,
            attempts=d.attempts,
            next_attempt_at=None if d.status.final else d.next_attempt_at,
            last_reply=d.last_reply,
            last_connector=d.last_connector,
            history=[AttemptOut.of(a) for a in history],
        )


class MessageOut(BaseModel):
    id: str
    tenant: str
    created_at: AwareDatetime
    envelope_from: str
    subject: str | None
    message_id: str | None
    size: int
    tags: list[str]
    metadata: dict[str, Any]
    source: str
    deliveries: list[DeliveryOut]

    @classmethod
    def of(cls, v: MessageView) -> MessageOut:
        m = v.message
        return cls(
            id=m.id,
            tenant=m.tenant_id,
            created_at=m.created_at,
            envelope_from=m.mail_from,
            subject=m.summary.get("subject"),
            message_id=m.summary.get("message_id"),
            size=m.size,
            tags=m.tags,
            metadata=m.meta,
            source=m.source,
            deliveries=[DeliveryOut.of(d, v.attempts.get(d.id, [])) for d in v.deliveries],
        )


class SuppressionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    address: str = Field(min_length=3, max_length=320)
    reason: Literal["manual", "bounce", "complaint", "unsubscribe"] = "manual"


class SuppressionOut(BaseModel):
    id: str
    address: str
    reason: str
    created_at: AwareDatetime
    detail: str | None = None

    @classmethod
    def of(cls, s: Suppression) -> SuppressionOut:
        return cls(id=s.address, address=s.address, reason=s.reason, created_at=s.created_at, detail=s.detail)


class SuppressionPage(BaseModel):
    items: list[SuppressionOut]
    next_cursor: str | None


class QueuedDelivery(BaseModel):
    id: str
    message_id: str
    tenant: str
    recipient: str
    status: str
    attempts: int
    next_attempt_at: AwareDatetime | None
    last_reply: str | None
    last_connector: str | None
    created_at: AwareDatetime

    @classmethod
    def of(cls, d: DeliveryRecord) -> QueuedDelivery:
        return cls(
            id=d.id,
            message_id=d.message_id,
            tenant=d.tenant_id,
            recipient=d.recipient,
            status=d.status.value,
            attempts=d.attempts,
            next_attempt_at=None if d.status.final else d.next_attempt_at,
            last_reply=d.last_reply,
            last_connector=d.last_connector,
            created_at=d.created_at,
        )


class QueueOut(BaseModel):
    counts: dict[str, int] = Field(description="Deliveries by status (the caller's tenant, or all for admins).")
    items: list[QueuedDelivery] = Field(description="Deliveries matching the filters, oldest id first.")
    next_cursor: str | None


class QueueRetried(BaseModel):
    retried: int


class TemplateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    subject: str = Field(max_length=998 * 4)
    text: str | None = None
    html: str | None = None


class TemplateUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    subject: str = Field(max_length=998 * 4)
    text: str | None = None
    html: str | None = None


class TemplateOut(BaseModel):
    id: str
    name: str
    subject: str
    text: str | None
    html: str | None
    created_at: AwareDatetime
    updated_at: AwareDatetime

    @classmethod
    def of(cls, t: TemplateRecord) -> TemplateOut:
        return cls(
            id=t.id,
            name=t.name,
            subject=t.subject,
            text=t.text,
            html=t.html,
            created_at=t.created_at,
            updated_at=t.updated_at,
        )


class TemplateList(BaseModel):
    items: list[TemplateOut]


class PreviewIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    variables: dict[str, Any] = Field(default_factory=dict)


class PreviewOut(BaseModel):
    subject: str
    text: str | None
    html: str | None


class BatchRecipientIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    to: str = Field(min_length=3, max_length=998)
    variables: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)


class BatchIn(SendIn):
    """The common message, and one entry per recipient; each recipient gets a message of its own."""

    to: list[str] = Field(default_factory=list, max_length=0, description="Not used: see `recipients`.")
    recipients: list[BatchRecipientIn] = Field(min_length=1, max_length=1000)


class BatchAccepted(BaseModel):
    messages: list[SendAccepted]


class RawParams(BaseModel):
    """The query parameters of a raw-MIME ``POST /v1/messages``; the route parses them itself only for
    a raw body (its OpenAPI entry documents them)."""

    mail_from: str | None = None
    to: list[str] | None = None
    tag: list[str] | None = None
    route: str | None = None
    send_at: datetime | None = None
