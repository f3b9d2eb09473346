"""The REST API over a real loopback socket, on both databases."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx2
import pytest
from openapi_spec_validator import validate

from tests.conftest import Api

PROBLEM = "application/problem+json"


async def _tenant(api: Api, name: str) -> str:
    r = await api.call("POST", "/v1/tenants", api.admin_key, json={"name": name})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def _key(api: Api, tenant: str | None, scopes: list[str]) -> tuple[str, str]:
    r = await api.call("POST", "/v1/apikeys", api.admin_key, json={"tenant": tenant, "scopes": scopes})
    assert r.status_code == 201, r.text
    body = r.json()
    return body["id"], body["key"]


def _is_problem(r, status: int, slug: str) -> None:  # type: ignore[no-untyped-def]
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    body = r.json()
    assert body["type"] == f"urn:mailgate:problem:{slug}"
    assert body["status"] == status
    assert body["request_id"] == r.headers["x-request-id"]
    assert "Traceback" not in r.text


async def test_health_ready_and_metrics(api: Api) -> None:
    assert (await api.call("GET", "/healthz")).json()["status"] == "ok"
    ready = await api.call("GET", "/readyz")
    assert ready.status_code == 200 and ready.json()["schema_revision"] == (await api.gw.db.revisions())[1]
    metrics = await api.call("GET", "/metrics")
    assert metrics.status_code == 200
    assert 'mailgate_http_requests_total{method="GET",route="/readyz",status="200"}' in metrics.text


async def test_the_send_route_answers_like_every_route(api: Api) -> None:
    """POST /v1/messages takes a shorter dispatch (api/fast_lane.py): the same refusals, headers,
    metrics and documented parameters as a route the framework dispatches."""
    body = {"from": "a@acme.test", "to": ["u@example.net"], "subject": "s", "text": "t"}
    for headers in ({}, {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Bearer mg_not_a_real_key"}):
        r = await api.call("POST", "/v1/messages", json=body, headers={**headers, "X-Request-Id": "lane-1"})
        _is_problem(r, 401, "unauthorized")
        assert r.headers["www-authenticate"].startswith("Bearer") and r.headers["x-request-id"] == "lane-1"
    json_type = {"Content-Type": "application/json"}
    r = await api.call("POST", "/v1/messages", api.admin_key, content=b"{", headers=json_type)
    _is_problem(r, 422, "invalid-input")
    r = await api.call("GET", "/v1/messages", api.admin_key)  # another method on the path: the framework's 405
    assert r.status_code == 405
    metrics = (await api.call("GET", "/metrics")).text
    assert 'mailgate_http_requests_total{method="POST",route="/v1/messages",status="401"}' in metrics
    params = (await api.call("GET", "/openapi.json")).json()["paths"]["/v1/messages"]["post"]["parameters"]
    assert {p["name"] for p in params} == {"Idempotency-Key", "mail_from", "to", "tag", "route", "send_at"}


async def test_readyz_is_503_when_the_schema_is_behind(api: Api) -> None:
    from sqlalchemy import text

    async with api.gw.db.write() as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = '0000'"))
    _is_problem(await api.call("GET", "/readyz"), 503, "unavailable")


async def test_missing_wrong_and_malformed_keys_are_401_problems(api: Api) -> None:
    for key in (None, "mg_not_a_real_key", "mg_key_0000000000000000_" + "A" * 43):
        r = await api.call("GET", "/v1/tenants", key)
        _is_problem(r, 401, "unauthorized")
        assert r.headers["www-authenticate"].startswith("Bearer")
    r = await api.call("GET", "/v1/tenants", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    _is_problem(r, 401, "unauthorized")


async def test_tenant_isolation_is_404_never_403(api: Api) -> None:
    a, b = await _tenant(api, "alpha"), await _tenant(api, "beta")
    _, key_a = await _key(api, a, ["read", "manage"])
    assert (await api.call("GET", f"/v1/tenants/{a}", key_a)).json()["name"] == "alpha"
    _is_problem(await api.call("GET", f"/v1/tenants/{b}", key_a), 404, "not-found")
    _is_problem(await api.call("GET", "/v1/tenants/beta", key_a), 404, "not-found")
    listed = (await api.call("GET", "/v1/tenants", key_a)).json()
    assert [t["id"] for t in listed["items"]] == [a]
    # an unknown id looks exactly like another tenant's
    _is_problem(await api.call("GET", "/v1/tenants/ten_doesnotexist", key_a), 404, "not-found")


async def test_scopes_are_enforced_and_refusals_audited(api: Api) -> None:
    a = await _tenant(api, "alpha")
    kid, key_a = await _key(api, a, ["read", "send", "manage"])
    _is_problem(await api.call("POST", "/v1/tenants", key_a, json={"name": "evil"}), 403, "forbidden")
    _is_problem(await api.call("POST", "/v1/apikeys", key_a, json={"tenant": a, "scopes": ["admin"]}), 403, "forbidden")
    entries = (await api.call("GET", "/v1/audit?limit=500", api.admin_key)).json()["items"]
    refused = [e for e in entries if e["actor"] == f"apikey:{kid}"]
    assert [e["outcome"] for e in refused] == ["denied", "denied"]
    assert refused[0]["action"] == "POST /v1/tenants"
    assert refused[0]["request_id"]


async def test_key_lifecycle_create_use_revoke(api: Api) -> None:
    b = await _tenant(api, "beta")
    kid, key = await _key(api, b, ["read"])
    assert key.startswith("mg_") and kid in key
    assert (await api.call("GET", f"/v1/tenants/{b}", key)).status_code == 200
    shown = (await api.call("GET", f"/v1/apikeys/{kid}", api.admin_key)).json()
    assert shown["active"] and "key" not in shown and shown["scopes"] == ["read"]
    revoked = await api.call("DELETE", f"/v1/apikeys/{kid}", api.admin_key)
    assert revoked.status_code == 200 and revoked.json()["active"] is False
    _is_problem(await api.call("GET", f"/v1/tenants/{b}", key), 401, "unauthorized")
    assert (await api.call("DELETE", f"/v1/apikeys/{kid}", api.admin_key)).status_code == 200
    _is_problem(await api.call("DELETE", "/v1/apikeys/key_0000000000000000", api.admin_key), 404, "not-found")


async def test_key_creation_validates(api: Api) -> None:
    r = await api.call("POST", "/v1/apikeys", api.admin_key, json={"tenant": "nope", "scopes": ["read"]})
    _is_problem(r, 404, "not-found")
    r = await api.call("POST", "/v1/apikeys", api.admin_key, json={"scopes": ["read"]})
    _is_problem(r, 422, "invalid-input")
    assert r.json()["errors"][0]["field"] == "tenant"
    r = await api.call("POST", "/v1/apikeys", api.admin_key, json={"tenant": "x", "scopes": ["root"]})
    _is_problem(r, 422, "invalid-input")
    assert "scopes" in r.json()["detail"]


async def test_bad_json_and_unknown_routes_are_problems(api: Api) -> None:
    r = await api.call(
        "POST", "/v1/tenants", api.admin_key, content=b"{not json", headers={"Content-Type": "application/json"}
    )
    _is_problem(r, 422, "invalid-input")
    _is_problem(await api.call("POST", "/v1/tenants", api.admin_key, json={"name": ""}), 422, "invalid-input")
    _is_problem(await api.call("GET", "/v1/nothing-here", api.admin_key), 404, "not-found")
    _is_problem(await api.call("PUT", "/v1/tenants", api.admin_key), 405, "method-not-allowed")
    await _tenant(api, "dup")
    _is_problem(await api.call("POST", "/v1/tenants", api.admin_key, json={"name": "dup"}), 409, "conflict")


async def test_cursor_pagination_walks_every_item_once(api: Api) -> None:
    made = {await _tenant(api, f"t{i}") for i in range(5)}
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        path = "/v1/tenants?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = (await api.call("GET", path, api.admin_key)).json()
        seen += [t["id"] for t in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(made) and len(seen) == 5
    _is_problem(await api.call("GET", "/v1/tenants?cursor=garbage", api.admin_key), 422, "invalid-input")


async def test_events_long_poll_returns_when_an_event_arrives(api: Api) -> None:
    first = (await api.call("GET", "/v1/events?after=0", api.admin_key)).json()
    after = max([e["id"] for e in first["items"]], default=0)
    start = time.monotonic()
    poll = asyncio.create_task(api.call("GET", f"/v1/events?after={after}&wait=10", api.admin_key))
    await asyncio.sleep(0.3)
    assert not poll.done()
    tenant = await _tenant(api, "late")
    r = await poll
    assert time.monotonic() - start < 5
    items = r.json()["items"]
    assert items[0]["type"] == "tenant.created" and items[0]["object_id"] == tenant
    assert all(e["id"] > after for e in items)
    _is_problem(await api.call("GET", "/v1/events?wait=9999", api.admin_key), 422, "invalid-input")


async def test_events_and_audit_are_tenant_scoped(api: Api) -> None:
    a, b = await _tenant(api, "alpha"), await _tenant(api, "beta")
    _, key_a = await _key(api, a, ["read"])
    events = (await api.call("GET", "/v1/events?types=tenant.created", key_a)).json()["items"]
    assert [e["object_id"] for e in events] == [a]
    audit = (await api.call("GET", "/v1/audit", key_a)).json()["items"]
    assert audit and {e["tenant"] for e in audit} == {a}
    assert b not in {e["object_id"] for e in audit}
    admin_audit = (await api.call("GET", "/v1/audit", api.admin_key)).json()["items"]
    assert {"tenant.create", "apikey.create"} <= {e["action"] for e in admin_audit}


async def test_request_id_is_echoed_and_generated(api: Api) -> None:
    r = await api.call("GET", "/healthz", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    r = await api.call("GET", "/healthz", headers={"X-Request-ID": "bad id\twith spaces"})
    assert r.headers["x-request-id"] != "bad id\twith spaces" and len(r.headers["x-request-id"]) == 32


async def test_openapi_is_valid_and_documents_errors(api: Api) -> None:
    spec = (await api.call("GET", "/openapi.json")).json()
    validate(spec)
    assert spec["openapi"].startswith("3.")
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            if path.startswith("/v1/"):
                assert "401" in op["responses"], (method, path)
                assert "application/problem+json" in op["responses"]["401"]["content"]
            assert {"200", "201", "202", "204"} & op["responses"].keys(), (method, path)
    assert "Problem" in spec["components"]["schemas"]
    docs = await api.call("GET", "/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


@pytest.mark.postgres
async def test_database_loss_is_503_not_500(tmp_path: Path, pg_database: str) -> None:
    """When PostgreSQL goes away under a running node, callers get 503 problems, and it recovers."""
    from mailgate.app import Gateway, run_api
    from tests.conftest import _pg_admin, free_port, make_settings

    port = free_port()
    gw = await Gateway.open(make_settings(tmp_path / "data", pg_database, http={"listen": f"127.0.0.1:{port}"}))
    token = await gw.admin.bootstrap_admin_key()
    stop = asyncio.Event()
    task = asyncio.create_task(run_api(gw, stop))
    client = Api(gw, f"http://127.0.0.1:{port}", token or "")
    try:
        for _ in range(100):
            try:
                if (await client.call("GET", "/readyz")).status_code == 200:
                    break
            except httpx2.TransportError:
                await asyncio.sleep(0.05)
        name = pg_database.rsplit("/", 1)[1]
        await _pg_admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await _pg_admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
        try:
            _is_problem(await client.call("GET", "/readyz"), 503, "unavailable")
            r = await client.call("GET", "/v1/tenants", client.admin_key)
            _is_problem(r, 503, "unavailable")
            assert r.headers["retry-after"]
        finally:
            await _pg_admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        for _ in range(50):
            if (await client.call("GET", "/readyz")).status_code == 200:
                break
            await asyncio.sleep(0.1)
        assert (await client.call("GET", "/v1/tenants", client.admin_key)).status_code == 200
    finally:
        await client.client.aclose()
        stop.set()
        await asyncio.wait_for(task, 30)
        await gw.close()
