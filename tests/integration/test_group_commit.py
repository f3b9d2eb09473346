"""Group commit and the SQLite write lock, on real databases: callers share a transaction but not
each other's failures, nobody is answered before the commit, and two processes' writers take turns."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from mailgate.domain.errors import Unavailable
from mailgate.domain.tenancy import Tenant
from mailgate.store import tenants as tenants_repo
from mailgate.store.database import Database
from mailgate.store.group_commit import GroupCommit
from mailgate.store.schema import tenants
from mailgate.store.types import utcnow


async def _count(db: Database) -> int:
    async with db.read() as conn:
        return int((await conn.execute(select(func.count()).select_from(tenants))).scalar_one())


def _insert(name: str) -> Any:
    async def work(conn: AsyncConnection) -> str:
        await tenants_repo.insert_tenant(conn, Tenant(f"ten_{name}", name, utcnow()))
        if name.startswith("bad"):
            raise ValueError(f"{name} fails after writing")
        return name

    return work


async def test_one_callers_failure_rolls_back_only_its_own_rows(db: Database) -> None:
    results = await asyncio.gather(
        *(db.batched.run(_insert(n)) for n in ("a", "bad1", "b", "c", "bad2")), return_exceptions=True
    )
    assert results[0] == "a" and results[2] == "b" and results[3] == "c"
    assert isinstance(results[1], ValueError) and isinstance(results[4], ValueError)
    assert await _count(db) == 3  # the failing callers' inserts are gone, the others' committed


async def test_a_bulk_writer_answers_each_item_after_the_commit(db: Database) -> None:
    seen_before_commit: list[int] = []

    async def bulk(conn: AsyncConnection, names: list[str]) -> list[Any]:
        answers: list[Any] = []
        for name in names:
            if name == "dup":
                answers.append(ValueError("refused"))
                continue
            await tenants_repo.insert_tenant(conn, Tenant(f"ten_{name}", name, utcnow()))
            answers.append(name.upper())
        seen_before_commit.append(await _count(db))  # another connection: nothing visible yet
        return answers

    results = await asyncio.gather(*(db.batched.run_bulk(bulk, n) for n in ("x", "dup", "y")), return_exceptions=True)
    assert results[0] == "X" and results[2] == "Y" and isinstance(results[1], ValueError)
    assert seen_before_commit == [0]
    assert await _count(db) == 2


async def test_a_failing_bulk_writer_fails_its_items_and_not_other_callers(db: Database) -> None:
    async def broken(conn: AsyncConnection, items: list[str]) -> list[Any]:
        await tenants_repo.insert_tenant(conn, Tenant("ten_z", "z", utcnow()))
        raise RuntimeError("bulk writer bug")

    results = await asyncio.gather(
        db.batched.run_bulk(broken, "1"),
        db.batched.run_bulk(broken, "2"),
        db.batched.run(_insert("ok")),
        return_exceptions=True,
    )
    assert isinstance(results[0], RuntimeError) and isinstance(results[1], RuntimeError) and results[2] == "ok"
    assert await _count(db) == 1


async def test_two_engines_on_one_sqlite_file_take_turns_for_the_write_lock(tmp_path: Path) -> None:
    """Two Database objects stand for two processes: their writers interleave without errors, and a
    writer kept waiting past the busy timeout gets Unavailable (503/451), not a hang."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    first, second = Database(url, busy_timeout_ms=5000), Database(url, busy_timeout_ms=300)
    await first.upgrade()
    try:

        async def writes(db: Database, prefix: str) -> None:
            for i in range(40):
                async with db.write() as conn:
                    await tenants_repo.insert_tenant(conn, Tenant(f"ten_{prefix}{i}", f"{prefix}{i}", utcnow()))

        await asyncio.gather(writes(first, "p"), writes(second, "q"))
        assert await _count(first) == 80

        held = asyncio.Event()
        release = asyncio.Event()

        async def hold_lock() -> None:
            async with first.write() as conn:
                await tenants_repo.insert_tenant(conn, Tenant("ten_hold", "hold", utcnow()))
                held.set()
                await release.wait()

        holder = asyncio.create_task(hold_lock())
        await held.wait()
        with pytest.raises(Unavailable):
            async with second.write() as conn:
                await tenants_repo.insert_tenant(conn, Tenant("ten_late", "late", utcnow()))
        release.set()
        await holder
        assert await _count(second) == 81
    finally:
        await first.dispose()
        await second.dispose()


async def test_the_next_transaction_is_begun_while_the_previous_one_commits(db: Database) -> None:
    """The next batch's statements are built while the previous COMMIT (the flush) runs; each caller is
    still answered only after its own commit."""
    log: list[str] = []

    @contextlib.asynccontextmanager
    async def slow_commit() -> AsyncIterator[AsyncConnection]:
        async with db.write() as conn:
            yield conn
            log.append("flushing")
            await asyncio.sleep(0.3)  # the COMMIT follows this block: a slow disk
        log.append("committed")

    batched = GroupCommit(slow_commit, sizes=None)

    def step(name: str) -> Any:
        async def work(conn: AsyncConnection) -> str:
            log.append(f"{name} runs")
            return await _insert(name)(conn)

        return work

    first = asyncio.create_task(batched.run(step("first")))
    while "flushing" not in log:
        await asyncio.sleep(0.01)
    second = asyncio.create_task(batched.run(step("second")))
    await asyncio.sleep(0.1)
    assert log[:3] == ["first runs", "flushing", "second runs"] and "committed" not in log
    assert not first.done() and not second.done()
    assert await first == "first" and await second == "second"
    assert await _count(db) == 2
