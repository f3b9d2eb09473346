"""What happens after an attempt: pure policy, no I/O, so every branch is testable in isolation.

4xx replies, timeouts and broken connections defer with exponential backoff and jitter; 5xx bounces;
a delivery older than ``max_age`` (5 days by default, as RFC 5321 4.5.4.1 suggests) fails.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from mailgate.domain.delivery import Bounced, Deferred, Delivered, DeliveryOutcome, DeliveryStatus, Failed


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    first_delay: float = 60.0
    multiplier: float = 2.0
    max_delay: float = 3600.0 * 2
    jitter: float = 0.2
    max_age: float = 5 * 24 * 3600.0

    def delay(self, attempts: int, rng: random.Random | None = None) -> float:
        """Seconds before attempt ``attempts + 1``, spread by ±jitter so retries of a burst do not align."""
        base = min(self.first_delay * self.multiplier ** max(attempts - 1, 0), self.max_delay)
        spread = (rng or random).uniform(-self.jitter, self.jitter)
        return max(0.0, base * (1 + spread))


@dataclass(frozen=True, slots=True)
class Step:
    status: DeliveryStatus
    next_attempt_at: datetime | None
    final_outcome: DeliveryOutcome


def next_step(
    outcome: DeliveryOutcome,
    *,
    attempts: int,
    queued_at: datetime,
    now: datetime,
    policy: RetryPolicy,
    rng: random.Random | None = None,
) -> Step:
    """``attempts`` counts the attempt that produced ``outcome``."""
    match outcome:
        case Delivered():
            return Step(DeliveryStatus.SENT, None, outcome)
        case Bounced():
            return Step(DeliveryStatus.BOUNCED, None, outcome)
        case Failed():
            return Step(DeliveryStatus.FAILED, None, outcome)
        case Deferred():
            next_at = now + timedelta(seconds=policy.delay(attempts, rng))
            if (next_at - queued_at).total_seconds() > policy.max_age:
                reason = f"gave up after {attempts} attempts over {policy.max_age / 3600:g} h: {outcome.reason}"
                return Step(DeliveryStatus.FAILED, None, Failed(reason))
            return Step(DeliveryStatus.DEFERRED, next_at, outcome)
    raise AssertionError(f"unknown outcome {outcome!r}")
