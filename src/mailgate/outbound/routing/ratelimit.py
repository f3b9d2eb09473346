"""Per-connector send rate: a token bucket, because providers meter messages per second or minute and
answer an excess with 4xx throttling that costs a retry cycle. Waiting here is cheaper than that.

Waiters queue behind a lock, so they are served in arrival order and never overshoot together.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class RateLimiter:
    def __init__(self, rate: float, *, burst: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = max(1.0, burst if burst is not None else rate)
        self._clock = clock
        self._tokens = self.burst
        self._stamp = clock()
        self._lock = asyncio.Lock()

    async def acquire(self, count: int = 1) -> float:
        """Take ``count`` tokens, waiting as long as needed; returns the seconds waited."""
        waited = 0.0
        async with self._lock:
            while True:
                now = self._clock()
                self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
                self._stamp = now
                if self._tokens >= count or (count > self.burst and self._tokens >= self.burst):
                    self._tokens -= count
                    return waited
                pause = (min(count, self.burst) - self._tokens) / self.rate
                await asyncio.sleep(pause)
                waited += pause
