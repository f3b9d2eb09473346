"""Route resolution and the live connector instances, each behind its circuit breaker.

A message takes, in order: the route named by its hint; else the first route whose match (sender
domain, tags) fits; else the route ``default``. At each step the tenant's own route of that name
wins over the global one, and connector names resolve the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mailgate.connectors.base import Sender
from mailgate.domain.outbound import GLOBAL_SCOPE, ConnectorSpec, RouteSpec
from mailgate.outbound.routing.breaker import BreakerState, CircuitBreaker
from mailgate.outbound.routing.ratelimit import RateLimiter
from mailgate.store import outbound as repo
from mailgate.store.cache import ReadThroughCache
from mailgate.store.database import Database
from mailgate.store.keyring import Keyring

DEFAULT_ROUTE = "default"
RATE_LIMIT_KEY = "rate_limit"  # routing's own setting in a connector's config; the sender never sees it
SenderFactory = Callable[[ConnectorSpec], Sender]


@dataclass(frozen=True, slots=True)
class Hop:
    spec: ConnectorSpec
    sender: Sender
    breaker: CircuitBreaker
    limiter: RateLimiter | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    route: str | None
    hops: list[Hop]
    missing: list[str]  # connector names the route lists that do not exist


def choose_route(
    routes: Sequence[RouteSpec], tenant_id: str, sender_domain: str, tags: list[str], hint: str | None
) -> RouteSpec | None:
    def named(name: str) -> RouteSpec | None:
        for scope in (tenant_id, GLOBAL_SCOPE):
            for route in routes:
                if route.scope == scope and route.name == name:
                    return route
        return None

    if hint:
        return named(hint)
    for scope in (tenant_id, GLOBAL_SCOPE):
        for route in routes:
            if route.scope == scope and route.matches(sender_domain, tags):
                return route
    return named(DEFAULT_ROUTE)


class Router:
    def __init__(
        self,
        db: Database,
        keyring: Keyring,
        build: SenderFactory,
        *,
        on_breaker_change: Callable[[ConnectorSpec, BreakerState, BreakerState], None] | None = None,
        breaker_threshold: int = 5,
        breaker_cooldown: float = 30.0,
        config_ttl: float = 2.0,
    ) -> None:
        self._db = db
        self._keyring = keyring
        self._build = build
        self._on_change = on_breaker_change
        self._threshold = breaker_threshold
        self._cooldown = breaker_cooldown
        self._live: dict[str, tuple[ConnectorSpec, Sender]] = {}
        self._breakers: dict[str, CircuitBreaker] = {}
        self._limiters: dict[str, RateLimiter] = {}
        self._cache: ReadThroughCache[str, tuple[list[RouteSpec], list[ConnectorSpec]]] = ReadThroughCache(config_ttl)

    async def _config(self, tenant_id: str) -> tuple[list[RouteSpec], list[ConnectorSpec]]:
        async def load() -> tuple[list[RouteSpec], list[ConnectorSpec]]:
            scopes = [tenant_id, GLOBAL_SCOPE]
            async with self._db.read() as conn:
                routes = await repo.list_routes(conn, scopes)
                specs = await repo.list_connectors(conn, self._keyring, scopes)
            return routes, specs

        return await self._cache.get(tenant_id, load)

    def invalidate(self) -> None:
        """Forget cached configuration (after a change on this node)."""
        self._cache.clear()

    def breaker(self, spec: ConnectorSpec) -> CircuitBreaker:
        breaker = self._breakers.get(spec.id)
        if breaker is None:

            def changed(_name: str, old: BreakerState, new: BreakerState) -> None:
                if self._on_change is not None:
                    self._on_change(spec, old, new)

            breaker = CircuitBreaker(spec.name, threshold=self._threshold, cooldown=self._cooldown, on_change=changed)
            self._breakers[spec.id] = breaker
        return breaker

    def _limiter(self, spec: ConnectorSpec) -> RateLimiter | None:
        """The connector's ``rate_limit`` (messages per second, per worker), kept across config reloads
        so that a reload does not refill the bucket."""
        rate = spec.config.get(RATE_LIMIT_KEY)
        if not rate:
            self._limiters.pop(spec.id, None)
            return None
        limiter = self._limiters.get(spec.id)
        if limiter is None or limiter.rate != float(rate):
            limiter = self._limiters[spec.id] = RateLimiter(float(rate))
        return limiter

    async def _sender(self, spec: ConnectorSpec) -> Sender:
        live = self._live.get(spec.id)
        if live is not None and live[0].updated_at == spec.updated_at:
            return live[1]
        if live is not None:
            await live[1].close()
        sender = self._build(spec)
        self._live[spec.id] = (spec, sender)
        return sender

    async def plan(self, tenant_id: str, sender_domain: str, tags: list[str], hint: str | None) -> Plan:
        routes, specs = await self._config(tenant_id)
        route = choose_route(routes, tenant_id, sender_domain, tags, hint)
        if route is None:
            return Plan(None, [], [])
        hops: list[Hop] = []
        missing: list[str] = []
        for name in route.connectors:
            spec = next(
                (s for scope in (tenant_id, GLOBAL_SCOPE) for s in specs if s.scope == scope and s.name == name), None
            )
            if spec is None:
                missing.append(name)
                continue
            hops.append(Hop(spec, await self._sender(spec), self.breaker(spec), self._limiter(spec)))
        return Plan(route.name, hops, missing)

    async def close(self) -> None:
        for _spec, sender in self._live.values():
            await sender.close()
        self._live.clear()
