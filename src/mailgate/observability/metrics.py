"""The one Prometheus registry of a node; every layer registers its metrics here."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from mailgate.observability.worker_metrics import WorkerMetrics

REGISTRY = CollectorRegistry(auto_describe=True)
# what /metrics shows: this process's registry plus the counts its worker processes report
WORKERS = WorkerMetrics(REGISTRY)
_EXPOSED = CollectorRegistry(auto_describe=False)
_EXPOSED.register(WORKERS)  # a collector needs only collect()

HTTP_REQUESTS = Counter(
    "mailgate_http_requests_total",
    "HTTP API requests by method, route template and status code.",
    ["method", "route", "status"],
    registry=REGISTRY,
)
HTTP_LATENCY = Histogram(
    "mailgate_http_request_duration_seconds",
    "HTTP API request latency by method and route template.",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY,
)
AUDIT_ENTRIES = Counter(
    "mailgate_audit_entries_total", "Audit entries appended, by outcome.", ["outcome"], registry=REGISTRY
)
EVENTS_EMITTED = Counter(
    "mailgate_events_total", "Events appended to the event stream, by type.", ["type"], registry=REGISTRY
)
BUILD_INFO = Gauge("mailgate_build_info", "Version of this node.", ["version"], registry=REGISTRY)
ROLE_UP = Gauge("mailgate_role_up", "1 while a role runs on this node.", ["role"], registry=REGISTRY)


def exposition() -> tuple[bytes, str]:
    return generate_latest(_EXPOSED), CONTENT_TYPE_LATEST


DELIVERIES = Counter(
    "mailgate_deliveries_total",
    "Delivery attempts by resulting status and connector.",
    ["status", "connector"],
    registry=REGISTRY,
)
DELIVERY_LATENCY = Histogram(
    "mailgate_delivery_latency_seconds",
    "From acceptance to a 2xx at the next hop.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400, 86400),
    registry=REGISTRY,
)
CONNECTOR_STATE = Gauge(
    "mailgate_connector_up",
    "1 while a connector's circuit is closed, 0 while open or probing.",
    ["connector"],
    registry=REGISTRY,
)
SUBMISSIONS = Counter(
    "mailgate_smtp_submissions_total",
    "SMTP submission outcomes: accepted, refused, unavailable, error, auth_failed.",
    ["outcome"],
    registry=REGISTRY,
)
GROUP_COMMIT_SIZE = Histogram(
    "mailgate_group_commit_size",
    "Writes committed together in one database transaction.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge(
    "mailgate_queue_deliveries",
    "Deliveries by status across all tenants, refreshed by the delivery workers every few seconds.",
    ["status"],
    registry=REGISTRY,
)
SMTP_CONNECTIONS = Counter(
    "mailgate_smtp_connections_total",
    "SMTP connections by listener (mx, submission) and outcome: accepted, or refused at connect with 421 "
    "because the listener's per-address (limit_per_ip) or overall (limit_total) limit was reached.",
    ["listener", "outcome"],
    registry=REGISTRY,
)
MX_RECIPIENTS = Counter(
    "mailgate_mx_recipients_total",
    "MX RCPT outcomes (accepted, refused, deferred, too_many, error) and the enhanced status code answered.",
    ["outcome", "status"],
    registry=REGISTRY,
)
MX_MESSAGES = Counter(
    "mailgate_mx_messages_total",
    "MX messages after DATA: accepted, refused (5xx, e.g. 5.7.1 spam), deferred (4xx), error (the inbound "
    "service raised or timed out), with the enhanced status code answered.",
    ["outcome", "status"],
    registry=REGISTRY,
)
