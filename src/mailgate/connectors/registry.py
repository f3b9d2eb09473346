"""Connector types by name: one place turns a stored connector into a live Sender."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mailgate.connectors.base import Sender
from mailgate.connectors.smtp_relay import SmtpRelayConfig, SmtpRelaySender
from mailgate.domain.errors import InvalidInput
from mailgate.domain.outbound import ConnectorSpec


def _smtp_relay(name: str, config: dict[str, Any]) -> Sender:
    try:
        return SmtpRelaySender(SmtpRelayConfig(**config), name=name)
    except TypeError as exc:
        raise InvalidInput(f"bad smtp_relay configuration: {exc}") from None


BUILDERS: dict[str, Callable[[str, dict[str, Any]], Sender]] = {"smtp_relay": _smtp_relay}


def build_sender(spec: ConnectorSpec) -> Sender:
    builder = BUILDERS.get(spec.type)
    if builder is None:
        raise InvalidInput(f"unknown connector type {spec.type!r} (known: {', '.join(BUILDERS)})", field="type")
    return builder(spec.name, spec.config)
