"""Asynchronous bounces and complaints end to end: VERP return paths on the wire, reports posted back,
deliveries marked, recipients suppressed, forgeries ignored."""

from __future__ import annotations

import asyncio
import smtplib
from pathlib import Path

from mailgate.testing.smtp_sink import SmtpSink
from tests.integration.conftest import msg, running_node, setup_tenant, wait_status

BOUNCE_DOMAIN = "bounce.acme.test"


def _dsn(to: str, recipient: str, status: str = "5.1.1", action: str = "failed") -> bytes:
    return f"""From: MAILER-DAEMON@mx.example.net (Mail Delivery System)
To: {to}
Subject: Undelivered Mail Returned to Sender
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="b1"

--b1
Content-Type: text/plain

I'm sorry to have to inform you that your message could not be delivered.

--b1
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.net

Final-Recipient: rfc822; {recipient}
Action: {action}
Status: {status}
Diagnostic-Code: smtp; 550 {status} <{recipient}>: Recipient address rejected: User unknown

--b1
Content-Type: text/rfc822-headers

From: app@acme.test
To: {recipient}
Subject: hello

--b1--
""".replace("\n", "\r\n").encode()


def _arf(to: str, recipient: str) -> bytes:
    return f"""From: staff@feedback.example.org
To: {to}
Subject: Abuse report
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="b2"

--b2
Content-Type: text/plain

This is an email abuse report.

--b2
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: SomeFBL/1.0
Version: 1
Original-Rcpt-To: {recipient}

--b2
Content-Type: text/rfc822-headers

From: app@acme.test
To: {recipient}

--b2--
""".replace("\n", "\r\n").encode()


async def test_verp_bounces_and_complaints(tmp_path: Path, db_url: str) -> None:
    sinks = [SmtpSink(), SmtpSink()]
    for sink in sinks:
        await sink.start()
    try:
        async with running_node(tmp_path / "data", db_url, bounces={"domain": BOUNCE_DOMAIN}) as node:
            key = await setup_tenant(node, sinks)
            r = await node.call("POST", "/v1/messages", key, json=msg("gone@example.net", cc=["fine@example.net"]))
            message_id = r.json()["id"]
            await wait_status(node, key, message_id, "sent")
            by_rcpt = {m.rcpt_tos[0]: m for m in sinks[0].messages}
            assert set(by_rcpt) == {"gone@example.net", "fine@example.net"}  # one transaction each
            return_path = by_rcpt["gone@example.net"].mail_from
            assert return_path.startswith("bounces+dlv_") and return_path.endswith("@" + BOUNCE_DOMAIN)
            assert by_rcpt["fine@example.net"].mail_from != return_path

            headers = {"Content-Type": "message/rfc822"}
            forged = return_path.replace(return_path.split("-")[-1].split("@")[0], "a" * 16)
            r = await node.call(
                "POST", "/v1/bounces", node.admin_key, content=_dsn(forged, "fine@example.net"), headers=headers
            )
            assert r.status_code == 200 and r.json()["matched"] is False

            r = await node.call(
                "POST", "/v1/bounces", node.admin_key, content=_dsn(return_path, "gone@example.net"), headers=headers
            )
            assert r.status_code == 200, r.text
            outcome = r.json()
            assert outcome["kind"] == "hard" and outcome["recipient"] == "gone@example.net" and outcome["suppressed"]
            body = (await node.call("GET", f"/v1/messages/{message_id}", key)).json()
            statuses = {d["recipient"]: d["status"] for d in body["deliveries"]}
            assert statuses == {"gone@example.net": "bounced", "fine@example.net": "sent"}
            again = await node.call("POST", "/v1/messages", key, json=msg("Gone@example.net"))
            assert again.json()["deliveries"][0]["status"] == "suppressed"

            fine_path = by_rcpt["fine@example.net"].mail_from
            r = await node.call(
                "POST", "/v1/bounces", node.admin_key, content=_arf(fine_path, "fine@example.net"), headers=headers
            )
            assert r.json()["kind"] == "complaint" and r.json()["suppressed"]
            listed = (await node.call("GET", "/v1/suppressions", key)).json()["items"]
            assert {(s["address"], s["reason"]) for s in listed} == {
                ("gone@example.net", "bounce"),
                ("fine@example.net", "complaint"),
            }
            events = (await node.call("GET", "/v1/events?types=delivery.complained&limit=10", key)).json()["items"]
            assert len(events) == 1 and events[0]["data"]["recipient"] == "fine@example.net"
            tenant_key = await node.call("POST", "/v1/bounces", key, content=_dsn(return_path, "x"), headers=headers)
            assert tenant_key.status_code == 403
    finally:
        for sink in sinks:
            await sink.stop()


async def test_reports_received_by_the_mx_reach_the_bounce_handler(tmp_path: Path, db_url: str) -> None:
    """The round trip: a message sent with a VERP return path, its DSN delivered over SMTP to our own MX
    (RCPT to the VERP address is accepted though no mailbox has it), the delivery marked bounced."""
    sinks = [SmtpSink(), SmtpSink()]
    for sink in sinks:
        await sink.start()
    try:
        async with running_node(tmp_path / "data", db_url, bounces={"domain": BOUNCE_DOMAIN}) as node:
            key = await setup_tenant(node, sinks)
            r = await node.call("POST", "/v1/messages", key, json=msg("gone@example.net"))
            message_id = r.json()["id"]
            await wait_status(node, key, message_id, "sent")
            return_path = sinks[0].messages[0].mail_from

            def deliver_report() -> dict[str, tuple[int, bytes]]:
                with smtplib.SMTP("127.0.0.1", node.mx_port, timeout=30) as client:
                    return client.sendmail("", [return_path], _dsn(return_path, "gone@example.net"))

            assert await asyncio.to_thread(deliver_report) == {}
            body = (await node.call("GET", f"/v1/messages/{message_id}", key)).json()
            assert [d["status"] for d in body["deliveries"]] == ["bounced"]
            suppressed = (await node.call("GET", "/v1/suppressions", key)).json()["items"]
            assert [(s["address"], s["reason"]) for s in suppressed] == [("gone@example.net", "bounce")]
    finally:
        for sink in sinks:
            await sink.stop()
