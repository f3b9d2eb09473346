"""HTTP load generator for the API benchmark in ``bench/run.py``, run as its own process.

It issues a fixed number of GET requests at a fixed concurrency over kept-alive connections and
reports the wall time, the status codes and latency percentiles. It runs in a separate process so the
client's own CPU (httpx2 is pure Python) is not spent on the server's event loop and under its GIL, which
on a small machine would dominate what is measured. It imports nothing of mailgate, so it starts fast.

Protocol: one JSON job per line on stdin (the keyword arguments of ``run``), one JSON ``LoadResult`` per
line on stdout; it exits at end of input.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import Coroutine, Mapping
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import httpx2

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class LoadResult:
    path: str
    requests: int
    concurrency: int
    seconds: float
    statuses: dict[int, int]
    p50_ms: float
    p99_ms: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes) -> LoadResult:
        data: dict[str, Any] = json.loads(text)
        data["statuses"] = {int(code): count for code, count in data["statuses"].items()}
        return cls(**data)


def _percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def drive(
    base_url: str, path: str, headers: Mapping[str, str], requests: int, concurrency: int, warmup: int
) -> LoadResult:
    """``warmup`` untimed requests (which also open every connection), then ``requests`` timed ones."""
    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx2.AsyncClient(
        base_url=base_url, headers=dict(headers), limits=limits, timeout=30.0, trust_env=False
    ) as client:
        remaining = warmup
        statuses: Counter[int] = Counter()
        latencies: list[float] = []

        async def worker(record: bool) -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                start = time.perf_counter()
                response = await client.get(path)
                if record:
                    latencies.append((time.perf_counter() - start) * 1000)
                    statuses[response.status_code] += 1

        await asyncio.gather(*(worker(False) for _ in range(concurrency)))
        remaining = requests
        start = time.perf_counter()
        await asyncio.gather(*(worker(True) for _ in range(concurrency)))
        seconds = time.perf_counter() - start
    latencies.sort()
    return LoadResult(
        path, requests, concurrency, seconds, dict(statuses), _percentile(latencies, 0.50), _percentile(latencies, 0.99)
    )


def run(
    base_url: str, path: str, headers: Mapping[str, str], requests: int, concurrency: int, warmup: int
) -> LoadResult:
    """One job."""
    return on_uvloop(drive(base_url, path, headers, requests, concurrency, warmup))


def on_uvloop(coro: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop when available, like ``mailgate serve``: the client side should not be the bottleneck.
    Every bench script runs its clients through this."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - Windows
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def main() -> None:
    for line in sys.stdin:
        if line.strip():
            print(run(**json.loads(line)).to_json(), flush=True)


if __name__ == "__main__":
    main()
