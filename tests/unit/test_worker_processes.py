"""The worker pool with real spawned processes: calls from a worker to the node's handlers (results and
exceptions), messages both ways, a worker that exits unasked is restarted, and stop ends them all."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from mailgate.domain.errors import Unavailable
from mailgate.servers.processes import Link, WorkerPool


def _target(link: Link, mode: str) -> None:
    asyncio.run(_work(link, mode))


async def _work(link: Link, mode: str) -> None:
    stop = asyncio.Event()
    await link.open(lambda message: stop.set() if message[0] == "stop" else link.send(("echo", *message)), stop.set)
    doubled = await link.call("double", 21)
    try:
        await link.call("refuse", "x")
    except Unavailable as exc:
        refused = exc.detail
    link.send(("ready", link.index, os.getpid(), doubled, refused))
    if mode == "die":
        os._exit(3)
    await stop.wait()
    await link.close()


async def _double(value: int) -> int:
    return value * 2


async def _refuse(value: str) -> None:
    raise Unavailable(f"database unavailable: refused {value}")


async def _pool(mode: str, count: int) -> tuple[WorkerPool, asyncio.Queue[tuple[int, Any]], list[int]]:
    heard: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
    exits: list[int] = []
    pool = WorkerPool(
        "test",
        _target,
        (mode,),
        count,
        on_message=lambda index, message: heard.put_nowait((index, message)),
        on_exit=exits.append,
        handlers={"double": _double, "refuse": _refuse},
    )
    await pool.start()
    return pool, heard, exits


async def _next(heard: asyncio.Queue[tuple[int, Any]], kind: str) -> tuple[int, Any]:
    while True:
        index, message = await asyncio.wait_for(heard.get(), 30)
        if message[0] == kind:
            return index, message


async def test_workers_call_the_node_and_hear_it() -> None:
    pool, heard, exits = await _pool("stay", 2)
    try:
        ready = [await _next(heard, "ready") for _ in range(2)]
        assert sorted(index for index, _ in ready) == [1, 2]
        for _, (_, _, pid, doubled, refused) in ready:
            assert doubled == 42 and refused == "database unavailable: refused x"
            assert pid in pool.pids
        pool.send_all(("ping", "hello"))
        echoes = [await _next(heard, "echo") for _ in range(2)]
        assert {m for _, m in echoes} == {("echo", "ping", "hello")}
    finally:
        await pool.stop(10)
    assert sorted(exits) == [1, 2] and pool.pids == []


async def test_a_worker_that_exits_unasked_is_started_again() -> None:
    pool, heard, exits = await _pool("die", 1)
    try:
        _, first = await _next(heard, "ready")
        _, second = await _next(heard, "ready")  # after RESTART_FIRST seconds
        assert first[2] != second[2] and exits[:1] == [1]
    finally:
        await pool.stop(10)
