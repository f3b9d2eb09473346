"""SMTP submission over real sockets: STARTTLS, AUTH, the same pipeline as REST, and every refusal."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiosmtplib
import pytest

from mailgate.connectors.smtp_client import Response, SmtpClient, auth_plain
from mailgate.domain.tenancy import SYSTEM as SYSTEM_PRINCIPAL
from mailgate.domain.tenancy import Principal, Scope
from mailgate.testing.smtp_sink import SmtpSink
from tests.conftest import _pg_admin, free_port, make_settings
from tests.integration.conftest import Node, setup_tenant, wait_status

MESSAGE = (
    b"From: App <app@acme.test>\r\n"
    b"To: user@example.net\r\n"
    b"Bcc: hidden@example.net\r\n"
    b"Subject: via submission\r\n"
    b"X-Mailgate-Tags: legacy, nightly\r\n"
    b"X-Mailgate-Idempotency-Key: job-42\r\n"
    b"\r\n"
    b"sent by an application that only speaks SMTP\r\n"
)


def _no_verify() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def _credentials(node: Node, key: str) -> tuple[str, str]:
    r = await node.call("POST", "/v1/smtp-credentials", key, json={})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["username"].startswith("smtp_") and len(body["password"]) >= 32
    return body["username"], body["password"]


async def _client(node: Node, *, tls: bool = True) -> aiosmtplib.SMTP:
    client = aiosmtplib.SMTP(
        hostname="127.0.0.1", port=node.submission_port, tls_context=_no_verify(), start_tls=False, timeout=10
    )
    await client.connect()
    await client.ehlo()
    if tls:
        await client.starttls()
        await client.ehlo()
    return client


async def test_submitted_message_is_delivered_with_instructions_applied(node: Node, sinks: list[SmtpSink]) -> None:
    key = await setup_tenant(node, sinks)
    user, password = await _credentials(node, key)
    client = await _client(node)
    try:
        assert "auth" in client.esmtp_extensions
        await client.login(user, password)
        errors, reply = await client.sendmail("app@acme.test", ["user@example.net", "hidden@example.net"], MESSAGE)
        assert not errors and reply.startswith("2.0.0 Ok: queued as msg_")
        message_id = reply.rsplit(" ", 1)[1]
        again = await client.sendmail("app@acme.test", ["user@example.net", "hidden@example.net"], MESSAGE)
        assert again[1].rsplit(" ", 1)[1] == message_id  # same idempotency key: the first answer
    finally:
        await client.quit()
    await sinks[0].wait_for(1, timeout=20)
    await asyncio.sleep(0.5)  # a second copy (the repeated submission) would arrive by now
    delivered = sinks[0].messages
    assert sorted(r for m in delivered for r in m.rcpt_tos) == ["hidden@example.net", "user@example.net"]
    data = delivered[0].data
    assert b"sent by an application that only speaks SMTP" in data
    assert b"Bcc:" not in data and b"X-Mailgate" not in data
    assert b"Message-ID: <" in data and b"Date: " in data
    body = await wait_status(node, key, message_id, "sent")
    assert body["tags"] == ["legacy", "nightly"]
    assert body["source"] == "smtp"


async def test_auth_is_offered_only_after_starttls(node: Node, sinks: list[SmtpSink]) -> None:
    key = await setup_tenant(node, sinks)
    await _credentials(node, key)
    client = await _client(node, tls=False)
    try:
        assert "starttls" in client.esmtp_extensions and "auth" not in client.esmtp_extensions
        reply = await client.execute_command(b"AUTH", b"PLAIN", b"AHVzZXIAcGFzcw==")
        assert reply.code == 538
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
            await client.sendmail("app@acme.test", ["user@example.net"], MESSAGE)
        assert refused.value.code == 530
    finally:
        client.close()


async def test_bad_passwords_are_refused_and_the_connection_closed_after_three(
    node: Node, sinks: list[SmtpSink]
) -> None:
    key = await setup_tenant(node, sinks)
    user, _ = await _credentials(node, key)
    client = await _client(node)
    try:
        for _ in range(2):
            with pytest.raises(aiosmtplib.SMTPAuthenticationError) as failed:
                await client.auth_plain(user, "wrong")
            assert failed.value.code == 535
        with pytest.raises((aiosmtplib.SMTPAuthenticationError, aiosmtplib.SMTPServerDisconnected)) as third:
            await client.auth_plain(user, "wrong")
        if isinstance(third.value, aiosmtplib.SMTPAuthenticationError):
            assert third.value.code == 421
        with pytest.raises(aiosmtplib.SMTPServerDisconnected):
            await client.noop()
    finally:
        client.close()


async def test_auth_login_works_and_a_revoked_credential_does_not(node: Node, sinks: list[SmtpSink]) -> None:
    key = await setup_tenant(node, sinks)
    user, password = await _credentials(node, key)
    client = await _client(node)
    try:
        await client.auth_login(user, password)
    finally:
        await client.quit()
    listed = (await node.call("GET", "/v1/smtp-credentials", key)).json()["items"]
    assert [c["username"] for c in listed] == [user] and "password" not in listed[0]
    r = await node.call("DELETE", f"/v1/smtp-credentials/{listed[0]['id']}", key)
    assert r.status_code == 200 and r.json()["active"] is False
    client = await _client(node)
    try:
        with pytest.raises(aiosmtplib.SMTPAuthenticationError) as failed:
            await client.auth_plain(user, password)
        assert failed.value.code == 535
    finally:
        client.close()


async def test_malformed_commands_and_messages_get_precise_replies(node: Node, sinks: list[SmtpSink]) -> None:
    key = await setup_tenant(node, sinks)
    user, password = await _credentials(node, key)
    client = await _client(node)
    try:
        await client.login(user, password)
        assert (await client.execute_command(b"MAIL", b"FROM:<not an address>")).code in (501, 553)
        assert (await client.mail("app@acme.test")).code == 250
        assert (await client.execute_command(b"RCPT", b"TO:<@@bad>")).code in (501, 553)
        assert (await client.execute_command(b"BOGUS")).code == 500
        await client.rset()
        assert (await client.execute_command(b"RCPT", b"TO:<a@example.net>")).code == 503  # no MAIL yet
        assert (await client.execute_command(b"DATA")).code == 503
        assert (await client.mail("app@acme.test")).code == 250
        limit = node.gw.settings.submission.max_recipients
        codes = [(await client.execute_command(b"RCPT", b"TO:<r%d@example.net>" % i)).code for i in range(limit + 1)]
        assert codes[:limit] == [250] * limit and codes[limit] == 452
        await client.rset()
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await client.sendmail("app@acme.test", ["user@example.net"], b"Subject: no sender\r\n\r\nbody\r\n")
        assert refused.value.code == 554 and "From" in refused.value.message
        with pytest.raises(aiosmtplib.SMTPDataError) as garbage:
            await client.sendmail("app@acme.test", ["user@example.net"], b"this is not a header\r\n\r\nx\r\n")
        assert garbage.value.code == 554
        big = MESSAGE + b"x" * (node.gw.settings.submission.max_message_size + 10)
        with pytest.raises((aiosmtplib.SMTPDataError, aiosmtplib.SMTPResponseException)) as oversize:
            await client.sendmail("app@acme.test", ["user@example.net"], big)
        assert oversize.value.code == 552
    finally:
        client.close()
    counts = (await node.call("GET", "/v1/queue", key)).json()["counts"]
    assert sum(counts.values()) == 0


async def test_credentials_belong_to_their_tenant(node: Node, sinks: list[SmtpSink]) -> None:
    key = await setup_tenant(node, sinks)
    other = (await node.call("POST", "/v1/tenants", node.admin_key, json={"name": "other"})).json()["id"]
    r = await node.call("POST", "/v1/smtp-credentials", key, json={"tenant": other})
    assert r.status_code == 404
    r = await node.call("POST", "/v1/smtp-credentials", node.admin_key, json={})
    assert r.status_code == 422 and r.json()["type"].endswith("invalid-input")
    r = await node.call("POST", "/v1/smtp-credentials", node.admin_key, json={"tenant": "other"})
    assert r.status_code == 201 and r.json()["tenant"] == other
    mine = (await node.call("GET", "/v1/smtp-credentials", key)).json()["items"]
    assert mine == []


async def test_raw_mime_over_rest(node: Node, sinks: list[SmtpSink]) -> None:
    key = await setup_tenant(node, sinks)
    headers = {"Content-Type": "message/rfc822"}
    r = await node.call("POST", "/v1/messages?to=direct@example.net&tag=raw", key, content=MESSAGE, headers=headers)
    assert r.status_code == 202, r.text
    assert [d["recipient"] for d in r.json()["deliveries"]] == ["direct@example.net"]
    r2 = await node.call("POST", "/v1/messages", key, content=MESSAGE.replace(b"job-42", b"job-43"), headers=headers)
    assert sorted(d["recipient"] for d in r2.json()["deliveries"]) == ["hidden@example.net", "user@example.net"]
    await sinks[0].wait_for(2, timeout=20)
    assert sorted(r for m in sinks[0].messages for r in m.rcpt_tos) == [
        "direct@example.net",
        "hidden@example.net",
        "user@example.net",
    ]
    assert all(b"Bcc:" not in m.data for m in sinks[0].messages)
    bad = await node.call("POST", "/v1/messages", key, content=b"no header here", headers=headers)
    assert bad.status_code == 422 and bad.json()["type"].endswith("invalid-input")
    wrong = await node.call("POST", "/v1/messages", key, content=b"x", headers={"Content-Type": "text/plain"})
    assert wrong.status_code == 415 and wrong.headers["content-type"] == "application/problem+json"
    late = await node.call("POST", "/v1/messages?send_at=soon", key, content=MESSAGE, headers=headers)
    assert late.status_code == 422 and late.json()["type"].endswith("invalid-input"), late.text
    assert "send_at" in late.text
    scheduled = await node.call(
        "POST",
        "/v1/messages?send_at=2100-01-01T00:00:00Z&to=later@example.net",
        key,
        content=MESSAGE.replace(b"job-42", b"job-44"),
        headers=headers,
    )
    assert scheduled.status_code == 202, scheduled.text
    long_key = {**headers, "Idempotency-Key": "k" * 201}
    r = await node.call("POST", "/v1/messages", key, content=MESSAGE, headers=long_key)
    assert r.status_code == 422 and "idempotency-key" in r.text.lower(), r.text
    status = await node.call("GET", f"/v1/messages/{scheduled.json()['id']}", key)
    assert [d["status"] for d in status.json()["deliveries"]] == ["queued"]


async def test_oversize_request_body_is_413(node: Node) -> None:
    limit = node.gw.settings.http.max_body_size
    r = await node.call(
        "POST", "/v1/messages", node.admin_key, content=b"x" * (limit + 1), headers={"Content-Type": "message/rfc822"}
    )
    assert r.status_code == 413 and r.json()["type"].endswith("too-large")

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        for _ in range(limit // 65536 + 2):
            yield b"y" * 65536

    r = await node.call(
        "POST", "/v1/messages", node.admin_key, content=chunks(), headers={"Content-Type": "text/plain"}
    )
    assert r.status_code == 413


async def test_implicit_tls_listener(tmp_path: Path, db_url: str) -> None:
    from mailgate.app import Gateway, run_submission

    port = free_port()
    settings = make_settings(tmp_path / "data", db_url, submission={"listen": None, "tls_listen": f"127.0.0.1:{port}"})
    gw = await Gateway.open(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(run_submission(gw, stop))
    try:
        tenant = await gw.admin.create_tenant(SYSTEM_PRINCIPAL, "acme")
        credential, password = await gw.smtp_credentials.create(SYSTEM_PRINCIPAL, tenant.id)
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, use_tls=True, tls_context=_no_verify(), timeout=10)
        for _ in range(100):
            try:
                await client.connect()
                break
            except aiosmtplib.SMTPConnectError:
                await asyncio.sleep(0.05)
        await client.ehlo()
        assert "auth" in client.esmtp_extensions and "starttls" not in client.esmtp_extensions
        await client.login(credential.username, password)
        _, reply = await client.sendmail("app@acme.test", ["user@example.net"], MESSAGE)
        assert reply.startswith("2.0.0 Ok: queued as msg_")
        await client.quit()
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await gw.close()


@pytest.mark.postgres
async def test_database_loss_answers_451_and_nothing_is_acknowledged(tmp_path: Path, pg_database: str) -> None:
    from mailgate.app import Gateway, run_submission

    port = free_port()
    settings = make_settings(tmp_path / "data", pg_database, submission={"listen": f"127.0.0.1:{port}"})
    gw = await Gateway.open(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(run_submission(gw, stop))
    name = pg_database.rsplit("/", 1)[1]
    try:
        tenant = await gw.admin.create_tenant(SYSTEM_PRINCIPAL, "acme")
        credential, password = await gw.smtp_credentials.create(SYSTEM_PRINCIPAL, tenant.id)
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, tls_context=_no_verify(), timeout=20)
        for _ in range(100):
            try:
                await client.connect()
                break
            except aiosmtplib.SMTPConnectError:
                await asyncio.sleep(0.05)
        await client.login(credential.username, password)
        await _pg_admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await _pg_admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
        try:
            with pytest.raises(aiosmtplib.SMTPDataError) as deferred:
                await client.sendmail("app@acme.test", ["user@example.net"], MESSAGE)
            assert deferred.value.code == 451
        finally:
            await _pg_admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        for _ in range(50):
            try:
                _, reply = await client.sendmail("app@acme.test", ["user@example.net"], MESSAGE)
                break
            except aiosmtplib.SMTPDataError as exc:
                assert exc.code == 451
                await asyncio.sleep(0.2)
        assert reply.startswith("2.0.0 Ok: queued as msg_")
        await client.quit()
        reader = Principal(actor="t", tenant_id=tenant.id, scopes=frozenset({Scope.READ}))
        assert sum((await gw.outbound.queue_counts(reader)).values()) == 1
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await gw.close()


async def test_pipelined_commands_are_answered_in_order(node: Node, sinks: list[SmtpSink]) -> None:
    """RFC 2920: MAIL, the RCPTs and DATA in one write get one reply each, in order; a refused recipient
    is left out and the message goes to the others."""
    key = await setup_tenant(node, sinks)
    user, password = await _credentials(node, key)
    client, greeting = await SmtpClient.connect("127.0.0.1", node.submission_port, reply_timeout=10)
    try:
        assert greeting.code == 220
        await client.ehlo("client.test")
        assert (await client.starttls(_no_verify(), "127.0.0.1")).code == 220
        assert (await client.ehlo("client.test")).code == 250 and client.supports("PIPELINING")
        assert (await client.command(b"AUTH PLAIN " + auth_plain(user, password), "AUTH")).code == 235
        replies: list[Response] = []
        lines = [b"MAIL FROM:<app@acme.test>", b"RCPT TO:<user@example.net>", b"RCPT TO:<not an address>"]
        await client.pipeline([*lines, b"RCPT TO:<other@example.net>", b"DATA"], replies, "pipelined")
        assert [r.code for r in replies] == [250, 250, 553, 250, 354]
        queued = await client.send_content(MESSAGE.replace(b"X-Mailgate-Idempotency-Key: job-42\r\n", b""))
        assert queued.code == 250 and "queued as msg_" in queued.text
    finally:
        await client.quit(1.0)
    await sinks[0].wait_for(1, timeout=20)
    assert sorted(r for m in sinks[0].messages for r in m.rcpt_tos) == ["other@example.net", "user@example.net"]


async def test_commands_sent_along_with_starttls_are_not_run_after_it(node: Node, sinks: list[SmtpSink]) -> None:
    """Plaintext that follows STARTTLS in the same write (an attacker's injection, CVE-2011-0411) must
    not be taken as if it had come over TLS."""
    reader, writer = await asyncio.open_connection("127.0.0.1", node.submission_port)
    try:
        await reader.readuntil(b"\r\n")
        writer.write(b"EHLO client.test\r\n")
        while not (await reader.readuntil(b"\r\n")).startswith(b"250 "):
            pass
        writer.write(b"STARTTLS\r\nNOOP injected\r\n")
        assert (await reader.readuntil(b"\r\n")).startswith(b"220")
        await writer.start_tls(_no_verify(), server_hostname="127.0.0.1")
        writer.write(b"NOOP over tls\r\n")
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n"), 10)).startswith(b"250")
        writer.write(b"QUIT\r\n")
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n"), 10)).startswith(b"221")  # not a second 250
    finally:
        writer.close()
