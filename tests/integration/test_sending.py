"""Sending end to end over real sockets: REST in, the worker out through relays (aiosmtpd sinks)."""

from __future__ import annotations

import asyncio
import base64
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import dkim
import pytest

from mailgate.domain.tenancy import SYSTEM
from mailgate.store.schema import deliveries
from mailgate.testing.smtp_sink import SmtpSink
from tests.conftest import Api
from tests.integration.conftest import msg, setup_tenant, wait_status


async def test_rest_send_is_delivered_with_history(node: Api, sinks: list[SmtpSink]) -> None:
    key = await setup_tenant(node, sinks)
    ids = []
    for i in range(10):
        r = await node.call("POST", "/v1/messages", key, json=msg(f"user{i}@example.net", tags=["t1"]))
        assert r.status_code == 202, r.text
        assert r.json()["deliveries"][0]["status"] == "queued"
        ids.append(r.json()["id"])
    await sinks[0].wait_for(10, timeout=20)
    assert len(sinks[0].messages) == 10 and not sinks[1].messages
    body = await wait_status(node, key, ids[0], "sent")
    delivery = body["deliveries"][0]
    assert delivery["history"][0]["connector"] == "relay1" and delivery["history"][0]["reply"].startswith("250")
    received = sinks[0].messages[0]
    assert received.mail_from == "app@acme.test"
    assert b"Subject: hello" in received.data
    events = (await node.call("GET", "/v1/events?types=delivery.sent&limit=500", key)).json()["items"]
    assert len(events) == 10 and events[0]["data"]["connector"] == "relay1" and events[0]["data"]["tags"] == ["t1"]
    metrics = (await node.call("GET", "/metrics")).text
    assert 'mailgate_deliveries_total{connector="relay1",status="sent"}' in metrics
    assert "mailgate_delivery_latency_seconds_count" in metrics
    assert 'mailgate_queue_deliveries{status="queued"}' in metrics


async def test_idempotency_key_sends_once(node: Api, sinks: list[SmtpSink]) -> None:
    key = await setup_tenant(node, sinks)
    headers = {"Idempotency-Key": "abc-1"}
    first, second = await asyncio.gather(
        node.call("POST", "/v1/messages", key, json=msg("once@example.net"), headers=headers),
        node.call("POST", "/v1/messages", key, json=msg("once@example.net"), headers=headers),
    )
    assert first.status_code == second.status_code == 202
    assert first.json() == second.json()
    other = await node.call("POST", "/v1/messages", key, json=msg("twice@example.net"), headers=headers)
    assert other.status_code == 409
    await sinks[0].wait_for(1, timeout=10)
    await asyncio.sleep(1)
    assert len(sinks[0].messages) == 1


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("headers", {"X-Test": "a\r\nBcc: evil@example.org"}),
        ("headers", {"From": "spoof@example.org"}),
        ("to", ["not an address"]),
        ("attachments", [{"filename": "a.txt", "content": "!!!not base64"}]),
        ("template", "missing"),
    ],
)
async def test_bad_input_is_a_precise_422(node: Api, sinks: list[SmtpSink], field: str, value: Any) -> None:
    key = await setup_tenant(node, sinks)
    r = await node.call("POST", "/v1/messages", key, json=msg("x@example.net", **{field: value}))
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert field in r.text


async def test_suppressed_recipients_get_no_delivery(node: Api, sinks: list[SmtpSink]) -> None:
    key = await setup_tenant(node, sinks)
    assert (await node.call("POST", "/v1/suppressions", key, json={"address": "Gone@Example.NET"})).status_code == 201
    r = await node.call("POST", "/v1/messages", key, json=msg("gone@example.net", cc=["kept@example.net"]))
    statuses = {d["recipient"]: d["status"] for d in r.json()["deliveries"]}
    assert statuses["gone@example.net"] == "suppressed" and statuses["kept@example.net"] == "queued"
    await sinks[0].wait_for(1, timeout=10)
    await asyncio.sleep(0.5)
    assert [m.rcpt_tos for m in sinks[0].messages] == [["kept@example.net"]]


async def test_tempfail_is_retried_and_permfail_bounces(node: Api, sinks: list[SmtpSink]) -> None:
    key = await setup_tenant(node, sinks)
    sinks[0].mode = "tempfail_rcpt"
    sinks[1].mode = "tempfail_rcpt"
    r = await node.call("POST", "/v1/messages", key, json=msg("later@example.net"))
    mid = r.json()["id"]
    await wait_status(node, key, mid, "deferred")
    sinks[0].mode = "accept"
    sinks[1].mode = "accept"
    body = await wait_status(node, key, mid, "sent")
    assert body["deliveries"][0]["attempts"] >= 2
    assert any(h["reply"].startswith("451") for h in body["deliveries"][0]["history"])
    sinks[0].mode = "permfail_rcpt"
    r = await node.call("POST", "/v1/messages", key, json=msg("nobody@example.net"))
    body = await wait_status(node, key, r.json()["id"], "bounced")
    assert body["deliveries"][0]["last_reply"].startswith("550")


