"""The sender checks' one deadline: a check that runs past it answers its temperror, one that raises
answers its failure, the others their own answers, and none outlives a cancelled message."""

from __future__ import annotations

import asyncio

import pytest

from mailgate.inbound.auth.check import _all_by, _Guarded


async def _slow(cancelled: asyncio.Event) -> str:
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        cancelled.set()
        raise
    return "never"


async def test_each_check_answers_by_the_deadline() -> None:
    slow_cancelled = asyncio.Event()

    async def quick() -> str:
        return "pass"

    async def broken() -> str:
        raise ValueError("bug")

    loop = asyncio.get_running_loop()
    started = loop.time()
    answers = await _all_by(
        started + 0.2,
        _Guarded("spf", quick(), lambda why: f"temperror: {why}"),
        _Guarded("dkim", _slow(slow_cancelled), lambda why: f"temperror: {why}"),
        _Guarded("arc", broken(), lambda why: f"temperror: {why}"),
    )
    assert answers == [
        "pass",
        "temperror: dkim check did not finish in time",
        "temperror: arc check failed: ValueError('bug')",
    ]
    assert loop.time() - started < 1
    await asyncio.sleep(0)
    assert slow_cancelled.is_set()


async def test_a_cancelled_caller_cancels_its_checks() -> None:
    cancelled = asyncio.Event()
    caller = asyncio.create_task(
        _all_by(asyncio.get_running_loop().time() + 30, _Guarded("spf", _slow(cancelled), lambda why: why))
    )
    await asyncio.sleep(0.05)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await asyncio.sleep(0)
    assert cancelled.is_set()
