"""The store on both engines: migrations, encrypted blobs, key rotation, the audit chain, events."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
from sqlalchemy import delete, select, text, update

from mailgate.app import Gateway
from mailgate.domain.errors import IntegrityError, NotFound
from mailgate.domain.tenancy import SYSTEM, Principal, Scope
from mailgate.security.masterkeys import MASTER_KEY_FILE, generate
from mailgate.store.schema import audit_head, audit_log
from tests.conftest import make_settings

MARKER = b"MAILGATE-PLAINTEXT-MARKER-" + os.urandom(8).hex().encode()


def _all_files_bytes(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in root.rglob("*") if p.is_file())


async def _database_bytes(gw: Gateway) -> bytes:
    """Every value of every table, as bytes: what a database dump would show."""
    out = []
    async with gw.db.read() as conn:
        names = await conn.run_sync(lambda c: c.dialect.get_table_names(c))
        for name in names:
            for row in (await conn.execute(text(f'SELECT * FROM "{name}"'))).all():
                for value in row:
                    out.append(value if isinstance(value, bytes) else str(value).encode())
    return b"\0".join(out)


async def test_migrations_are_current_after_open(gateway: Gateway) -> None:
    current, head = await gateway.db.revisions()
    assert current == head is not None
    assert await gateway.db.is_current()


@pytest.mark.parametrize("backend", ["file", "database"])
async def test_blob_plaintext_never_reaches_disk_or_database(tmp_path: Path, db_url: str, backend: str) -> None:
    data_dir = tmp_path / "data"
    gw = await Gateway.open(make_settings(data_dir, db_url, blobs={"backend": backend}))
    try:
        payload = MARKER * 3000  # over blobs.inline_max: it goes to the backend itself
        ref = await gw.blobs.put(payload)
        assert ref.size == len(payload)
        assert await gw.blobs.get(ref.id) == payload
        assert MARKER not in _all_files_bytes(tmp_path)
        assert MARKER not in await _database_bytes(gw)
        assert (await gw.blobs.put(payload)).id == ref.id  # content-addressed: stored once
    finally:
        await gw.close()
    if backend == "file":
        assert any(p.is_file() for p in (data_dir / "blobs").rglob("*"))


async def test_small_blobs_live_in_the_database_with_their_row(tmp_path: Path, db_url: str) -> None:
    data_dir = tmp_path / "data"
    gw = await Gateway.open(make_settings(data_dir, db_url, blobs={"backend": "file"}))
    try:
        small = await gw.blobs.put(MARKER * 10)
        assert await gw.blobs.get(small.id) == MARKER * 10
        assert not (data_dir / "blobs").exists() or not any((data_dir / "blobs").rglob(small.id))
        assert MARKER not in await _database_bytes(gw) and MARKER not in _all_files_bytes(tmp_path)
    finally:
        await gw.close()


async def test_blob_ids_are_keyed_and_missing_blobs_are_not_found(gateway: Gateway) -> None:
    import hashlib

    ref = await gateway.blobs.put(b"hello")
    assert ref.id != hashlib.sha256(b"hello").hexdigest()
    await gateway.blobs.delete(ref.id)
    with pytest.raises(NotFound):
        await gateway.blobs.get(ref.id)
    with pytest.raises(NotFound):
        await gateway.blobs.delete(ref.id)


async def test_tampered_blob_file_is_detected(tmp_path: Path) -> None:
    gw = await Gateway.open(make_settings(tmp_path / "data"))
    try:
        ref = await gw.blobs.put(b"x" * 100_000)
        path = next(p for p in (tmp_path / "data" / "blobs").rglob(ref.id))
        raw = bytearray(path.read_bytes())
        raw[-100] ^= 0xFF
        path.write_bytes(bytes(raw))
        with pytest.raises(IntegrityError):
            await gw.blobs.get(ref.id)
    finally:
        await gw.close()


async def test_master_key_rotation_keeps_old_blobs_readable(tmp_path: Path, db_url: str) -> None:
    settings = make_settings(tmp_path / "data", db_url)
    key_file = tmp_path / "data" / MASTER_KEY_FILE
    gw = await Gateway.open(settings)
    try:
        old_ref = await gw.blobs.put(b"before rotation " * 100)
        old_file = key_file.read_text()
        result = await gw.keyring.rotate()
        assert result.rewrapped == 2  # the data key and the hmac root
        assert key_file.read_text() != old_file
        assert len(key_file.read_text().split()) == 1  # the old master key is gone from the file
        new_ref = await gw.blobs.put(b"after rotation " * 100)
    finally:
        await gw.close()
    gw = await Gateway.open(settings)  # a fresh process: only the new master key exists
    try:
        assert await gw.blobs.get(old_ref.id) == b"before rotation " * 100
        assert await gw.blobs.get(new_ref.id) == b"after rotation " * 100
        assert gw.keyring.master_kid == result.master_kid
    finally:
        await gw.close()


async def test_rotation_with_keys_from_the_environment(tmp_path: Path, db_url: str) -> None:
    first, second = generate(), generate()
    gw = await Gateway.open(make_settings(tmp_path / "data", db_url, master_key=first.encoded()))
    try:
        ref = await gw.blobs.put(b"payload")
    finally:
        await gw.close()
    both = make_settings(tmp_path / "data", db_url, master_key=f"{second.encoded()},{first.encoded()}")
    gw = await Gateway.open(both)
    try:
        assert (await gw.keyring.rotate()).master_kid == second.kid
    finally:
        await gw.close()
    gw = await Gateway.open(make_settings(tmp_path / "data", db_url, master_key=second.encoded()))
    try:
        assert await gw.blobs.get(ref.id) == b"payload"
    finally:
        await gw.close()
    assert not (tmp_path / "data" / MASTER_KEY_FILE).exists()


async def test_a_wrong_master_key_is_refused_by_name(tmp_path: Path, db_url: str) -> None:
    from mailgate.domain.errors import ConfigurationError

    gw = await Gateway.open(make_settings(tmp_path / "data", db_url, master_key=generate().encoded()))
    await gw.close()
    with pytest.raises(ConfigurationError, match="not configured"):
        await Gateway.open(make_settings(tmp_path / "data", db_url, master_key=generate().encoded()))


async def _make_history(gw: Gateway) -> None:
    for name in ("t1", "t2", "t3", "t4"):
        await gw.admin.create_tenant(SYSTEM, name)


async def test_audit_chain_verifies_and_detects_an_edit(gateway: Gateway) -> None:
    await _make_history(gateway)
    result = await gateway.admin.verify_audit()
    assert result.ok and result.checked == 4
    async with gateway.db.write() as conn:
        await conn.execute(update(audit_log).where(audit_log.c.seq == 2).values(action="tenant.delete"))
    result = await gateway.admin.verify_audit()
    assert not result.ok and result.broken_seq == 2 and "altered" in (result.reason or "")


async def test_audit_chain_detects_a_deleted_middle_entry(gateway: Gateway) -> None:
    await _make_history(gateway)
    async with gateway.db.write() as conn:
        await conn.execute(delete(audit_log).where(audit_log.c.seq == 3))
    result = await gateway.admin.verify_audit()
    assert result.broken_seq == 3 and "missing" in (result.reason or "")


async def test_audit_chain_detects_truncation_of_the_newest_entries(gateway: Gateway) -> None:
    await _make_history(gateway)
    async with gateway.db.write() as conn:
        await conn.execute(delete(audit_log).where(audit_log.c.seq >= 3))
    result = await gateway.admin.verify_audit()
    assert result.broken_seq == 3 and "removed" in (result.reason or "")


async def test_audit_chain_cannot_be_recomputed_without_the_key(gateway: Gateway) -> None:
    """Re-hashing an edited row with plain SHA-256 (no master key) still fails verification."""
    import hashlib

    from mailgate.security.auditchain import canonical

    await _make_history(gateway)
    async with gateway.db.write() as conn:
        row = (await conn.execute(select(audit_log).where(audit_log.c.seq == 4))).one()
        fields = {
            k: row._mapping[k]
            for k in ("at", "actor", "tenant_id", "object_type", "object_id", "request_id", "outcome", "details")
        }
        fields.update(seq=4, action="forged")
        forged = hashlib.sha256(row.prev_hash.encode() + b"\n" + canonical(fields)).hexdigest()
        await conn.execute(update(audit_log).where(audit_log.c.seq == 4).values(action="forged", hash=forged))
        await conn.execute(update(audit_head).values(hash=forged))
    assert (await gateway.admin.verify_audit()).broken_seq == 4


async def test_concurrent_writers_keep_one_unbroken_chain(gateway: Gateway) -> None:
    await asyncio.gather(*(gateway.admin.create_tenant(SYSTEM, f"c{i}") for i in range(20)))
    result = await gateway.admin.verify_audit()
    assert result.ok and result.checked == 20


async def test_events_cursor_types_and_tenant_scope(gateway: Gateway) -> None:
    a = await gateway.admin.create_tenant(SYSTEM, "alpha")
    b = await gateway.admin.create_tenant(SYSTEM, "beta")
    await gateway.admin.create_key(SYSTEM, tenant=a.id, scopes=frozenset({Scope.READ}))
    everything = await gateway.admin.events(SYSTEM, after=0, types=[], limit=100)
    ids = [e.id for e in everything]
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert [e.type for e in everything] == ["tenant.created", "tenant.created", "apikey.created"]
    only_keys = await gateway.admin.events(SYSTEM, after=0, types=["apikey.created"], limit=100)
    assert [e.type for e in only_keys] == ["apikey.created"]
    assert await gateway.admin.events(SYSTEM, after=ids[-1], types=[], limit=100) == []
    alpha_reader = Principal(actor="t", tenant_id=a.id, scopes=frozenset({Scope.READ}))
    seen = await gateway.admin.events(alpha_reader, after=0, types=[], limit=100)
    assert {e.tenant_id for e in seen} == {a.id}
    assert b.id not in {e.object_id for e in seen}


async def test_long_poll_wakes_when_an_event_commits(gateway: Gateway) -> None:
    start = time.monotonic()
    waiter = asyncio.create_task(gateway.admin.events(SYSTEM, after=0, types=[], limit=10, wait=10, poll_interval=5))
    await asyncio.sleep(0.2)
    assert not waiter.done()
    await gateway.admin.create_tenant(SYSTEM, "wake")
    found = await asyncio.wait_for(waiter, 5)
    assert [e.type for e in found] == ["tenant.created"]
    assert time.monotonic() - start < 3


async def test_long_poll_times_out_empty(gateway: Gateway) -> None:
    start = time.monotonic()
    assert await gateway.admin.events(SYSTEM, after=0, types=[], limit=10, wait=0.6) == []
    assert 0.5 < time.monotonic() - start < 3