async def test_failover_when_the_primary_dies_and_recovery(node: Api, sinks: list[SmtpSink]) -> None:
    key = await setup_tenant(node, sinks)
    port = sinks[0].port
    await sinks[0].stop()
    ids = [
        (await node.call("POST", "/v1/messages", key, json=msg(f"fo{i}@example.net"))).json()["id"] for i in range(6)
    ]
    await sinks[1].wait_for(6, timeout=20)
    for mid in ids:
        body = await wait_status(node, key, mid, "sent")
        assert body["deliveries"][0]["last_connector"] == "relay2"
    down = (await node.call("GET", "/v1/events?types=connector.down", node.admin_key)).json()["items"]
    assert down and down[0]["data"]["connector"] == "relay1"
    revived = SmtpSink(port=port)
    await revived.start()
    try:
        deadline = time.monotonic() + 20
        while not revived.messages and time.monotonic() < deadline:
            await node.call("POST", "/v1/messages", key, json=msg("again@example.net"))
            await asyncio.sleep(0.5)
        assert revived.messages, "the primary is used again after its cooldown"
        up = (await node.call("GET", "/v1/events?types=connector.up", node.admin_key)).json()["items"]
        assert up and up[0]["data"]["connector"] == "relay1"
    finally:
        await revived.stop()


async def test_dkim_signature_verifies_with_dkimpy(node: Api, sinks: list[SmtpSink]) -> None:
    key = await setup_tenant(node, sinks)
    record = await node.gw.setup.generate_dkim(SYSTEM, domain="acme.test", selector="s1")
    attachment = base64.b64encode(b"\x00\x01binary").decode()
    await node.call(
        "POST",
        "/v1/messages",
        key,
        json=msg("signed@example.net", html="<p>hi</p>", attachments=[{"filename": "a.bin", "content": attachment}]),
    )
    await sinks[0].wait_for(1, timeout=10)
    data = sinks[0].messages[0].data
    assert data.startswith(b"DKIM-Signature:")

    def dns(name: bytes, timeout: int = 5) -> bytes | None:
        return record.encode() if name.rstrip(b".") == b"s1._domainkey.acme.test" else None

    assert dkim.verify(data, dnsfunc=dns)


async def test_cancel_a_scheduled_message(node: Api, sinks: list[SmtpSink]) -> None:
    key = await setup_tenant(node, sinks)
    r = await node.call("POST", "/v1/messages", key, json=msg("later@example.net", send_at="2099-01-01T00:00:00Z"))
    mid = r.json()["id"]
    cancelled = await node.call("DELETE", f"/v1/messages/{mid}", key)
    assert cancelled.json()["deliveries"][0]["status"] == "cancelled"
    queue = (await node.call("GET", "/v1/queue", key)).json()["counts"]
    assert queue.get("cancelled") == 1


async def test_other_tenants_messages_are_404(node: Api, sinks: list[SmtpSink]) -> None:
    key = await setup_tenant(node, sinks)
    mid = (await node.call("POST", "/v1/messages", key, json=msg("x@example.net"))).json()["id"]
    other = (await node.call("POST", "/v1/tenants", node.admin_key, json={"name": "other"})).json()["id"]
    other_key = (
        await node.call("POST", "/v1/apikeys", node.admin_key, json={"tenant": other, "scopes": ["read", "send"]})
    ).json()["key"]
    assert (await node.call("GET", f"/v1/messages/{mid}", other_key)).status_code == 404
    assert (await node.call("DELETE", f"/v1/messages/{mid}", other_key)).status_code == 404


async def test_hold_release_and_retry_now(node: Api, sinks: list[SmtpSink]) -> None:
    key = await setup_tenant(node, sinks)
    for sink in sinks:
        sink.mode = "tempfail_rcpt"
    message_id = (await node.call("POST", "/v1/messages", key, json=msg("slow@example.net"))).json()["id"]
    await wait_status(node, key, message_id, "deferred")
    sender_only = await _key(node, ["read", "send"])
    assert (await node.call("POST", f"/v1/messages/{message_id}/hold", sender_only)).status_code == 403
    manager = key
    held = await node.call("POST", f"/v1/messages/{message_id}/hold", manager)
    assert held.status_code == 200 and held.json()["deliveries"][0]["status"] == "held"
    tried = (await node.call("GET", f"/v1/messages/{message_id}", key)).json()["deliveries"][0]["attempts"]
    await asyncio.sleep(1.5)  # several retry periods: a held delivery is not attempted
    after = (await node.call("GET", f"/v1/messages/{message_id}", key)).json()["deliveries"][0]
    assert after["status"] == "held" and after["attempts"] == tried
    queue = (await node.call("GET", "/v1/queue?status=held", key)).json()
    assert queue["counts"]["held"] == 1 and [d["message_id"] for d in queue["items"]] == [message_id]
    for sink in sinks:
        sink.mode = "accept"
    released = await node.call("POST", f"/v1/messages/{message_id}/release", manager)
    assert released.json()["deliveries"][0]["status"] in ("queued", "sent")
    await wait_status(node, key, message_id, "sent")

    sinks[0].mode = sinks[1].mode = "tempfail_rcpt"
    later = (await node.call("POST", "/v1/messages", key, json=msg("later@example.net"))).json()["id"]
    await wait_status(node, key, later, "deferred")
    await node.gw.outbound.hold(SYSTEM, later)  # park it, then make its next attempt an hour away
    sinks[0].mode = sinks[1].mode = "accept"
    async with node.gw.db.write() as conn:
        await conn.execute(
            deliveries.update()
            .where(deliveries.c.message_id == later)
            .values(status="deferred", next_attempt_at=datetime.now(UTC) + timedelta(hours=1))
        )
    retried = await node.call("POST", "/v1/queue/retry?domain=example.net", manager)
    assert retried.status_code == 200 and retried.json()["retried"] == 1
    await wait_status(node, key, later, "sent", timeout=10)


