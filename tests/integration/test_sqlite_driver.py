"""The SQLite driver under the async engine (store/sqlite_driver.py): results of any size, pipelined writes
whose failures still fail their own transaction and nobody else's, and a write lock taken only with the
first statement and waited for off the event loop. What holds for both databases runs on both."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from mailgate.store import sqlite_driver
from mailgate.store.database import PIPELINED, Database
from mailgate.store.schema import tenants
from mailgate.store.types import utcnow


@pytest.fixture
async def sqlite_db(tmp_path: Path) -> AsyncIterator[tuple[Database, Path]]:
    path = tmp_path / "driver.db"
    database = Database(f"sqlite+aiosqlite:///{path}", busy_timeout_ms=5000)
    await database.upgrade()
    try:
        yield database, path
    finally:
        await database.dispose()


def _rows(prefix: str, n: int) -> list[dict[str, Any]]:
    return [{"id": f"ten_{prefix}{i:05d}", "name": f"{prefix}{i:05d}", "created_at": utcnow()} for i in range(n)]


async def _names(db: Database) -> list[str]:
    async with db.read() as conn:
        return list((await conn.execute(select(tenants.c.name).order_by(tenants.c.name))).scalars())


async def test_results_larger_than_the_prefetch_are_read_whole_and_streamed_in_order(db: Database) -> None:
    n = sqlite_driver.PREFETCH * 2 + 37
    async with db.write() as conn:
        await conn.execute(tenants.insert(), _rows("t", n))
    assert len(await _names(db)) == n
    async with db.read() as conn:
        streamed = [
            row.name
            async for row in await conn.stream(
                select(tenants.c.name).order_by(tenants.c.name).execution_options(yield_per=100)
            )
        ]
        assert streamed == [f"t{i:05d}" for i in range(n)]
        first = (await conn.execute(select(tenants.c.name).order_by(tenants.c.name))).first()
        assert first is not None and first.name == "t00000"


async def test_a_failed_pipelined_write_fails_its_transaction_and_leaves_nothing(db: Database) -> None:
    async with db.write() as conn:
        await conn.execute(tenants.insert(), _rows("a", 3))
    with pytest.raises(IntegrityError) as caught:
        async with db.write() as conn:
            await conn.execute(tenants.insert(), _rows("b", 2), execution_options=PIPELINED)
            await conn.execute(tenants.insert(), _rows("a", 2), execution_options=PIPELINED)  # duplicate ids
            await conn.execute(tenants.insert(), _rows("c", 2), execution_options=PIPELINED)
    if db.dialect == "sqlite":  # raised by a later step, naming the statement that failed
        assert any("pipelined statement: INSERT INTO tenants" in note for note in caught.value.orig.__notes__)  # type: ignore[union-attr]
    assert await _names(db) == ["a00000", "a00001", "a00002"]
    async with db.write() as conn:  # the pooled connection is clean again
        await conn.execute(tenants.insert(), _rows("d", 2), execution_options=PIPELINED)
    assert len(await _names(db)) == 5


async def test_a_pipelined_failure_is_answered_to_its_own_caller_in_a_group_commit(db: Database) -> None:
    async with db.write() as conn:
        await conn.execute(tenants.insert(), _rows("x", 1))

    def writer(rows: list[dict[str, Any]]) -> Any:
        async def work(conn: AsyncConnection) -> int:
            await conn.execute(tenants.insert(), rows, execution_options=PIPELINED)
            return len(rows)

        return work

    results = await asyncio.gather(
        db.batched.run(writer(_rows("p", 2))),
        db.batched.run(writer([*_rows("q", 1), *_rows("x", 1)])),  # its second row is a duplicate
        db.batched.run(writer(_rows("r", 3))),
        return_exceptions=True,
    )
    assert results[0] == 2 and results[2] == 3 and isinstance(results[1], IntegrityError)
    assert await _names(db) == ["p00000", "p00001", "r00000", "r00001", "r00002", "x00000"]


async def test_a_statement_is_one_round_trip_to_the_thread(
    sqlite_db: tuple[Database, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    db, _ = sqlite_db
    waited: list[str] = []
    original = sqlite_driver.Connection._call

    async def counting(self: sqlite_driver.Connection, fn: Any, *args: Any) -> Any:
        waited.append(getattr(fn, "__name__", repr(fn)))
        return await original(self, fn, *args)

    monkeypatch.setattr(sqlite_driver.Connection, "_call", counting)
    async with db.read() as conn:
        await conn.execute(select(func.count()).select_from(tenants))  # BEGIN goes with it
    assert len(waited) == 1  # and the read-only COMMIT, and the pool's rollback, wait for nobody
    waited.clear()
    async with db.write() as conn:
        await conn.execute(tenants.insert(), _rows("w", 5), execution_options=PIPELINED)
        await conn.execute(tenants.insert(), _rows("v", 5), execution_options=PIPELINED)
    assert len(waited) == 1  # only the COMMIT is waited for


async def test_the_write_lock_is_taken_with_the_first_statement(sqlite_db: tuple[Database, Path]) -> None:
    db, path = sqlite_db
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        async with db.write() as conn:
            other.execute("BEGIN IMMEDIATE")  # nothing ran yet here: the lock is free
            other.execute("ROLLBACK")
            await conn.execute(tenants.insert(), _rows("l", 1))
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
        other.execute("BEGIN IMMEDIATE")  # released at commit
        other.execute("ROLLBACK")
    finally:
        other.close()


async def test_a_writer_waits_for_another_process_lock_off_the_event_loop(sqlite_db: tuple[Database, Path]) -> None:
    db, path = sqlite_db
    locked, hold_s = threading.Event(), 0.4

    def other_process() -> None:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        locked.set()
        time.sleep(hold_s)
        other.execute("COMMIT")
        other.close()

    holder = threading.Thread(target=other_process)
    holder.start()
    await asyncio.to_thread(locked.wait)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    counting = asyncio.create_task(ticker())
    started = time.monotonic()
    async with db.write() as conn:
        await conn.execute(tenants.insert(), _rows("late", 1))
    waited = time.monotonic() - started
    counting.cancel()
    await asyncio.to_thread(holder.join)
    assert waited >= hold_s * 0.8  # it did wait for the other writer ...
    assert waited < hold_s + 0.25  # ... and took the lock soon after it was released
    assert ticks >= int(hold_s / 0.01) // 2  # while the event loop kept running
    assert await _names(db) == ["late00000"]
