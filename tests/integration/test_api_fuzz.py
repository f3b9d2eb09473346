"""Random bodies and parameters against the API: every answer is a documented status, never a 500."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from tests.conftest import Api

pytestmark = pytest.mark.fuzz

NASTY_STRINGS = ["", " ", "\x00", "a\r\nX-Injected: 1", "ü" * 300, "𝕞𝕒𝕚𝕝", "' OR 1=1 --", "%00", "../../etc"]


def _value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(8 if depth < 3 else 5)
    if kind == 0:
        return rng.choice(NASTY_STRINGS)
    if kind == 1:
        return rng.choice([0, -1, 2**63, 1e308, float("1e-300")])
    if kind == 2:
        return rng.choice([True, False, None])
    if kind == 3:
        return "".join(chr(rng.randrange(1, 0x2FFF)) for _ in range(rng.randrange(30)))
    if kind == 4:
        return rng.choice(["read", "send", "manage", "admin", "READ", "read,send"])
    if kind == 5:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["name", "tenant", "scopes", "extra", "__proto__"]
    return {rng.choice(keys): _value(rng, depth + 1) for _ in range(rng.randrange(4))}


async def test_random_bodies_and_queries_never_500(api: Api) -> None:
    rng = random.Random(20261123)
    targets = [("POST", "/v1/tenants"), ("POST", "/v1/apikeys")]
    for i in range(150):
        method, path = rng.choice(targets)
        body = json.dumps(_value(rng)).encode() if i % 7 else bytes(rng.randrange(256) for _ in range(40))
        r = await api.call(method, path, api.admin_key, content=body, headers={"Content-Type": "application/json"})
        assert r.status_code in (201, 400, 404, 409, 422), (path, body, r.status_code, r.text)
        if r.status_code >= 400:
            assert r.headers["content-type"].startswith("application/problem+json")
    for _ in range(80):
        param = rng.choice(["after", "wait", "limit", "types", "cursor"])
        value = str(_value(rng))[:50]
        path = rng.choice(["/v1/events", "/v1/tenants", "/v1/audit", "/v1/apikeys"])
        r = await api.call("GET", path, api.admin_key, params={param: value})
        assert r.status_code in (200, 404, 422), (path, param, value, r.status_code, r.text)
    assert (await api.gw.admin.verify_audit()).ok
