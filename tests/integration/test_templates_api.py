"""Templates and batch sends over the API, delivered to relay sinks."""

from __future__ import annotations

from mailgate.testing.smtp_sink import SmtpSink
from tests.integration.conftest import Node, setup_tenant

TEMPLATE = {
    "name": "welcome",
    "subject": "Welcome, {{ name }}",
    "text": "Hello {{ name }}, your code is {{ code }}.",
    "html": "<p>Hello {{ name }}</p>",
}


async def test_template_crud_and_preview(node: Node, sinks: list[SmtpSink]) -> None:
    key = await setup_tenant(node, sinks)
    r = await node.call("POST", "/v1/templates", key, json=TEMPLATE)
    assert r.status_code == 201, r.text
    tid = r.json()["id"]
    assert (await node.call("POST", "/v1/templates", key, json=TEMPLATE)).status_code == 409
    assert (await node.call("GET", "/v1/templates/welcome", key)).json()["id"] == tid
    preview = await node.call("POST", f"/v1/templates/{tid}/preview", key, json={"variables": {"name": "<Ada>"}})
    assert preview.status_code == 422 and "missing variable 'code'" in preview.json()["detail"]
    preview = await node.call(
        "POST", f"/v1/templates/{tid}/preview", key, json={"variables": {"name": "<Ada>", "code": 7}}
    )
    assert preview.json() == {
        "subject": "Welcome, <Ada>",
        "text": "Hello <Ada>, your code is 7.",
        "html": "<p>Hello &lt;Ada&gt;</p>",
    }
    bad = await node.call("PUT", f"/v1/templates/{tid}", key, json={"subject": "{% if %}", "text": "x"})
    assert bad.status_code == 422 and "line 1" in bad.json()["detail"]
    ok = await node.call("PUT", f"/v1/templates/{tid}", key, json={"subject": "Hi {{ name }}", "text": "t"})
    assert ok.status_code == 200 and ok.json()["subject"] == "Hi {{ name }}"
    listed = (await node.call("GET", "/v1/templates", key)).json()["items"]
    assert [t["name"] for t in listed] == ["welcome"]
    assert (await node.call("DELETE", f"/v1/templates/{tid}", key)).status_code == 204
    assert (await node.call("GET", f"/v1/templates/{tid}", key)).status_code == 404
    audit = (await node.call("GET", "/v1/audit?limit=500", node.admin_key)).json()["items"]
    assert {"template.create", "template.update", "template.delete"} <= {a["action"] for a in audit}


async def test_send_with_a_template(node: Node, sinks: list[SmtpSink]) -> None:
    key = await setup_tenant(node, sinks)
    await node.call("POST", "/v1/templates", key, json=TEMPLATE)
    base = {"from": "app@acme.test", "to": ["u@example.net"], "template": "welcome"}
    missing = await node.call("POST", "/v1/messages", key, json={**base, "variables": {"name": "Ada"}})
    assert missing.status_code == 422 and "code" in missing.json()["detail"]
    unknown = await node.call("POST", "/v1/messages", key, json={**base, "template": "nope"})
    assert unknown.status_code == 422 and "unknown template 'nope'" in unknown.json()["detail"]
    r = await node.call("POST", "/v1/messages", key, json={**base, "variables": {"name": "Ada", "code": 991}})
    assert r.status_code == 202, r.text
    await sinks[0].wait_for(1, timeout=20)
    data = sinks[0].messages[0].data
    assert b"Subject: Welcome, Ada" in data and b"your code is 991." in data and b"<p>Hello Ada</p>" in data


async def test_batch_personalises_each_message_and_is_idempotent(node: Node, sinks: list[SmtpSink]) -> None:
    key = await setup_tenant(node, sinks)
    await node.call("POST", "/v1/templates", key, json=TEMPLATE)
    recipients = [{"to": f"u{i}@example.net", "variables": {"name": f"N{i}", "code": i}} for i in range(25)]
    body = {"from": "app@acme.test", "template": "welcome", "recipients": recipients, "tags": ["batch"]}
    headers = {"Idempotency-Key": "batch-1"}
    r = await node.call("POST", "/v1/messages/batch", key, json=body, headers=headers)
    assert r.status_code == 202, r.text
    messages = r.json()["messages"]
    assert len(messages) == 25 and len({m["id"] for m in messages}) == 25
    again = await node.call("POST", "/v1/messages/batch", key, json=body, headers=headers)
    assert again.json() == r.json()
    await sinks[0].wait_for(25, timeout=30)
    by_rcpt = {m.rcpt_tos[0]: m.data for m in sinks[0].messages}
    assert len(sinks[0].messages) == 25
    assert b"your code is 7." in by_rcpt["u7@example.net"] and b"Welcome, N7" in by_rcpt["u7@example.net"]
    broken = [*recipients[:3], {"to": "x@example.net", "variables": {"name": "X"}}]
    bad = await node.call("POST", "/v1/messages/batch", key, json={**body, "recipients": broken})
    assert bad.status_code == 422 and "recipients[3]" in bad.json()["detail"]
    counts = (await node.call("GET", "/v1/queue", key)).json()["counts"]
    assert sum(counts.values()) == 25  # the refused batch stored nothing
