"""The delivery queue's claim on both engines: no delivery handed to two workers, leases expire."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from mailgate.domain.delivery import DeliveryStatus
from mailgate.domain.outbound import DeliveryRecord, MessageRecord
from mailgate.domain.tenancy import Tenant
from mailgate.security.masterkeys import generate
from mailgate.store import outbound as repo
from mailgate.store import tenants as tenants_repo
from mailgate.store.database import Database
from mailgate.store.keyring import Keyring
from mailgate.store.types import utcnow


@pytest.fixture
async def store(db_url: str, tmp_path: Path) -> AsyncIterator[tuple[Database, Keyring]]:
    db = Database(db_url, pool_size=10)
    await db.upgrade()
    keyring = Keyring(db, [generate()], None)
    await keyring.load()
    async with db.write() as conn:
        await tenants_repo.insert_tenant(conn, Tenant("ten_q", "q", utcnow()))
    try:
        yield db, keyring
    finally:
        await db.dispose()


async def _enqueue(db: Database, keyring: Keyring, n: int, per_message: int = 5) -> list[str]:
    now = utcnow()
    ids = []
    async with db.write() as conn:
        for m in range(n // per_message):
            message = MessageRecord(f"msg_{m}", "ten_q", now, "a@x.test", "blob", 1, {}, [], {}, None, "api")
            await repo.insert_messages(conn, keyring, [message])
            rows = [
                DeliveryRecord(
                    f"dlv_{m}_{r}",
                    message.id,
                    "ten_q",
                    f"r{r}@y.test",
                    "y.test",
                    DeliveryStatus.QUEUED,
                    0,
                    now,
                    now,
                    now,
                )
                for r in range(per_message)
            ]
            await repo.insert_deliveries(conn, rows)
            ids += [r.id for r in rows]
    return ids


async def test_concurrent_claimers_never_share_a_delivery(store: tuple[Database, Keyring]) -> None:
    db, keyring = store
    ids = await _enqueue(db, keyring, 300)
    claimed: dict[str, list[str]] = {}

    async def worker(name: str) -> None:
        mine: list[str] = []
        while True:
            async with db.write() as conn:
                batch = await repo.claim_due(conn, owner=name, now=utcnow(), lease=timedelta(minutes=5), limit=7)
            if not batch:
                break
            mine += [d.id for d in batch]
            await asyncio.sleep(0)
        claimed[name] = mine

    await asyncio.gather(*(worker(f"w{i}") for i in range(6)))
    everything = [d for batch in claimed.values() for d in batch]
    assert sorted(everything) == sorted(ids), "every delivery claimed exactly once"
    assert len(set(everything)) == len(everything)
    assert sum(1 for batch in claimed.values() if batch) >= 2, "the work was shared"


async def test_a_dead_workers_lease_expires_and_is_taken_over(store: tuple[Database, Keyring]) -> None:
    db, keyring = store
    await _enqueue(db, keyring, 5)
    async with db.write() as conn:
        first = await repo.claim_due(conn, owner="dead", now=utcnow(), lease=timedelta(seconds=1), limit=10)
    assert len(first) == 5
    async with db.write() as conn:
        assert await repo.claim_due(conn, owner="alive", now=utcnow(), lease=timedelta(minutes=5), limit=10) == []
    later = utcnow() + timedelta(seconds=2)
    async with db.write() as conn:
        taken = await repo.claim_due(conn, owner="alive", now=later, lease=timedelta(minutes=5), limit=10)
    assert {d.id for d in taken} == {d.id for d in first}
    async with db.write() as conn:
        # the dead worker comes back: it no longer holds the lease, and even a write that skipped the
        # check would not overwrite the new owner's result
        assert await repo.leased_by(conn, [first[0].id], "dead") == set()
        await repo.record_attempts(
            conn, [repo.AttemptResult(first[0].id, DeliveryStatus.SENT, None, "c", "250", 1)], "dead"
        )
        assert await repo.leased_by(conn, [taken[0].id], "alive") == {taken[0].id}
        later_try = utcnow() + timedelta(minutes=1)
        await repo.record_attempts(
            conn, [repo.AttemptResult(taken[0].id, DeliveryStatus.DEFERRED, later_try, "c", "451", 1)], "alive"
        )
    async with db.read() as conn:
        rows = {d.id: d for d in await repo.deliveries_of(conn, first[0].message_id)}
    assert rows[taken[0].id].status == DeliveryStatus.DEFERRED and rows[taken[0].id].attempts == 1


async def test_deferred_rows_wait_for_their_time(store: tuple[Database, Keyring]) -> None:
    db, keyring = store
    await _enqueue(db, keyring, 5)
    async with db.write() as conn:
        batch = await repo.claim_due(conn, owner="w", now=utcnow(), lease=timedelta(minutes=5), limit=1)
        next_try = utcnow() + timedelta(hours=1)
        await repo.record_attempts(
            conn, [repo.AttemptResult(batch[0].id, DeliveryStatus.DEFERRED, next_try, None, "x", 0)], "w"
        )
        rest = await repo.claim_due(conn, owner="w", now=utcnow(), lease=timedelta(minutes=5), limit=10)
    assert batch[0].id not in {d.id for d in rest} and len(rest) == 4
    async with db.write() as conn:
        due_later = await repo.claim_due(
            conn, owner="w2", now=utcnow() + timedelta(hours=2), lease=timedelta(minutes=5), limit=10
        )
    assert batch[0].id in {d.id for d in due_later}


async def test_a_hold_made_during_an_attempt_survives_its_deferral(store: tuple[Database, Keyring]) -> None:
    db, keyring = store
    await _enqueue(db, keyring, 2, per_message=2)
    async with db.write() as conn:
        claimed = await repo.claim_due(conn, owner="w", now=utcnow(), lease=timedelta(minutes=5), limit=10)
        for delivery in claimed:  # the operator acts while both attempts are in flight
            await repo.set_status(
                conn,
                message_id=delivery.message_id,
                delivery_id=delivery.id,
                to=DeliveryStatus.HELD,
                from_statuses=(DeliveryStatus.QUEUED,),
            )
        later = utcnow() + timedelta(minutes=1)
        await repo.record_attempts(
            conn,
            [
                repo.AttemptResult(claimed[0].id, DeliveryStatus.DEFERRED, later, "c", "451 busy", 5),
                repo.AttemptResult(claimed[1].id, DeliveryStatus.SENT, None, "c", "250 ok", 5),
            ],
            "w",
        )
    async with db.read() as conn:
        rows = {d.id: d for d in await repo.deliveries_of(conn, claimed[0].message_id)}
    assert rows[claimed[0].id].status == DeliveryStatus.HELD and rows[claimed[0].id].attempts == 1
    assert rows[claimed[1].id].status == DeliveryStatus.SENT  # what happened is recorded regardless
