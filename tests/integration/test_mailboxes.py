"""Domains, mailboxes, aliases and folders: the service on both databases, and the REST API over a real
socket."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from mailgate.app import Gateway
from mailgate.domain.errors import Conflict, InvalidInput, NotFound
from mailgate.domain.mailboxes import DEFAULT_FOLDERS
from mailgate.domain.tenancy import SYSTEM, Principal, Scope
from mailgate.store import mailboxes as repo
from mailgate.store.schema import audit_log, mailboxes
from tests.conftest import Api


def _key_of(tenant_id: str, *scopes: Scope) -> Principal:
    return Principal(actor="test", tenant_id=tenant_id, scopes=frozenset(scopes or (Scope.READ, Scope.MANAGE)))


async def _resolve(gw: Gateway, address: str) -> str | None:
    async with gw.db.read() as conn:
        found = await repo.resolve(conn, address)
    return found.mailbox_id if found else None


async def test_mailbox_lifecycle_and_recipient_lookup(gateway: Gateway) -> None:
    acme = await gateway.admin.create_tenant(SYSTEM, "acme")
    other = await gateway.admin.create_tenant(SYSTEM, "other")
    svc = gateway.mailboxes
    domain = await svc.create_domain(SYSTEM, "Acme.TEST.", tenant="acme")
    assert domain.name == "acme.test" and domain.spam.reject == 15.0
    with pytest.raises(Conflict):
        await svc.create_domain(SYSTEM, "acme.test", tenant="other")
    box = await svc.create_mailbox(SYSTEM, "Alice@acme.test", tenant=acme.id, display_name="Alice Liddell")
    assert box.address == "alice@acme.test" and box.display_name == "Alice Liddell"
    with pytest.raises(Conflict):
        await svc.create_mailbox(SYSTEM, "alice@ACME.test", tenant=acme.id)
    with pytest.raises(InvalidInput):  # the domain is acme's, not other's
        await svc.create_mailbox(SYSTEM, "bob@acme.test", tenant=other.id)
    with pytest.raises(InvalidInput):
        await svc.create_mailbox(SYSTEM, "Bob <bob@acme.test>", tenant=acme.id)
    assert [f.name for f in await svc.folders(SYSTEM, box.id)] == sorted(n for n, _ in DEFAULT_FOLDERS)

    assert await _resolve(gateway, "alice@acme.test") == box.id
    assert await _resolve(gateway, "alice+sales@acme.test") == box.id
    assert await _resolve(gateway, "carol@acme.test") is None
    with_alias = await svc.add_alias(SYSTEM, "alice@acme.test", "support@acme.test")
    assert with_alias.aliases == ("support@acme.test",)
    assert await _resolve(gateway, "support@acme.test") == box.id
    assert await _resolve(gateway, "support+x@acme.test") == box.id
    with pytest.raises(Conflict):
        await svc.create_mailbox(SYSTEM, "support@acme.test", tenant=acme.id)
    await svc.update_domain(SYSTEM, "acme.test", {"catch_all": "alice@acme.test"})
    assert await _resolve(gateway, "anyone@acme.test") == box.id
    assert await _resolve(gateway, "anyone@elsewhere.test") is None

    # tenants see only their own
    with pytest.raises(NotFound):
        await svc.get_mailbox(_key_of(other.id), box.id)
    assert [m.id for m in await svc.list_mailboxes(_key_of(acme.id), domain=None, after=None, limit=10)] == [box.id]
    assert await svc.list_mailboxes(_key_of(other.id), domain=None, after=None, limit=10) == []
    with pytest.raises(InvalidInput):
        await svc.update_domain(SYSTEM, "acme.test", {"spam_tag": 9.0})  # above junk (8)

    renamed = await svc.update_mailbox(SYSTEM, box.id, {"address": "alicia@acme.test", "display_name": "Alicia"})
    assert renamed.address == "alicia@acme.test" and renamed.display_name == "Alicia"
    assert await _resolve(gateway, "alice@acme.test") == box.id  # still the catch-all
    await svc.delete_mailbox(SYSTEM, box.id)
    assert await _resolve(gateway, "anyone@acme.test") is None  # the catch-all went with it
    assert await _resolve(gateway, "support@acme.test") is None
    async with gateway.db.read() as conn:
        actions = [r.action for r in (await conn.execute(select(audit_log.c.action))).all()]
    for action in ("domain.create", "mailbox.create", "mailbox.alias.add", "mailbox.update", "mailbox.delete"):
        assert action in actions


async def test_display_names_are_sealed_at_rest(gateway: Gateway) -> None:
    await gateway.admin.create_tenant(SYSTEM, "acme")
    await gateway.mailboxes.create_domain(SYSTEM, "acme.test", tenant="acme")
    box = await gateway.mailboxes.create_mailbox(SYSTEM, "a@acme.test", tenant="acme", display_name="Zebediah Quux")
    async with gateway.db.read() as conn:
        stored = (await conn.execute(select(mailboxes.c.display_name))).scalar_one()
    assert b"Zebediah" not in stored
    assert (await gateway.mailboxes.get_mailbox(SYSTEM, box.id)).display_name == "Zebediah Quux"


async def test_folders(gateway: Gateway) -> None:
    await gateway.admin.create_tenant(SYSTEM, "acme")
    await gateway.mailboxes.create_domain(SYSTEM, "acme.test", tenant="acme")
    box = await gateway.mailboxes.create_mailbox(SYSTEM, "a@acme.test", tenant="acme")
    svc = gateway.mailboxes
    made = await svc.create_folder(SYSTEM, box.id, "Projects/2026")
    assert made.uidnext == 1 and made.uidvalidity > 0
    with pytest.raises(Conflict):
        await svc.create_folder(SYSTEM, box.id, "Projects/2026")
    for bad in ("", "a//b", "/lead", "x*y", "tab\there"):
        with pytest.raises(InvalidInput):
            await svc.create_folder(SYSTEM, box.id, bad)
    with pytest.raises(Conflict):
        await svc.delete_folder(SYSTEM, box.id, "INBOX")
    with pytest.raises(Conflict):
        await svc.rename_folder(SYSTEM, box.id, "Junk", "Spam")
    renamed = await svc.rename_folder(SYSTEM, box.id, "Projects/2026", "Archive")
    assert renamed.id == made.id
    await svc.delete_folder(SYSTEM, box.id, "Archive")
    assert "Archive" not in [f.name for f in await svc.folders(SYSTEM, box.id)]
    async with gateway.db.write() as conn:
        folder = await repo.get_folder(conn, box.id, "INBOX")
        assert folder is not None
        assert await repo.take_uids(conn, folder.id, 3) == 1
        assert await repo.take_uids(conn, folder.id, 1) == 4


async def test_rest_domains_and_mailboxes(api: Api) -> None:
    adm = api.admin_key
    tenant = (await api.call("POST", "/v1/tenants", adm, json={"name": "acme"})).json()["id"]
    key = (await api.call("POST", "/v1/apikeys", adm, json={"tenant": tenant, "scopes": ["read", "manage"]})).json()[
        "key"
    ]
    reader = (await api.call("POST", "/v1/apikeys", adm, json={"tenant": tenant, "scopes": ["read"]})).json()["key"]
    r = await api.call("POST", "/v1/domains", key, json={"name": "acme.test"})
    assert r.status_code == 201, r.text
    assert r.json()["spam"] == {"tag": 5.0, "junk": 8.0, "reject": 15.0}
    assert (await api.call("POST", "/v1/domains", key, json={"name": "acme.test"})).status_code == 409
    assert (await api.call("POST", "/v1/domains", key, json={"name": "bad domain"})).status_code == 422
    assert (await api.call("POST", "/v1/domains", reader, json={"name": "x.test"})).status_code == 403
    r = await api.call("POST", "/v1/mailboxes", key, json={"address": "alice@acme.test", "display_name": "Alice"})
    assert r.status_code == 201, r.text
    box = r.json()
    assert box["address"] == "alice@acme.test"
    assert (await api.call("POST", "/v1/mailboxes", key, json={"address": "x@nope.test"})).status_code == 422
    assert (await api.call("GET", f"/v1/mailboxes/{box['id']}", reader)).json()["display_name"] == "Alice"
    listed = (await api.call("GET", "/v1/mailboxes?domain=acme.test", reader)).json()
    assert [m["id"] for m in listed["items"]] == [box["id"]] and listed["next_cursor"] is None
    r = await api.call("PATCH", f"/v1/mailboxes/{box['id']}", key, json={"address": "alicia@acme.test"})
    assert r.status_code == 200 and r.json()["address"] == "alicia@acme.test"
    r = await api.call("POST", f"/v1/mailboxes/{box['id']}/aliases", key, json={"address": "help@acme.test"})
    assert r.json()["aliases"] == ["help@acme.test"]
    r = await api.call("POST", f"/v1/mailboxes/{box['id']}/folders", key, json={"name": "Clients/Big"})
    assert r.status_code == 201
    folders = (await api.call("GET", f"/v1/mailboxes/{box['id']}/folders", reader)).json()["items"]
    assert {"INBOX", "Junk", "Clients/Big"} <= {f["name"] for f in folders}
    assert (await api.call("DELETE", f"/v1/mailboxes/{box['id']}/folders/Clients/Big", key)).status_code == 200
    r = await api.call("PATCH", "/v1/domains/acme.test", key, json={"spam_reject": 30, "catch_all": box["id"]})
    assert r.status_code == 200 and r.json()["spam"]["reject"] == 30 and r.json()["catch_all"] == box["id"]
    page = (await api.call("GET", f"/v1/mailboxes/{box['id']}/messages", reader)).json()
    assert page == {"items": [], "next_cursor": None}
    assert (await api.call("DELETE", f"/v1/mailboxes/{box['id']}", key)).status_code == 200
    assert (await api.call("GET", f"/v1/mailboxes/{box['id']}", reader)).status_code == 404
    assert (await api.call("DELETE", "/v1/domains/acme.test", key)).status_code == 200
