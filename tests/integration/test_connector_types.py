"""Every connector type created over the API and used by the real worker: direct MX (loopback DNS),
Microsoft Graph and Gmail (local fakes of their documented HTTP APIs)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from mailgate.testing.fake_gmail import FakeGmail
from mailgate.testing.fake_graph import FakeGraph
from mailgate.testing.smtp_sink import SmtpSink
from tests.integration.conftest import Node, msg, setup_tenant, wait_status


async def _route_through(node: Node, connector: dict[str, Any]) -> None:
    r = await node.call("POST", "/v1/connectors", node.admin_key, json=connector)
    assert r.status_code == 201, r.text
    assert "client_secret" not in r.text or "********" in r.text
    r = await node.call("PUT", "/v1/routes/default", node.admin_key, json={"connectors": [connector["name"]]})
    assert r.status_code in (200, 201), r.text


async def test_direct_mx_delivery(node: Node, sinks: list[SmtpSink]) -> None:
    key = await setup_tenant(node, sinks)
    node.dns.add("example.test", "MX", "10 mx1.example.test.")
    node.dns.add("mx1.example.test", "A", "127.0.0.1")
    await _route_through(node, {"name": "direct", "type": "mx", "port": sinks[1].port, "timeout": 5})
    r = await node.call("POST", "/v1/messages", key, json=msg("someone@example.test"))
    gone = await node.call("POST", "/v1/messages", key, json=msg("x@nowhere.test"))
    await sinks[1].wait_for(1, timeout=20)
    assert sinks[1].messages[0].rcpt_tos == ["someone@example.test"]
    await wait_status(node, key, r.json()["id"], "sent")
    body = await wait_status(node, key, gone.json()["id"], "bounced")
    assert body["deliveries"][0]["history"][0]["reply"].startswith("550")


async def test_graph_connector(node: Node, sinks: list[SmtpSink]) -> None:
    key = await setup_tenant(node, sinks)
    async with FakeGraph(tenant_id="t-1", client_id="c-1", client_secret="s-1", users={"app@acme.test"}) as graph:
        await _route_through(
            node,
            {
                "name": "m365",
                "type": "graph",
                "tenant_id": "t-1",
                "client_id": "c-1",
                "client_secret": "s-1",
                "user_id": "app@acme.test",
                "base_url": graph.base_url,
                "authority": graph.base_url,
            },
        )
        r = await node.call("POST", "/v1/messages", key, json=msg("ann@example.net", subject="via graph"))
        body = await wait_status(node, key, r.json()["id"], "sent")
        assert body["deliveries"][0]["history"][0]["connector"] == "m365"
        assert len(graph.sent) == 1 and b"Subject: via graph" in graph.sent[0].mime


async def test_gmail_connector_defers_on_throttling_then_sends(node: Node, sinks: list[SmtpSink]) -> None:
    key = await setup_tenant(node, sinks)
    async with FakeGmail(client_id="c-2", client_secret="s-2", refresh_token="r-2") as gmail:
        await _route_through(
            node,
            {
                "name": "workspace",
                "type": "gmail",
                "client_id": "c-2",
                "client_secret": "s-2",
                "refresh_token": "r-2",
                "base_url": gmail.base_url,
                "token_url": gmail.base_url + "/token",
            },
        )
        gmail.throttle(times=1, retry_after=1)
        start = time.monotonic()
        r = await node.call("POST", "/v1/messages", key, json=msg("bob@example.org", subject="via gmail"))
        body = await wait_status(node, key, r.json()["id"], "sent", timeout=30)
        history = body["deliveries"][0]["history"]
        statuses = [h["status"] for h in history]
        assert statuses[-1] == "sent" and set(statuses[:-1]) == {"deferred"}
        assert history[0]["reply"].startswith("451")
        assert gmail.token_requests == 1  # one token, cached across the attempts
        assert time.monotonic() - start >= 1.0  # Retry-After was honoured
        assert len(gmail.sent) == 1 and b"Subject: via gmail" in gmail.sent[0].mime


@pytest.mark.parametrize(
    ("connector", "field"),
    [
        ({"name": "x", "type": "graph", "client_id": "c"}, "tenant_id"),
        ({"name": "x", "type": "mx", "tls": "sometimes"}, "tls"),
        ({"name": "x", "type": "carrier-pigeon"}, "type"),
    ],
)
async def test_bad_connector_bodies_are_422_naming_the_field(node: Node, connector: dict[str, Any], field: str) -> None:
    r = await node.call("POST", "/v1/connectors", node.admin_key, json=connector)
    assert r.status_code == 422
    assert field in r.text
