"""Fixtures for integration tests: a bare database, and for sending tests a node with api, worker,
submission and MX roles, relay sinks, a tenant."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx2
import pytest

from mailgate.store.database import Database
from mailgate.testing.dns_server import DnsServer
from mailgate.testing.smtp_sink import SmtpSink
from tests.conftest import Api, free_port, make_settings

if TYPE_CHECKING:
    from mailgate.app import Gateway

FAST_QUEUE = {
    "first_retry_delay": 0.3,
    "max_retry_delay": 1.0,
    "poll_interval": 0.1,
    "breaker_threshold": 2,
    "breaker_cooldown": 1.0,
    "lease": 30,
}


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    """A migrated database of its own, on each engine."""
    database = Database(db_url)
    await database.upgrade()
    try:
        yield database
    finally:
        await database.dispose()


class Node(Api):
    """A node running the api, worker, submission and MX roles on free loopback ports."""

    def __init__(
        self, gw: Gateway, base: str, admin_key: str, submission_port: int, mx_port: int, dns: DnsServer
    ) -> None:
        super().__init__(gw, base, admin_key)
        self.submission_port = submission_port
        self.mx_port = mx_port
        self.dns = dns


@asynccontextmanager
async def running_node(data_dir: Path, db_url: str, **overrides: Any) -> AsyncIterator[Node]:
    """API, worker, submission and MX roles of one node, with a quick retry schedule; ``overrides`` are
    settings sections (``bounces={...}``)."""
    from mailgate.app import Gateway, run_api, run_mx, run_submission, run_worker

    port, submission, mx = free_port(), free_port(), free_port()
    dns = DnsServer()  # the node's only resolver: no test reaches the system's
    await dns.start()
    settings = make_settings(
        data_dir,
        db_url,
        http={"listen": f"127.0.0.1:{port}"},
        queue=FAST_QUEUE,
        submission={"listen": f"127.0.0.1:{submission}"},
        # one process unless a test asks for workers (test_mx_processes): in-process roles, in-process state
        mx={"listen": f"127.0.0.1:{mx}", "processes": 1, **overrides.pop("mx", {})},
        dns={"servers": [f"127.0.0.1:{dns.port}"], "timeout": 2},
        **overrides,
    )
    gw = await Gateway.open(settings)
    token = await gw.admin.bootstrap_admin_key()
    assert token
    stop = asyncio.Event()
    tasks = [asyncio.create_task(role(gw, stop)) for role in (run_api, run_worker, run_submission, run_mx)]
    api = Node(gw, f"http://127.0.0.1:{port}", token, submission, mx, dns)
    try:
        for _ in range(200):
            try:
                if (await api.client.get("/healthz")).status_code == 200:
                    break
            except httpx2.TransportError:
                await asyncio.sleep(0.05)
        yield api
    finally:
        await api.client.aclose()
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
        await gw.close()
        await dns.stop()


@pytest.fixture
async def node(tmp_path: Path, db_url: str) -> AsyncIterator[Node]:
    async with running_node(tmp_path / "data", db_url) as started:
        yield started


@pytest.fixture
async def sinks() -> AsyncIterator[list[SmtpSink]]:
    started = [SmtpSink(), SmtpSink()]
    for sink in started:
        await sink.start()
    try:
        yield started
    finally:
        for sink in started:
            await sink.stop()


async def setup_tenant(api: Api, sinks: list[SmtpSink]) -> str:
    """A tenant with a send/read/manage key, two relays, and the default route through both."""
    tenant = (await api.call("POST", "/v1/tenants", api.admin_key, json={"name": "acme"})).json()["id"]
    for i, sink in enumerate(sinks, start=1):
        r = await api.call(
            "POST",
            "/v1/connectors",
            api.admin_key,
            json={
                "name": f"relay{i}",
                "type": "smtp_relay",
                "host": "127.0.0.1",
                "port": sink.port,
                "tls": "none",
                "timeout": 3,
            },
        )
        assert r.status_code == 201, r.text
    r = await api.call("PUT", "/v1/routes/default", api.admin_key, json={"connectors": ["relay1", "relay2"]})
    assert r.status_code in (200, 201), r.text
    scopes = ["send", "read", "manage"]
    r = await api.call("POST", "/v1/apikeys", api.admin_key, json={"tenant": tenant, "scopes": scopes})
    return str(r.json()["key"])


def msg(rcpt: str, **extra: Any) -> dict[str, Any]:
    return {"from": "App <app@acme.test>", "to": [rcpt], "subject": "hello", "text": "body", **extra}


async def wait_status(api: Api, key: str, message_id: str, want: str, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body: dict[str, Any] = (await api.call("GET", f"/v1/messages/{message_id}", key)).json()
        if all(d["status"] == want for d in body["deliveries"]):
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"not {want} in time: {body}")
        await asyncio.sleep(0.1)
