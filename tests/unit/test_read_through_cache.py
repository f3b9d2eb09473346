import asyncio

import pytest

from mailgate.store.cache import ReadThroughCache


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Loader:
    """Counts loads; each waits for ``gate`` so tests decide when a load finishes."""

    def __init__(self) -> None:
        self.calls = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail: Exception | None = None

    async def __call__(self) -> int:
        self.calls += 1
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return self.calls


async def test_concurrent_misses_share_one_load() -> None:
    cache: ReadThroughCache[str, int] = ReadThroughCache(5.0)
    load = Loader()
    load.gate.clear()
    waiting = [asyncio.ensure_future(cache.get("k", load)) for _ in range(50)]
    await asyncio.sleep(0)
    load.gate.set()
    assert await asyncio.gather(*waiting) == [1] * 50
    assert load.calls == 1


async def test_entries_expire_after_their_ttl() -> None:
    clock = Clock()
    cache: ReadThroughCache[str, int] = ReadThroughCache(5.0, clock=clock)
    load = Loader()
    assert await cache.get("k", load) == 1
    clock.now = 4.9
    assert await cache.get("k", load) == 1
    clock.now = 5.0
    assert await cache.get("k", load) == 2
    assert await cache.get("other", load) == 3


async def test_a_failed_load_is_not_cached_and_reaches_every_waiter() -> None:
    cache: ReadThroughCache[str, int] = ReadThroughCache(5.0)
    load = Loader()
    load.gate.clear()
    load.fail = RuntimeError("database gone")
    waiting = [asyncio.ensure_future(cache.get("k", load)) for _ in range(3)]
    await asyncio.sleep(0)
    load.gate.set()
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    load.fail = None
    assert await cache.get("k", load) == 2


async def test_one_cancelled_waiter_does_not_cancel_the_load_for_the_others() -> None:
    cache: ReadThroughCache[str, int] = ReadThroughCache(5.0)
    load = Loader()
    load.gate.clear()
    first = asyncio.ensure_future(cache.get("k", load))
    second = asyncio.ensure_future(cache.get("k", load))
    await asyncio.sleep(0)
    first.cancel()
    load.gate.set()
    assert await second == 1
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await cache.get("k", load) == 1 and load.calls == 1


async def test_forget_during_a_load_keeps_its_stale_result_out() -> None:
    """A key revoked while a request was reading its old row must not be cached from that read."""
    cache: ReadThroughCache[str, int] = ReadThroughCache(5.0)
    load = Loader()
    load.gate.clear()
    stale = asyncio.ensure_future(cache.get("k", load))
    await asyncio.sleep(0)
    cache.forget("k")
    load.gate.set()
    assert await stale == 1
    assert await cache.get("k", load) == 2  # loaded again, not served from the disowned read
    cache.clear()
    assert await cache.get("k", load) == 3


async def test_the_limit_bounds_the_number_of_entries() -> None:
    cache: ReadThroughCache[int, int] = ReadThroughCache(5.0, limit=10)
    load = Loader()
    for key in range(25):
        await cache.get(key, load)
    assert load.calls == 25
    await cache.get(0, load)  # the first keys made room for later ones
    assert load.calls == 26
