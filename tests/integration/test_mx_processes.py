"""The MX served by several processes (``mx.processes``), on both databases: worker processes accept on
the node's socket, every message they take is stored (on SQLite through the node, its one writer), the
connection limits hold across processes, a mailbox created on the node is known to the workers at once,
a worker killed with -9 is replaced, and ``/metrics`` counts what every process did."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import re
import signal
import smtplib
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.integration.conftest import Node, running_node

PER_IP = 6


@pytest.fixture
async def node(tmp_path: Path, db_url: str) -> AsyncIterator[Node]:
    async with running_node(
        tmp_path / "data", db_url, mx={"processes": 2, "max_connections_per_ip": PER_IP}
    ) as started:
        yield started


def _worker_pids() -> list[int]:
    return [p.pid for p in multiprocessing.active_children() if p.name.startswith("mailgate-mx-") and p.pid]


def _owner(conn: socket.socket, pids: list[int]) -> int | None:
    """Which of ``pids`` holds the server side of ``conn`` (read from /proc: the inode of the socket
    whose local port is the MX port and whose remote port is ``conn``'s)."""
    local_port = conn.getsockname()[1]
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[2].rsplit(":", 1)[1], 16) == local_port and int(fields[1].rsplit(":", 1)[1], 16) != local_port:
            inode = fields[9]
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                        return pid
    return None


def _connect(port: int) -> tuple[socket.socket, bytes]:
    conn = socket.create_connection(("127.0.0.1", port), timeout=10)
    return conn, conn.recv(512)


@contextlib.asynccontextmanager
async def _held(port: int, count: int) -> AsyncIterator[list[tuple[socket.socket, bytes]]]:
    """``count`` sessions kept open, each with its greeting (blocking socket calls run on threads: the
    node under test runs on this loop)."""
    held = [await asyncio.to_thread(_connect, port) for _ in range(count)]
    try:
        yield held
    finally:
        for conn, _ in held:
            conn.close()


