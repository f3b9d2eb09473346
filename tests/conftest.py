"""Fixtures shared by every test: both databases, a gateway on a temp data dir, a running API.

Storage tests take ``db_url`` and so run once on SQLite and once on PostgreSQL (a fresh database on the
local server per test). Under CI=true a skip is a failure: a test that needs PostgreSQL must run there.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import httpx2
import pytest
from hypothesis import HealthCheck, settings

from mailgate.config import Settings, load_settings

if TYPE_CHECKING:
    from mailgate.app import Gateway

settings.register_profile("fuzz", max_examples=5_000, deadline=None, suppress_health_check=list(HealthCheck))
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

PG_URL = os.environ.get("MAILGATE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which must run every test: {report.longrepr}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_dsn(database: str) -> str:
    base, _, _ = PG_URL.rpartition("/")
    return f"{base}/{database}"


async def _pg_admin(sql: str) -> None:
    conn = await asyncpg.connect(PG_URL, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
async def pg_database() -> AsyncIterator[str]:
    """A fresh, empty PostgreSQL database for one test; dropped afterwards."""
    name = f"mailgate_test_{os.getpid()}_{secrets.token_hex(4)}"
    try:
        await _pg_admin(f'CREATE DATABASE "{name}"')
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.skip(f"PostgreSQL at {PG_URL} unavailable: {exc}")
    try:
        yield _server_dsn(name).replace("postgresql://", "postgresql+asyncpg://", 1)
    finally:
        await _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'db' / 'mailgate.db'}"
    url: str = request.getfixturevalue("pg_database")
    return url


def make_settings(data_dir: Path, db_url: str | None = None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"data_dir": str(data_dir), **overrides}
    if db_url:
        values.setdefault("database", {})["url"] = db_url
    return load_settings(overrides=values, environ={})


@pytest.fixture
async def gateway(tmp_path: Path, db_url: str) -> AsyncIterator[Gateway]:
    from mailgate.app import Gateway

    gw = await Gateway.open(make_settings(tmp_path / "data", db_url))
    try:
        yield gw
    finally:
        await gw.close()


class Api:
    """A running API role on a real loopback socket, with an admin key."""

    def __init__(self, gw: Gateway, base: str, admin_key: str) -> None:
        self.gw = gw
        self.base = base
        self.admin_key = admin_key
        self.client = httpx2.AsyncClient(base_url=base, timeout=30)

    async def call(self, method: str, path: str, key: str | None = None, **kwargs: Any) -> httpx2.Response:
        headers = dict(kwargs.pop("headers", {}) or {})
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return await self.client.request(method, path, headers=headers, **kwargs)


@pytest.fixture
async def api(tmp_path: Path, db_url: str) -> AsyncIterator[Api]:
    from mailgate.app import Gateway, run_api

    port = free_port()
    settings = make_settings(tmp_path / "data", db_url, http={"listen": f"127.0.0.1:{port}"})
    gw = await Gateway.open(settings)
    token = await gw.admin.bootstrap_admin_key()
    assert token is not None
    stop = asyncio.Event()
    task = asyncio.create_task(run_api(gw, stop))
    client = Api(gw, f"http://127.0.0.1:{port}", token)
    try:
        for _ in range(200):
            try:
                if (await client.client.get("/healthz")).status_code == 200:
                    break
            except httpx2.TransportError:
                await asyncio.sleep(0.05)
        else:
            raise RuntimeError("API did not start")
        yield client
    finally:
        await client.client.aclose()
        stop.set()
        await asyncio.wait_for(task, 30)
        await gw.close()