async def _key(node: Api, scopes: list[str]) -> str:
    tenant = (await node.call("GET", "/v1/tenants", node.admin_key)).json()["items"][0]["id"]
    r = await node.call("POST", "/v1/apikeys", node.admin_key, json={"tenant": tenant, "scopes": scopes})
    return str(r.json()["key"])


async def test_suppression_csv_import_and_export(node: Api, sinks: list[SmtpSink]) -> None:
    key = await setup_tenant(node, sinks)
    await node.call("POST", "/v1/suppressions", key, json={"address": "old@example.net"})
    csv_text = (
        "address,reason,detail\nA@Example.net,bounce,550 gone\nold@example.net\nnot an address\n\nb@example.net,,\n"
    )
    r = await node.call(
        "POST", "/v1/suppressions/import", key, content=csv_text.encode(), headers={"Content-Type": "text/csv"}
    )
    assert r.status_code == 200, r.text
    result = r.json()
    assert (result["added"], result["already"]) == (2, 1)
    assert [p["line"] for p in result["problems"]] == [4]
    exported = await node.call("GET", "/v1/suppressions/export", key)
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
    lines = exported.text.strip().splitlines()
    assert lines[0] == "address,reason,created_at,detail"
    rows = {line.split(",")[0]: line.split(",")[1] for line in lines[1:]}
    assert rows == {"a@example.net": "bounce", "b@example.net": "import", "old@example.net": "manual"}
    sent = await node.call("POST", "/v1/messages", key, json=msg("a@EXAMPLE.net"))
    assert sent.json()["deliveries"][0]["status"] == "suppressed"
    wrong = await node.call(
        "POST", "/v1/suppressions/import", key, content=b"x", headers={"Content-Type": "application/json"}
    )
    assert wrong.status_code == 415


async def test_connector_rate_limit_spaces_deliveries(node: Api, sinks: list[SmtpSink]) -> None:
    key = await setup_tenant(node, sinks)
    relay = {"name": "relay1", "type": "smtp_relay", "host": "127.0.0.1", "port": sinks[0].port, "tls": "none"}
    r = await node.call("POST", "/v1/connectors", node.admin_key, json={**relay, "rate_limit": 5})
    assert r.status_code == 200 and r.json()["config"]["rate_limit"] == 5
    recipients = [{"to": f"slow{i}@example.net"} for i in range(12)]
    start = time.monotonic()
    body = {"from": "app@acme.test", "subject": "s", "text": "x", "recipients": recipients}
    assert (await node.call("POST", "/v1/messages/batch", key, json=body)).status_code == 202
    await sinks[0].wait_for(12, timeout=30)
    assert time.monotonic() - start >= 1.3  # 5 tokens at once, then 5 per second


async def test_a_sent_message_is_the_same_resource_as_a_received_one(node: Api, sinks: list[SmtpSink]) -> None:
    """GET shows a sent message's parsed fields beside its deliveries; a send-only key (no manage, which
    deleting received mail needs) still cancels its own message with DELETE."""
    await setup_tenant(node, sinks)
    tenant = (await node.call("GET", "/v1/tenants", node.admin_key)).json()["items"][0]["id"]
    sender = (
        await node.call("POST", "/v1/apikeys", node.admin_key, json={"tenant": tenant, "scopes": ["send", "read"]})
    ).json()["key"]
    body = msg("later@example.net", send_at="2099-01-01T00:00:00Z", cc=["copy@example.net"])
    mid = (await node.call("POST", "/v1/messages", sender, json=body)).json()["id"]
    got = (await node.call("GET", f"/v1/messages/{mid}", sender)).json()
    assert got["direction"] == "outbound" and got["subject"] == "hello" and got["text"].strip() == "body"
    assert got["from"] == {"name": "App", "address": "app@acme.test"}
    assert got["cc"] == [{"name": "", "address": "copy@example.net"}] and got["attachments"] == []
    assert {d["recipient"] for d in got["deliveries"]} == {"later@example.net", "copy@example.net"}
    raw = await node.call("GET", f"/v1/messages/{mid}/raw", sender)
    assert raw.status_code == 200 and b"Subject: hello" in raw.content
    cancelled = await node.call("DELETE", f"/v1/messages/{mid}", sender)
    assert cancelled.status_code == 200, cancelled.text
    assert {d["status"] for d in cancelled.json()["deliveries"]} == {"cancelled"}
