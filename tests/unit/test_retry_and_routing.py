import random
from datetime import UTC, datetime, timedelta

import pytest

from mailgate.domain.delivery import Bounced, Deferred, Delivered, DeliveryStatus, Failed, Reply
from mailgate.domain.outbound import GLOBAL_SCOPE, RouteSpec
from mailgate.outbound.retry import RetryPolicy, next_step
from mailgate.outbound.routing.breaker import BreakerState, CircuitBreaker
from mailgate.outbound.routing.router import choose_route

T0 = datetime(2026, 1, 1, tzinfo=UTC)
POLICY = RetryPolicy(first_delay=60, multiplier=2, max_delay=3600, jitter=0.2, max_age=5 * 86400)


def test_success_bounce_and_failure_are_final() -> None:
    ok = next_step(Delivered(Reply(250, "2.0.0", "ok")), attempts=1, queued_at=T0, now=T0, policy=POLICY)
    assert ok.status == DeliveryStatus.SENT and ok.next_attempt_at is None
    bounce = next_step(Bounced(Reply(550, "5.1.1", "no such user")), attempts=1, queued_at=T0, now=T0, policy=POLICY)
    assert bounce.status == DeliveryStatus.BOUNCED
    assert next_step(Failed("x"), attempts=1, queued_at=T0, now=T0, policy=POLICY).status == DeliveryStatus.FAILED


def test_deferrals_back_off_exponentially_with_bounded_jitter() -> None:
    rng = random.Random(1)
    delays = []
    for attempt in range(1, 10):
        step = next_step(
            Deferred("busy", Reply(451, "4.3.0", "try later")),
            attempts=attempt,
            queued_at=T0,
            now=T0,
            policy=POLICY,
            rng=rng,
        )
        assert step.status == DeliveryStatus.DEFERRED and step.next_attempt_at is not None
        delays.append((step.next_attempt_at - T0).total_seconds())
    for attempt, delay in enumerate(delays, start=1):
        base = min(60 * 2 ** (attempt - 1), 3600)
        assert base * 0.8 <= delay <= base * 1.2
    assert max(delays) <= 3600 * 1.2


def test_deferral_past_max_age_fails() -> None:
    now = T0 + timedelta(days=5) - timedelta(seconds=30)
    step = next_step(Deferred("busy"), attempts=40, queued_at=T0, now=now, policy=POLICY)
    assert step.status == DeliveryStatus.FAILED
    assert isinstance(step.final_outcome, Failed) and "gave up after 40 attempts" in step.final_outcome.reason


def test_breaker_opens_probes_once_and_closes() -> None:
    now = [0.0]
    changes: list[tuple[BreakerState, BreakerState]] = []
    b = CircuitBreaker(
        "relay", threshold=3, cooldown=10, on_change=lambda _n, o, n: changes.append((o, n)), clock=lambda: now[0]
    )
    for _ in range(2):
        b.failure()
    assert b.allow() and b.state == BreakerState.CLOSED
    b.failure()
    assert b.state == BreakerState.OPEN and not b.allow()
    now[0] = 10.0
    assert b.allow()  # the one probe
    assert not b.allow()  # nobody else while it is out
    b.failure()
    assert b.state == BreakerState.OPEN and not b.allow()
    now[0] = 20.0
    assert b.allow()
    b.success()
    assert b.state == BreakerState.CLOSED and b.allow()
    assert changes == [
        (BreakerState.CLOSED, BreakerState.OPEN),
        (BreakerState.OPEN, BreakerState.HALF_OPEN),
        (BreakerState.HALF_OPEN, BreakerState.OPEN),
        (BreakerState.OPEN, BreakerState.HALF_OPEN),
        (BreakerState.HALF_OPEN, BreakerState.CLOSED),
    ]


def _route(scope: str, name: str, match: dict | None = None) -> RouteSpec:  # type: ignore[type-arg]
    return RouteSpec(f"{scope}-{name}", scope, name, ["c"], match or {}, T0, T0)


@pytest.mark.parametrize(
    ("hint", "domain", "tags", "expected"),
    [
        (None, "x.test", [], "ten:default"),
        ("bulk", "x.test", [], ":bulk"),
        (None, "news.test", [], ":newsletters"),
        (None, "x.test", ["urgent"], "ten:fast"),
        ("nope", "x.test", [], None),
    ],
)
def test_route_choice_prefers_the_tenant_then_global(
    hint: str | None, domain: str, tags: list[str], expected: str | None
) -> None:
    routes = [
        _route(GLOBAL_SCOPE, "default"),
        _route("ten", "default"),
        _route(GLOBAL_SCOPE, "bulk"),
        _route(GLOBAL_SCOPE, "newsletters", {"sender_domains": ["news.test"]}),
        _route("ten", "fast", {"tags": ["urgent"]}),
        _route("other", "default"),
    ]
    chosen = choose_route(routes, "ten", domain, tags, hint)
    assert (f"{chosen.scope}:{chosen.name}" if chosen else None) == expected


def test_global_default_when_the_tenant_has_none() -> None:
    chosen = choose_route([_route(GLOBAL_SCOPE, "default")], "ten", "x.test", [], None)
    assert chosen is not None and chosen.scope == GLOBAL_SCOPE
    assert choose_route([], "ten", "x.test", [], None) is None


async def test_rate_limiter_spaces_sends_and_serves_in_order() -> None:
    import asyncio
    import time

    from mailgate.outbound.routing.ratelimit import RateLimiter

    limiter = RateLimiter(20.0, burst=1)
    order: list[int] = []

    async def take(i: int) -> None:
        await limiter.acquire()
        order.append(i)

    start = time.monotonic()
    await asyncio.gather(*(take(i) for i in range(10)))
    elapsed = time.monotonic() - start
    assert order == list(range(10))
    assert 0.4 <= elapsed < 2.0  # 9 waits of 50 ms after the first token
    fast = RateLimiter(1000.0)
    start = time.monotonic()
    for _ in range(100):
        await fast.acquire()
    assert time.monotonic() - start < 0.2  # a full bucket does not wait
