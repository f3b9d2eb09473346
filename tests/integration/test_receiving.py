"""Receiving end to end, on both databases: real SMTP into the MX role, then the REST API reads,
searches, flags, moves and deletes what was stored; spam is tagged, filed in Junk or refused; nothing
of a message is on disk in plaintext."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import re
import smtplib
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import _pg_admin
from tests.integration.conftest import Node, running_node

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


@pytest.fixture
async def node(tmp_path: Path, db_url: str) -> AsyncIterator[Node]:
    async with running_node(tmp_path / "data", db_url) as started:
        yield started


async def _mailbox(node: Node, address: str = "alice@acme.test") -> tuple[str, str]:
    """A tenant with the acme.test domain and one mailbox; returns (mailbox id, read+manage key)."""
    adm = node.admin_key
    tenant = (await node.call("POST", "/v1/tenants", adm, json={"name": "acme"})).json()["id"]
    key = (await node.call("POST", "/v1/apikeys", adm, json={"tenant": tenant, "scopes": ["read", "manage"]})).json()
    r = await node.call("POST", "/v1/domains", key["key"], json={"name": "acme.test"})
    assert r.status_code == 201, r.text
    r = await node.call("POST", "/v1/mailboxes", key["key"], json={"address": address})
    assert r.status_code == 201, r.text
    return r.json()["id"], key["key"]


def _send(node: Node, message: EmailMessage | bytes, *, to: list[str], sender: str = "jm@example.org") -> Any:
    def run() -> Any:
        with smtplib.SMTP("127.0.0.1", node.mx_port, timeout=30) as client:
            if isinstance(message, bytes):
                return client.sendmail(sender, to, message)
            return client.send_message(message, from_addr=sender, to_addrs=to)

    return asyncio.to_thread(run)


async def _listed(node: Node, mailbox: str, key: str, query: str = "") -> list[dict[str, Any]]:
    r = await node.call("GET", f"/v1/mailboxes/{mailbox}/messages{query}", key)
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def _report(marker: str, body_word: str, attachment: bytes) -> EmailMessage:
    m = EmailMessage()
    m["From"] = "Jürgen Müller <jm@example.org>"
    m["To"] = "alice+sales@acme.test"
    m["Cc"] = "Bob <bob@example.net>"
    m["Subject"] = f"Grüße aus Köln {marker}"
    m["Message-ID"] = f"<{marker}@example.org>"
    m.set_content(f"Hallo Alice,\nthe report is attached. {marker} {body_word}\n")
    m.add_attachment(attachment, maintype="application", subtype="pdf", filename="Bericht Q3 – final.pdf")
    return m


async def test_received_message_is_parsed_searchable_and_sealed(node: Node, tmp_path: Path) -> None:
    mailbox, key = await _mailbox(node)
    marker, word = f"ZEBRA{uuid.uuid4().hex[:10]}", f"QUOKKA{uuid.uuid4().hex[:10]}"
    attachment = os.urandom(40_000)
    refused = await _send(node, _report(marker, word, attachment), to=["alice+sales@acme.test"])
    assert refused == {}
    items = await _listed(node, mailbox, key)
    assert len(items) == 1 and items[0]["folder"] == "INBOX" and items[0]["uid"] == 1
    mid = items[0]["id"]
    msg = (await node.call("GET", f"/v1/messages/{mid}", key)).json()
    assert msg["direction"] == "inbound"
    assert msg["subject"] == f"Grüße aus Köln {marker}"
    assert msg["from"] == {"name": "Jürgen Müller", "address": "jm@example.org"}
    assert {"name": "", "address": "alice+sales@acme.test"} in msg["to"]
    assert msg["cc"] == [{"name": "Bob", "address": "bob@example.net"}]
    assert f"the report is attached. {marker} {word}" in msg["text"]
    assert msg["auth"]["spf"]["result"] in {"none", "temperror"}  # example.org publishes nothing here
    assert msg["spam"]["score"] < 5 and msg["thread_id"].startswith("thr_")
    (att,) = msg["attachments"]
    assert att["filename"] == "Bericht Q3 – final.pdf" and att["size"] == len(attachment)
    assert att["sha256"] == hashlib.sha256(attachment).hexdigest() and att["content_type"] == "application/pdf"
    r = await node.call("GET", f"/v1/messages/{mid}/attachments/{att['id']}", key)
    assert r.status_code == 200 and r.content == attachment
    assert "filename*=UTF-8''Bericht" in r.headers["content-disposition"]
    assert (await node.call("GET", f"/v1/messages/{mid}/attachments/att_7", key)).status_code == 404
    raw = (await node.call("GET", f"/v1/messages/{mid}/raw", key)).content
    assert raw.startswith(b"Return-Path: <jm@example.org>\r\nReceived: from ") and marker.encode() in raw
    assert b"Authentication-Results: " in raw.split(b"\r\n\r\n", 1)[0]

    for query, found in ((word, True), (marker.lower(), True), ("köln", True), ("jm@example.org", True)):
        assert [m["id"] for m in await _listed(node, mailbox, key, f"?query={query}")] == ([mid] if found else [])
    assert await _listed(node, mailbox, key, f"?query={word}+absentword") == []
    assert await _listed(node, mailbox, key, "?query=NOTHERE12345") == []
    assert [m["id"] for m in await _listed(node, mailbox, key, "?from=jm@example.org")] == [mid]
    assert await _listed(node, mailbox, key, "?from=bob@example.net") == []
    assert [m["id"] for m in await _listed(node, mailbox, key, "?has_attachment=true&unread=true")] == [mid]
    assert await _listed(node, mailbox, key, "?folder=Junk") == []

    await asyncio.sleep(0)  # the data dir: no subject, body word or attachment bytes anywhere
    await node.gw.db.dispose()
    leaks = [
        p
        for p in Path(node.gw.settings.data_dir).rglob("*")
        if p.is_file() and any(x in p.read_bytes() for x in (marker.encode(), word.encode(), attachment[:64]))
    ]
    assert not leaks


async def test_flags_move_thread_and_delete(node: Node) -> None:
    mailbox, key = await _mailbox(node)
    first = EmailMessage()
    first["From"], first["To"], first["Subject"] = "c@example.org", "alice@acme.test", "Quarterly numbers"
    first["Message-ID"] = "<root-1@example.org>"
    first.set_content("numbers inside")
    await _send(node, first, to=["alice@acme.test"], sender="c@example.org")
    reply = EmailMessage()
    reply["From"], reply["To"], reply["Subject"] = "c@example.org", "alice@acme.test", "Re: Quarterly numbers"
    reply["In-Reply-To"] = "<root-1@example.org>"
    reply.set_content("one more thing")
    await _send(node, reply, to=["alice@acme.test"], sender="c@example.org")
    by_subject = EmailMessage()  # no references: threaded by its reply prefix and subject
    by_subject["From"], by_subject["To"], by_subject["Subject"] = (
        "d@example.org",
        "alice@acme.test",
        "RE: quarterly  NUMBERS",
    )
    by_subject.set_content("me too")
    await _send(node, by_subject, to=["alice@acme.test"], sender="d@example.org")
    other = EmailMessage()
    other["From"], other["To"], other["Subject"] = "d@example.org", "alice@acme.test", "Quarterly numbers"
    other.set_content("a new conversation with the same subject and no prefix")
    await _send(node, other, to=["alice@acme.test"], sender="d@example.org")

    items = await _listed(node, mailbox, key)
    assert [m["uid"] for m in items] == [4, 3, 2, 1]  # newest first
    threads = [m["thread_id"] for m in items]
    assert threads[1] == threads[2] == threads[3] and threads[0] != threads[1]
    thread = (await node.call("GET", f"/v1/threads/{threads[1]}", key)).json()
    assert next(m["subject"] for m in thread["items"]) == "Quarterly numbers" and len(thread["items"]) == 3

    page1 = (await node.call("GET", f"/v1/mailboxes/{mailbox}/messages?limit=3", key)).json()
    assert len(page1["items"]) == 3 and page1["next_cursor"]
    page2 = (
        await node.call("GET", f"/v1/mailboxes/{mailbox}/messages?limit=3&cursor={page1['next_cursor']}", key)
    ).json()
    assert [m["uid"] for m in page2["items"]] == [1] and page2["next_cursor"] is None

    mid = items[0]["id"]
    r = await node.call("PATCH", f"/v1/messages/{mid}", key, json={"seen": True, "add_keywords": ["$Label1"]})
    assert r.status_code == 200 and r.json()["flags"]["seen"] and r.json()["flags"]["keywords"] == ["$Label1"]
    assert mid not in [m["id"] for m in await _listed(node, mailbox, key, "?unread=true")]
    bad = await node.call("PATCH", f"/v1/messages/{mid}", key, json={"add_keywords": ["bad word"]})
    assert bad.status_code == 422
    await node.call("POST", f"/v1/mailboxes/{mailbox}/folders", key, json={"name": "Archive"})
    r = await node.call("PATCH", f"/v1/messages/{mid}", key, json={"folder": "Archive"})
    assert r.json()["folder"] == "Archive" and r.json()["uid"] == 1
    assert [m["id"] for m in await _listed(node, mailbox, key, "?folder=Archive")] == [mid]
    assert (await node.call("PATCH", f"/v1/messages/{mid}", key, json={"folder": "Nope"})).status_code == 404
    assert (await node.call("DELETE", f"/v1/messages/{mid}", key)).json() == {"id": mid, "deleted": True}
    assert (await node.call("GET", f"/v1/messages/{mid}", key)).status_code == 404
    assert len(await _listed(node, mailbox, key)) == 3

    # another tenant sees none of it
    adm = node.admin_key
    t2 = (await node.call("POST", "/v1/tenants", adm, json={"name": "other"})).json()["id"]
    k2 = (await node.call("POST", "/v1/apikeys", adm, json={"tenant": t2, "scopes": ["read", "manage"]})).json()["key"]
    assert (await node.call("GET", f"/v1/messages/{items[1]['id']}", k2)).status_code == 404
    assert (await node.call("GET", f"/v1/mailboxes/{mailbox}/messages", k2)).status_code == 404


async def test_recipients_spam_actions_and_events(node: Node) -> None:
    mailbox, key = await _mailbox(node)
    spam = f"From: x@example.org\r\nTo: alice@acme.test\r\nSubject: hi\r\n\r\n{GTUBE}\r\n".encode()

    def session() -> None:  # in a thread: the node serves on this test's event loop
        with smtplib.SMTP("127.0.0.1", node.mx_port, timeout=30) as client:
            client.ehlo("client.example.org")
            assert client.mail("x@example.org")[0] == 250
            assert client.rcpt("nobody@acme.test")[0] == 550
            code, text = client.rcpt("someone@not-ours.test")
            assert code == 550 and b"relay" in text.lower()
            assert client.rcpt("alice@acme.test")[0] == 250
            client.rset()
            with pytest.raises(smtplib.SMTPDataError) as refused:
                client.sendmail("x@example.org", ["alice@acme.test"], spam)
            assert refused.value.smtp_code == 550 and b"5.7.1" in refused.value.smtp_error
            assert b"spam" in refused.value.smtp_error.lower()

    await asyncio.to_thread(session)
    assert await _listed(node, mailbox, key) == []

    # the domain's thresholds decide: with reject above GTUBE's score it is filed in Junk instead
    r = await node.call("PATCH", "/v1/domains/acme.test", key, json={"spam_junk": 8, "spam_reject": 100000})
    assert r.status_code == 200, r.text
    node.gw.inbound.forget_directory()
    await _send(node, spam, to=["alice@acme.test"], sender="x@example.org")
    (junk,) = await _listed(node, mailbox, key, "?folder=Junk")
    assert junk["spam"]["action"] == "junk" and junk["spam"]["score"] >= 100
    raw = (await node.call("GET", f"/v1/messages/{junk['id']}/raw", key)).content
    assert b"X-Spam-Flag: YES" in raw.split(b"\r\n\r\n", 1)[0]

    events = (await node.call("GET", "/v1/events?types=message.received,message.rejected", key)).json()["items"]
    kinds = [e["type"] for e in events]
    assert kinds == ["message.rejected", "message.received"]
    received = events[1]["data"]
    assert received["mailbox_id"] == mailbox and received["folder"] == "Junk" and received["uid"] == 1
    assert "subject" not in received  # events are stored in clear: they carry no content


async def test_many_concurrent_sessions_store_every_message_once(node: Node) -> None:
    mailbox, key = await _mailbox(node)
    total, sessions = 120, 8

    def session(offset: int) -> None:
        with smtplib.SMTP("127.0.0.1", node.mx_port, timeout=60) as client:
            for i in range(offset, total, sessions):
                body = f"From: s{i}@example.org\r\nTo: alice@acme.test\r\nSubject: n{i}\r\n\r\nnumber {i}\r\n"
                client.sendmail(f"s{i}@example.org", ["alice@acme.test"], body.encode())

    started = time.monotonic()
    await asyncio.gather(*(asyncio.to_thread(session, s) for s in range(sessions)))
    elapsed = time.monotonic() - started
    items: list[dict[str, Any]] = []
    cursor = ""
    while True:
        page = (await node.call("GET", f"/v1/mailboxes/{mailbox}/messages?limit=50{cursor}", key)).json()
        items += page["items"]
        if not page["next_cursor"]:
            break
        cursor = f"&cursor={page['next_cursor']}"
    assert sorted(m["subject"] for m in items) == sorted(f"n{i}" for i in range(total))
    assert sorted(m["uid"] for m in items) == list(range(1, total + 1))  # UIDs: dense, unique
    print(f"{total} messages over {sessions} sessions in {elapsed:.2f}s")


@contextlib.asynccontextmanager
async def _store_down(node: Node) -> AsyncIterator[None]:
    """The store refuses writes: on SQLite another process holds the write lock past the busy timeout,
    on PostgreSQL the database takes no connections and its open ones are cut."""
    url = node.gw.settings.database_url
    if url.startswith("sqlite"):
        holder = sqlite3.connect(url.split("///", 1)[1], isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        return
    name = url.rpartition("/")[2]
    await _pg_admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    await _pg_admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
    try:
        yield
    finally:
        await _pg_admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')


@pytest.fixture
async def impatient_node(tmp_path: Path, db_url: str) -> AsyncIterator[Node]:
    # short enough that a locked store answers within the test, long enough for its own writes under load
    async with running_node(tmp_path / "data", db_url, database={"busy_timeout_ms": 2000}) as started:
        yield started


async def test_a_message_that_cannot_be_stored_gets_451_and_is_kept_by_the_sender(impatient_node: Node) -> None:
    node = impatient_node
    mailbox, key = await _mailbox(node)
    await _listed(node, mailbox, key)  # the recipient is known (and cached) before the store goes away
    await _send(node, b"Subject: warm-up\r\n\r\nfirst\r\n", to=["alice@acme.test"])
    body = b"From: a@example.org\r\nSubject: kept\r\n\r\nretry me\r\n"
    async with _store_down(node):
        with pytest.raises(smtplib.SMTPDataError) as deferred:
            await _send(node, body, to=["alice@acme.test"])
    assert deferred.value.smtp_code == 451 and b"4.3.0" in deferred.value.smtp_error
    assert [m["subject"] for m in await _listed(node, mailbox, key)] == ["warm-up"]
    assert await _send(node, body, to=["alice@acme.test"]) == {}  # the sender's retry
    assert sorted(m["subject"] for m in await _listed(node, mailbox, key)) == ["kept", "warm-up"]


def _mutants(seed: int, count: int) -> list[bytes]:
    """Broken variants of a real multipart message: flipped and 8-bit bytes, cut boundaries, truncation,
    bare CRs, NULs, duplicated and garbled headers. Each line ends CRLF, as SMTP carries it."""
    base = _report("MUTANT", "word", os.urandom(3000)).as_bytes().replace(b"\n", b"\r\n")
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        data = bytearray(base)
        for _ in range(rng.randint(1, 12)):
            kind, at = rng.randrange(6), rng.randrange(len(data))
            if kind == 0:
                data[at] = rng.randrange(256)
            elif kind == 1:
                del data[at : at + rng.randint(1, 400)]
            elif kind == 2:
                data[at:at] = bytes(rng.randrange(128, 256) for _ in range(rng.randint(1, 20)))
            elif kind == 3:
                data[at:at] = rng.choice([b"\r", b"\x00", b"=?utf-8?b?///?=", b"--", b"\r\nContent-Type: multipart/x"])
            elif kind == 4:
                del data[at:]
            else:
                data[0:0] = rng.choice([b"Subject: ", b"From: <<@>>\r\n", b"Date: yesterday\r\n", b": \r\n"])
        out.append(re.sub(rb"\r\n|\n|\r", b"\r\n", bytes(data)))  # as smtplib would send it
    return out


async def test_malformed_mail_is_stored_whole_and_served_parsed(node: Node) -> None:
    mailbox, key = await _mailbox(node)
    messages = _mutants(seed=5, count=120)

    def session() -> list[str]:
        ids = []
        with smtplib.SMTP("127.0.0.1", node.mx_port, timeout=60) as client:
            client.ehlo("fuzz.example.org")
            for data in messages:
                client.mail("fuzz@example.org")
                client.rcpt("alice@acme.test")
                code, reply = client.data(data)
                assert code == 250, (code, reply)
                ids.append(reply.decode().rsplit(" ", 1)[-1])
        return ids

    ids = await asyncio.to_thread(session)
    for mid, data in zip(ids, messages, strict=True):
        parsed = await node.call("GET", f"/v1/messages/{mid}", key)
        assert parsed.status_code == 200, parsed.text
        assert isinstance(parsed.json()["defects"], list)
        raw = (await node.call("GET", f"/v1/messages/{mid}/raw", key)).content
        sent = data if data.endswith(b"\r\n") else data + b"\r\n"  # SMTP ends the content with a line break
        assert raw.endswith(sent), mid
    assert len(await _listed(node, mailbox, key, "?limit=500")) == len(messages)
