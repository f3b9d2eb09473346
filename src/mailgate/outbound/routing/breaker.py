"""A circuit breaker per connector: stop sending into a path that keeps failing, probe it later.

Closed: traffic flows; ``threshold`` consecutive path failures open it. Open: ``allow`` says no until
``cooldown`` has passed, then lets exactly one probe through (half-open). The probe's success closes it,
its failure opens it for another cooldown. Transitions are reported so they become events, a gauge
and a log line an operator can alert on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        *,
        threshold: int = 5,
        cooldown: float = 30.0,
        on_change: Callable[[str, BreakerState, BreakerState], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.threshold = threshold
        self.cooldown = cooldown
        self._on_change = on_change
        self._clock = clock
        self.state = BreakerState.CLOSED
        self.failures = 0
        self._opened_at = 0.0
        self._probing = False

    def _move(self, new: BreakerState) -> None:
        old, self.state = self.state, new
        if old != new and self._on_change is not None:
            self._on_change(self.name, old, new)

    def allow(self) -> bool:
        if self.state == BreakerState.CLOSED:
            return True
        if self.state == BreakerState.OPEN and self._clock() - self._opened_at >= self.cooldown:
            self._move(BreakerState.HALF_OPEN)
        if self.state == BreakerState.HALF_OPEN and not self._probing:
            self._probing = True
            return True
        return False

    def success(self) -> None:
        self.failures = 0
        self._probing = False
        self._move(BreakerState.CLOSED)

    def failure(self) -> None:
        self.failures += 1
        if self.state == BreakerState.HALF_OPEN or self.failures >= self.threshold:
            self._probing = False
            self._opened_at = self._clock()
            self._move(BreakerState.OPEN)
