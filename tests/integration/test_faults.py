"""Faults under load: the primary relay dies mid-run (failover, breaker), and a node is killed with -9
while delivering (leases expire, another run finishes the work). Nothing accepted may be lost;
duplicates are allowed (at-least-once) but counted and reported."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from mailgate.testing.smtp_sink import SmtpSink
from tests.conftest import free_port
from tests.integration.conftest import Node, setup_tenant

EXE = str(Path(sys.executable).parent / "mailgate")


def _received(sinks: list[SmtpSink]) -> collections.Counter[str]:
    return collections.Counter(r for sink in sinks for m in sink.messages for r in m.rcpt_tos)


async def _wait_all(sinks: list[SmtpSink], expected: set[str], timeout: float) -> collections.Counter[str]:
    deadline = time.monotonic() + timeout
    while True:
        got = _received(sinks)
        if expected <= got.keys() or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.2)


async def test_primary_relay_dies_mid_run(node: Node, sinks: list[SmtpSink]) -> None:
    key = await setup_tenant(node, sinks)
    total = 2000
    expected = {f"r{i}@example.net" for i in range(total)}
    for start in range(0, total, 1000):
        batch = [{"to": f"r{i}@example.net"} for i in range(start, start + 1000)]
        body = {"from": "app@acme.test", "subject": "load", "text": "x", "recipients": batch}
        r = await node.call("POST", "/v1/messages/batch", key, json=body)
        assert r.status_code == 202, r.text
    primary, secondary = sinks
    deadline = time.monotonic() + 60
    while len(primary.messages) < total // 4 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert len(primary.messages) >= total // 4, "the primary relay received too little before the fault"
    await primary.stop()  # dies: open connections are cut, new ones refused
    got = await _wait_all(sinks, expected, timeout=180)
    missing = expected - got.keys()
    duplicates = sum(n - 1 for n in got.values() if n > 1)
    print(f"failover: primary {len(primary.messages)}, secondary {len(secondary.messages)}, duplicates {duplicates}")
    assert not missing, f"{len(missing)} messages lost, e.g. {sorted(missing)[:3]}"
    events = (await node.call("GET", "/v1/events?types=connector.down&limit=10", node.admin_key)).json()["items"]
    assert [e["data"]["connector"] for e in events] == ["relay1"]

    await primary.start()  # back on the same port: after the cooldown a probe closes the breaker
    deadline = time.monotonic() + 30
    up: list[dict[str, object]] = []
    while not up and time.monotonic() < deadline:
        r = await node.call(
            "POST",
            "/v1/messages",
            key,
            json={"from": "app@acme.test", "to": ["probe@example.net"], "subject": "p", "text": "x"},
        )
        assert r.status_code == 202
        await asyncio.sleep(0.5)
        up = (await node.call("GET", "/v1/events?types=connector.up&limit=10", node.admin_key)).json()["items"]
    assert [e["data"]["connector"] for e in up] == ["relay1"]


def _post(port: int, key: str, path: str, body: dict[str, object]) -> dict[str, object]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        result: dict[str, object] = json.loads(response.read())
        return result


def _serve(data_dir: Path, port: int) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILGATE_")}
    env.update(MAILGATE_QUEUE_LEASE="3", MAILGATE_QUEUE_POLL_INTERVAL="0.2", PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [
            EXE,
            "--data-dir",
            str(data_dir),
            "serve",
            "--http",
            f"127.0.0.1:{port}",
            "--submission",
            f"127.0.0.1:{free_port()}",
            "--mx",
            f"127.0.0.1:{free_port()}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )


async def _ready(proc: subprocess.Popen[str], port: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        await asyncio.sleep(0.2)
    raise AssertionError("node not ready")


async def test_kill_9_mid_delivery_loses_nothing(tmp_path: Path) -> None:
    sink = SmtpSink()
    await sink.start()
    data_dir, port = tmp_path / "data", free_port()
    proc = _serve(data_dir, port)
    try:
        await _ready(proc, port)
        admin = ""
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("admin API key:"):
                admin = line.split(":", 1)[1].strip()
                break
        tenant = await asyncio.to_thread(_post, port, admin, "/v1/tenants", {"name": "acme"})
        key = (
            await asyncio.to_thread(
                _post, port, admin, "/v1/apikeys", {"tenant": tenant["id"], "scopes": ["send", "read"]}
            )
        )["key"]
        await asyncio.to_thread(
            _post,
            port,
            admin,
            "/v1/connectors",
            {
                "name": "relay",
                "type": "smtp_relay",
                "host": "127.0.0.1",
                "port": sink.port,
                "tls": "none",
                "timeout": 5,
            },
        )
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/routes/default",
            data=json.dumps({"connectors": ["relay"]}).encode(),
            headers={"Authorization": f"Bearer {admin}", "Content-Type": "application/json"},
            method="PUT",
        )
        await asyncio.to_thread(urllib.request.urlopen, req, None, 10)
        sink.delay = 0.05  # slow enough that the kill lands mid-run
        total = 400
        batch = [{"to": f"k{i}@example.net"} for i in range(total)]
        body = {"from": "app@acme.test", "subject": "crash", "text": "x", "recipients": batch}
        await asyncio.to_thread(_post, port, str(key), "/v1/messages/batch", body)
        deadline = time.monotonic() + 60
        while len(sink.messages) < 20 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        before = len(sink.messages)
        assert before < total, "the run finished before the kill; nothing was tested"
        sink.delay = 0.0
        proc = _serve(data_dir, port)
        await _ready(proc, port)
        expected = {f"k{i}@example.net" for i in range(total)}
        got = await _wait_all([sink], expected, timeout=120)
        missing = expected - got.keys()
        duplicates = sum(n - 1 for n in got.values() if n > 1)
        print(f"kill -9: {before} delivered before the kill, {duplicates} duplicates after restart")
        assert not missing, f"{len(missing)} messages lost after kill -9, e.g. {sorted(missing)[:3]}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
        await sink.stop()
