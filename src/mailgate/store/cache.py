"""A read-through cache for rows every request needs (API keys, routes, DKIM keys), with one load per
key in flight.

A plain "expired? then read" cache stampedes: when an entry expires under load, every concurrent caller
sees it missing and runs the same query (a worker's batch of 200 messages ran 200 route lookups, each
decrypting every connector's config). Here the first caller loads and the others await its result.

Forgetting a key (or everything) also disowns a load already running, so a change made on this node is
never hidden by a read that started before it committed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class ReadThroughCache(Generic[K, V]):
    def __init__(self, ttl: float, *, limit: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._limit = limit
        self._clock = clock
        self._entries: dict[K, tuple[V, float]] = {}
        self._loading: dict[K, asyncio.Future[V]] = {}
        self._epoch = 0

    async def get(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        entry = self._entries.get(key)
        if entry is not None and entry[1] > self._clock():
            return entry[0]
        running = self._loading.get(key)
        if running is None:
            running = asyncio.ensure_future(self._load(key, load, self._epoch))
            running.add_done_callback(_retrieve)
            self._loading[key] = running
        # shielded: one caller's cancellation must not fail the others waiting on the same load
        return await asyncio.shield(running)

    async def _load(self, key: K, load: Callable[[], Awaitable[V]], epoch: int) -> V:
        try:
            value = await load()
        finally:
            if self._loading.get(key) is asyncio.current_task():
                del self._loading[key]
        if epoch == self._epoch:
            if len(self._entries) >= self._limit:
                self._entries.clear()
            self._entries[key] = (value, self._clock() + self._ttl)
        return value

    def forget(self, key: K) -> None:
        self._entries.pop(key, None)
        self._loading.pop(key, None)
        self._epoch += 1

    def clear(self) -> None:
        self._entries.clear()
        self._loading.clear()
        self._epoch += 1


def _retrieve(done: asyncio.Future[Any]) -> None:
    """Marks a failed load's exception as seen: when every waiter was cancelled, nobody else will."""
    if not done.cancelled():
        done.exception()