async def _on_worker(node: Node, timeout: float = 30.0) -> tuple[socket.socket, int]:
    """A connection that a worker process answered (a worker is listening once its gateway is open)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = _worker_pids()
        conn, greeting = await asyncio.to_thread(_connect, node.mx_port)
        assert greeting.startswith(b"220 "), greeting
        owner = _owner(conn, [os.getpid(), *pids])
        if owner in pids:
            assert owner is not None
            return conn, owner
        conn.close()
        await asyncio.sleep(0.05)
    raise AssertionError("no connection reached a worker process")


def _smtp(conn: socket.socket, *lines: str) -> list[str]:
    """Send each command line and read its one-line reply (the MX answers each in turn)."""
    replies = []
    reader = conn.makefile("rb")
    for line in lines:
        conn.sendall(line.encode() + b"\r\n")
        reply = reader.readline().decode()
        while reply[3:4] == "-":
            reply = reader.readline().decode()
        replies.append(reply.strip())
    return replies


async def _mailbox(node: Node, address: str) -> tuple[str, str]:
    adm = node.admin_key
    tenant = (await node.call("POST", "/v1/tenants", adm, json={"name": "acme"})).json()["id"]
    key = (await node.call("POST", "/v1/apikeys", adm, json={"tenant": tenant, "scopes": ["read", "manage"]})).json()
    assert (await node.call("POST", "/v1/domains", key["key"], json={"name": "acme.test"})).status_code == 201
    r = await node.call("POST", "/v1/mailboxes", key["key"], json={"address": address})
    assert r.status_code == 201, r.text
    return r.json()["id"], key["key"]


def _send_many(port: int, count: int, tag: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        for i in range(count):
            body = f"From: jm@example.org\r\nTo: alice@acme.test\r\nSubject: {tag} {i}\r\n\r\nhello {tag} {i}\r\n"
            assert client.sendmail("jm@example.org", ["alice@acme.test"], body) == {}


async def _accepted_in_metrics(node: Node) -> float:
    text = (await node.client.get("/metrics")).text
    found = re.search(r'^mailgate_mx_messages_total\{outcome="accepted",status="2\.0\.0"\} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


async def test_workers_take_mail_and_every_message_is_stored_and_counted(node: Node) -> None:
    mailbox, key = await _mailbox(node, "alice@acme.test")
    counted_before = await _accepted_in_metrics(node)  # counters are this test process's, across tests
    conn, worker = await _on_worker(node)
    with contextlib.closing(conn):  # a session on the worker stores through the node
        replies = await asyncio.to_thread(
            _smtp, conn, "EHLO client.test", "MAIL FROM:<jm@example.org>", "RCPT TO:<alice@acme.test>", "DATA"
        )
        assert [r[:3] for r in replies] == ["250", "250", "250", "354"], replies
        (stored,) = await asyncio.to_thread(_smtp, conn, "Subject: from a worker\r\n\r\nbody\r\n.")
        assert stored.startswith("250 2.0.0 stored as msg_"), stored
    assert worker in _worker_pids()

    sessions, each = PER_IP, 5
    await asyncio.gather(*(asyncio.to_thread(_send_many, node.mx_port, each, f"s{s}") for s in range(sessions)))
    total = 1 + sessions * each
    r = await node.call("GET", f"/v1/mailboxes/{mailbox}/messages?limit=100", key)
    items = r.json()["items"]
    assert len(items) == total
    assert sorted(m["uid"] for m in items) == list(range(1, total + 1))  # one UID each, none twice
    assert {m["subject"] for m in items} >= {
        "from a worker",
        *(f"s{s} {i}" for s in range(sessions) for i in range(each)),
    }

    deadline = time.monotonic() + 15  # workers report their counters every few seconds
    while await _accepted_in_metrics(node) < counted_before + total and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    assert await _accepted_in_metrics(node) == counted_before + total


async def test_connection_limit_holds_across_processes(node: Node) -> None:
    conn, worker = await _on_worker(node)
    async with _held(node.mx_port, PER_IP - 1) as held:
        owners = {_owner(c, [os.getpid(), worker]) for c, _ in held} | {worker}
        greetings = [g for _, g in held]
        assert all(g.startswith(b"220 ") for g in greetings), greetings
        over, refusal = await asyncio.to_thread(_connect, node.mx_port)
        over.close()
        assert refusal.startswith(b"421 4.7.0"), refusal  # wherever it landed, the node's limit is full
    conn.close()
    assert worker in owners


async def test_a_killed_worker_is_replaced_and_its_connections_are_released(node: Node) -> None:
    await _mailbox(node, "alice@acme.test")
    conn, worker = await _on_worker(node)
    async with _held(node.mx_port, PER_IP - 1) as held:
        on_worker = [c for c, _ in held if _owner(c, [worker]) == worker]
        os.kill(worker, signal.SIGKILL)
        for c in [conn, *on_worker]:  # the worker's sessions end with it
            c.settimeout(10)
            assert await asyncio.to_thread(c.recv, 512) == b""
        conn.close()
        await asyncio.sleep(0.5)  # the node hears of the exit
        # it took the dead worker's counts off: as many sessions as the limit allows again
        async with _held(node.mx_port, 1 + len(on_worker)) as again:
            assert all(g.startswith(b"220 ") for _, g in again), [g for _, g in again]
    await asyncio.to_thread(_send_many, node.mx_port, 3, "meanwhile")  # the node serves on its own
    replaced, new_worker = await _on_worker(node)
    replaced.close()
    assert new_worker != worker


async def test_a_mailbox_created_on_the_node_takes_mail_on_a_worker_at_once(node: Node) -> None:
    _, key = await _mailbox(node, "alice@acme.test")
    conn, _ = await _on_worker(node)
    with contextlib.closing(conn):
        replies = await asyncio.to_thread(
            _smtp, conn, "EHLO client.test", "MAIL FROM:<jm@example.org>", "RCPT TO:<bob@acme.test>"
        )
        assert replies[2].startswith("550 5.1.1"), replies  # unknown, and remembered for a while
        r = await node.call("POST", "/v1/mailboxes", key, json={"address": "bob@acme.test"})
        assert r.status_code == 201, r.text
        await asyncio.sleep(0.2)  # the node's word to its workers is a message on a local socket
        (accepted,) = await asyncio.to_thread(_smtp, conn, "RCPT TO:<bob@acme.test>")
        assert accepted.startswith("250"), accepted
