"""Connector types by name: one place turns a stored connector into a live Sender.

Most types need only their own configuration; direct MX delivery also needs the node's DNS resolver and
MTA-STS policy cache, which every mx connector of a node shares (one cache, one set of lookups).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mailgate.connectors.base import Sender
from mailgate.connectors.dns import DnsResolver
from mailgate.connectors.gmail import GmailConfig, GmailSender
from mailgate.connectors.graph import GraphConfig, GraphSender
from mailgate.connectors.mta_sts import MtaSts
from mailgate.connectors.mx import MxConfig, MxSender
from mailgate.connectors.smtp_relay import SmtpRelayConfig, SmtpRelaySender
from mailgate.domain.errors import InvalidInput
from mailgate.domain.outbound import ConnectorSpec

TYPES = ("smtp_relay", "mx", "graph", "gmail")
ROUTING_KEYS = frozenset({"rate_limit"})  # settings the router applies around any connector


class ConnectorFactory:
    def __init__(self, resolver: DnsResolver) -> None:
        self._resolver = resolver
        self._mta_sts: MtaSts | None = None
        self._builders: dict[str, Callable[[str, dict[str, Any]], Sender]] = {
            "smtp_relay": lambda name, c: SmtpRelaySender(SmtpRelayConfig(**c), name=name),
            "mx": self._mx,
            "graph": lambda name, c: GraphSender(GraphConfig(**c), name=name),
            "gmail": lambda name, c: GmailSender(GmailConfig(**c), name=name),
        }

    def __call__(self, spec: ConnectorSpec) -> Sender:
        builder = self._builders.get(spec.type)
        if builder is None:
            raise InvalidInput(f"unknown connector type {spec.type!r} (known: {', '.join(TYPES)})", field="type")
        config = {k: v for k, v in spec.config.items() if k not in ROUTING_KEYS}
        try:
            return builder(spec.name, config)
        except TypeError as exc:
            raise InvalidInput(f"bad {spec.type} configuration: {exc}") from None

    def _mx(self, name: str, config: dict[str, Any]) -> Sender:
        mx_config = MxConfig(**config)
        if mx_config.mta_sts and self._mta_sts is None:
            self._mta_sts = MtaSts(self._resolver)
        return MxSender(mx_config, name=name, resolver=self._resolver, mta_sts=self._mta_sts)
