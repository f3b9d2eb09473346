"""``make bench``: how much mailgate's own layers cost on top of what they are built from.

Absolute numbers depend on the machine, its disk and its load, so every figure is printed next to an
anchor measured in the same run on the same machine, and the ratio between the two is what to compare
across commits: a ratio that drops means mailgate got slower, not that the machine did.

1. Blob store: ``BlobStore.put``/``get`` (HMAC id, envelope encryption, durable file write, SQLite row)
   against writing/reading the same plaintext to plain files with the same durability (fsync, rename,
   fsync of the directory).
2. Envelope encryption: ``envelope.seal``/``unseal`` (1 MiB chunks, per-chunk nonce and AAD) against one
   AES-256-GCM call over the whole buffer.
3. API: authenticated ``GET /v1/tenants`` (API key check + a list query) against unauthenticated
   ``GET /healthz``, on a real loopback socket: the server in this process on uvloop (as ``mailgate serve``
   runs it), the httpx2 client in a separate process (``bench/loadgen.py``) so it does not share its loop.
   Both the request rate and the server's CPU time per request are compared.

Self-contained (temporary data dirs, embedded SQLite, 127.0.0.1 only) and bounded in time;
``--quick`` divides every count and the envelope buffer by 10 for a smoke test (blob payloads keep their
sizes, so per-operation figures stay comparable).
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import json
import os
import platform
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx2
import loadgen  # bench/ is on sys.path: it is the directory of the script being run
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mailgate.app import Gateway, run_api
from mailgate.config import Settings, load_settings
from mailgate.observability.logging import configure_logging
from mailgate.security import envelope
from mailgate.store.blobs import write_durably

T = TypeVar("T")

BENCH_DIR = Path(__file__).resolve().parent

KIB = 1 << 10
MIB = 1 << 20
MB = 1e6  # throughput is reported in MB/s (10^6 bytes per second)
HARD_LIMIT_S = 170  # dump every thread's stack and exit if the whole run takes longer than this


@dataclass(frozen=True, slots=True)
class Plan:
    blob_classes: tuple[tuple[int, int], ...]  # (count, payload size)
    blob_rounds: int
    envelope_size: int
    envelope_rounds: int
    api_requests: int
    api_concurrency: int
    api_warmup: int
    api_tenants: int

    @classmethod
    def make(cls, quick: bool) -> Plan:
        d = 10 if quick else 1
        return cls(
            blob_classes=((200 // d, 64 * KIB), (20 // d, 4 * MIB)),
            blob_rounds=3,
            envelope_size=64 * MIB // d,
            envelope_rounds=5,
            api_requests=2000 // d,
            api_concurrency=16,
            api_warmup=200 // d,
            api_tenants=10,
        )


# ----- helpers -----


def human_size(n: int) -> str:
    if n >= MIB and n % MIB == 0:
        return f"{n // MIB} MiB"
    if n >= MIB:
        return f"{n / MIB:.1f} MiB"
    return f"{n / KIB:g} KiB"


def mbps(nbytes: int, seconds: float) -> float:
    return nbytes / MB / seconds


def best_of(rounds: int, fn: Callable[[], T]) -> tuple[float, T]:
    """Shortest wall time of ``rounds`` (at least one) calls, the least disturbed one, and the last result."""
    best = float("inf")
    for _ in range(max(1, rounds)):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def filesystem_of(path: Path) -> str:
    """The filesystem type holding ``path`` (fsync costs nothing on tmpfs, so say which it is)."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return "unknown"
    target, best, fstype = str(path.resolve()), "", "unknown"
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1]
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) > len(best):
            best, fstype = point, fields[2]
    return fstype


def settings_for(data_dir: Path, **overrides: Any) -> Settings:
    return load_settings(overrides={"data_dir": str(data_dir), **overrides}, environ={})


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ratio_line(label: str, rate: float, anchor_rate: float) -> str:
    return f"ratio {label} = {rate / anchor_rate:.3f}"


# ----- 1. blob store -----


def raw_write_all(directory: Path, payloads: list[bytes]) -> tuple[float, list[Path]]:
    paths = [directory / f"{len(p)}-{i:06d}" for i, p in enumerate(payloads)]
    start = time.perf_counter()
    for path, data in zip(paths, payloads, strict=True):
        write_durably(path, data)
    return time.perf_counter() - start, paths


def raw_read_all(paths: list[Path]) -> tuple[float, list[bytes]]:
    start = time.perf_counter()
    out = [p.read_bytes() for p in paths]
    return time.perf_counter() - start, out


OPS = ("put", "write", "get", "read")  # blob put, raw write (its anchor), blob get, raw read (its anchor)


async def blob_round(gw: Gateway, raw_dir: Path, count: int, size: int) -> dict[str, float]:
    """One timed pass of each operation on fresh random payloads, checked and cleaned up afterwards."""
    payloads = [os.urandom(size) for _ in range(count)]
    t_write, paths = raw_write_all(raw_dir, payloads)
    t_read, raw_back = raw_read_all(paths)
    start = time.perf_counter()
    refs = [await gw.blobs.put(data) for data in payloads]
    t_put = time.perf_counter() - start
    start = time.perf_counter()
    got = [await gw.blobs.get(ref.id) for ref in refs]
    t_get = time.perf_counter() - start

    if got != payloads or raw_back != payloads:
        raise RuntimeError("blob or raw read-back differs from what was written")
    if len({ref.id for ref in refs}) != count:
        raise RuntimeError("distinct random payloads were deduplicated: blob ids collide")
    for path in paths:
        path.unlink()
    for ref in refs:
        await gw.blobs.delete(ref.id)
    return {"put": t_put, "write": t_write, "get": t_get, "read": t_read}


def blob_lines(nbytes: int, count: int | None, best: dict[str, float]) -> list[str]:
    def rate(op: str) -> str:
        ops = f" {count / best[op]:8.1f} ops/s" if count else ""
        return f"{mbps(nbytes, best[op]):8.1f} MB/s{ops}"

    put, write, get, read = (mbps(nbytes, best[op]) for op in OPS)
    return [
        f"      blob put  {rate('put')}   raw write {rate('write')}   {ratio_line('blob-put/raw-write', put, write)}",
        f"      blob get  {rate('get')}   raw read  {rate('read')}   {ratio_line('blob-get/raw-read', get, read)}",
    ]


async def bench_blobs(root: Path, plan: Plan) -> None:
    print(
        "\n[1] blob store: BlobStore.put/get vs plain files written with fsync + rename + dir fsync, "
        f"best of {plan.blob_rounds} rounds"
    )
    raw_dir = root / "raw"
    raw_dir.mkdir()
    gw = await Gateway.open(settings_for(root / "blobs"))
    try:
        print(
            f"    blob backend: {gw.blobs.location} ({gw.db.dialect}); random, distinct payloads, fresh each round; "
            "reads hit the page cache"
        )
        totals = dict.fromkeys(OPS, 0.0)
        total_bytes = 0
        for count, size in plan.blob_classes:
            best = dict.fromkeys(OPS, float("inf"))
            for _ in range(plan.blob_rounds):
                for op, seconds in (await blob_round(gw, raw_dir, count, size)).items():
                    best[op] = min(best[op], seconds)
            for op in OPS:
                totals[op] += best[op]
            total_bytes += count * size
            print(f"    {count} x {human_size(size)}:")
            print("\n".join(blob_lines(count * size, count, best)))
        print(f"    all {human_size(total_bytes)} (sum of the best times):")
        print("\n".join(blob_lines(total_bytes, None, totals)))
    finally:
        await gw.close()


# ----- 2. envelope encryption -----


def bench_envelope(plan: Plan) -> None:
    size = plan.envelope_size
    print(
        f"\n[2] envelope encryption: envelope.seal/unseal vs one-shot AESGCM, {human_size(size)} buffer, "
        f"best of {plan.envelope_rounds}"
    )
    plaintext = os.urandom(size)
    key = envelope.new_key()
    context = b"bench:" + os.urandom(16).hex().encode()
    aead = AESGCM(key)
    nonce = os.urandom(12)

    t_seal, sealed = best_of(plan.envelope_rounds, lambda: envelope.seal(plaintext, key, "dk_bench", context))
    t_unseal, opened = best_of(plan.envelope_rounds, lambda: envelope.unseal(sealed, key, context))
    t_enc, ciphertext = best_of(plan.envelope_rounds, lambda: aead.encrypt(nonce, plaintext, context))
    t_dec, decrypted = best_of(plan.envelope_rounds, lambda: aead.decrypt(nonce, ciphertext, context))
    if opened != plaintext or decrypted != plaintext:
        raise RuntimeError("round trip through seal/unseal or AESGCM changed the data")

    overhead = len(sealed) - size
    print(f"    sealed size: {len(sealed)} bytes (+{overhead}: header and one 16-byte tag per 1 MiB chunk)")
    print(
        f"    seal      {mbps(size, t_seal):8.1f} MB/s   AESGCM encrypt {mbps(size, t_enc):8.1f} MB/s   "
        f"{ratio_line('seal/aesgcm-encrypt', mbps(size, t_seal), mbps(size, t_enc))}"
    )
    print(
        f"    unseal    {mbps(size, t_unseal):8.1f} MB/s   AESGCM decrypt {mbps(size, t_dec):8.1f} MB/s   "
        f"{ratio_line('unseal/aesgcm-decrypt', mbps(size, t_unseal), mbps(size, t_dec))}"
    )


# ----- 3. API request rate -----


async def wait_until_up(base_url: str, server: asyncio.Task[None], deadline_s: float = 15.0) -> None:
    async with httpx2.AsyncClient(base_url=base_url, timeout=2.0, trust_env=False) as client:
        give_up = time.monotonic() + deadline_s
        while time.monotonic() < give_up:
            if server.done():
                server.result()  # raises the role's error
                raise RuntimeError("API role exited before serving")
            try:
                if (await client.get("/healthz")).status_code == 200:
                    return
            except httpx2.TransportError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError(f"API at {base_url} did not answer /healthz within {deadline_s:.0f}s")


async def seed_tenants(base_url: str, token: str, count: int) -> None:
    """A few tenants, so the authenticated list returns and serialises real rows."""
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx2.AsyncClient(base_url=base_url, headers=headers, timeout=10.0, trust_env=False) as client:
        for i in range(count):
            response = await client.post("/v1/tenants", json={"name": f"bench-tenant-{i:02d}"})
            if response.status_code != 201:
                raise RuntimeError(f"creating a tenant answered {response.status_code}: {response.text[:200]}")


@dataclass(frozen=True, slots=True)
class ApiRun:
    load: loadgen.LoadResult
    server_cpu_s: float  # CPU time of this process (the server: its loop and its threads) during the job
    served: int  # requests the server answered during the job, warm-up included

    @property
    def cpu_ms_per_request(self) -> float:
        return self.server_cpu_s / self.served * 1000

    @property
    def per_cpu_second(self) -> float:
        return self.served / self.server_cpu_s

    @property
    def busy(self) -> float:
        """Server CPU per request x request rate: the share of one core the server used while timed."""
        return self.server_cpu_s / self.served * self.load.rate


def describe_api(label: str, result: ApiRun) -> str:
    load = result.load
    return (
        f"    {label:<16} {load.rate:8.1f} req/s   p50 {load.p50_ms:6.2f} ms   p99 {load.p99_ms:6.2f} ms   "
        f"server CPU {result.cpu_ms_per_request:5.2f} ms/req (~{result.busy:.0%} of a core busy)"
    )


def check_statuses(result: loadgen.LoadResult) -> None:
    if set(result.statuses) != {200}:
        raise RuntimeError(f"GET {result.path}: expected only 200s, got {result.statuses}")


class LoadWorker:
    """``bench/loadgen.py`` in its own process: jobs as JSON lines in, results as JSON lines out."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc

    @classmethod
    async def start(cls) -> LoadWorker:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(BENCH_DIR / "loadgen.py"), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        return cls(proc)

    async def run(self, **job: Any) -> loadgen.LoadResult:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(json.dumps(job).encode() + b"\n")
        await self._proc.stdin.drain()
        line = await self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the load generator exited (status {await self._proc.wait()}); see its error above")
        return loadgen.LoadResult.from_json(line)

    async def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        try:
            await asyncio.wait_for(self._proc.wait(), 10)
        except TimeoutError:
            self._proc.kill()
            await self._proc.wait()


async def bench_api(root: Path, plan: Plan) -> None:
    n, conc = plan.api_requests, plan.api_concurrency
    print(
        f"\n[3] API request rate: GET /v1/tenants (API key) vs GET /healthz (no auth), "
        f"{n} requests each, concurrency {conc}, keep-alive, client (httpx2) in its own process"
    )
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    gw = await Gateway.open(settings_for(root / "api", http={"listen": f"127.0.0.1:{port}"}))
    try:
        token = await gw.admin.bootstrap_admin_key()
        if token is None:
            raise RuntimeError("a fresh data dir did not hand out a bootstrap admin key")
        stop = asyncio.Event()
        server = asyncio.create_task(run_api(gw, stop))
        try:
            await wait_until_up(base_url, server)
            await seed_tenants(base_url, token, plan.api_tenants)
            # The client gets its own process (and the second core) rather than a share of the server's loop.
            worker = await LoadWorker.start()
            try:

                async def measure(path: str, headers: dict[str, str]) -> ApiRun:
                    cpu = time.process_time()
                    load = await worker.run(
                        base_url=base_url,
                        path=path,
                        headers=headers,
                        requests=n,
                        concurrency=conc,
                        warmup=plan.api_warmup,
                    )
                    check_statuses(load)
                    return ApiRun(load, time.process_time() - cpu, n + plan.api_warmup)

                async with asyncio.timeout(120):
                    health = await measure("/healthz", {})
                    tenants = await measure("/v1/tenants", {"Authorization": f"Bearer {token}"})
            finally:
                await worker.close()
            print(describe_api("GET /healthz", health))
            print(describe_api("GET /v1/tenants", tenants))
            print(f"    {ratio_line('authed/healthz', tenants.load.rate, health.load.rate)}")
            by_cpu = ratio_line("authed/healthz by server CPU", tenants.per_cpu_second, health.per_cpu_second)
            print(f"    {by_cpu}  (requests per CPU-second of the server process)")
            if health.busy < 0.8:
                print(
                    "    note: the server was not saturated on /healthz, so the client bounded that rate and the\n"
                    "    req/s ratio understates the cost of auth; the server-CPU ratio does not depend on the client"
                )
        finally:
            stop.set()
            await asyncio.wait_for(server, 30)
    finally:
        await gw.close()


# ----- main -----


async def main(plan: Plan, quick: bool, base_dir: str | None) -> None:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mailgate-bench-", dir=base_dir) as tmp:
        root = Path(tmp)
        print(
            f"mailgate bench{' (--quick)' if quick else ''}: Python {platform.python_version()}, "
            f"{os.cpu_count()} CPUs, {type(asyncio.get_running_loop()).__module__.split('.')[0]} loop, "
            f"data in {root} ({filesystem_of(root)})"
        )
        await bench_blobs(root, plan)
        bench_envelope(plan)
        await bench_api(root, plan)
    print(f"\ndone in {time.perf_counter() - started:.1f} s")


def cli() -> None:
    parser = argparse.ArgumentParser(description="mailgate benchmarks, each against an anchor measured in the same run")
    parser.add_argument(
        "--quick", action="store_true", help="divide every count and the envelope buffer by 10 (smoke test)"
    )
    parser.add_argument(
        "--dir", default=None, help="where to create the temporary data dirs (default: the system temp dir)"
    )
    args = parser.parse_args()
    # Access logs at info level would print one line per request; keep warnings and errors only.
    configure_logging("text", "warning")
    faulthandler.dump_traceback_later(HARD_LIMIT_S, exit=True)
    try:
        loadgen.on_uvloop(main(Plan.make(args.quick), args.quick, args.dir))
    finally:
        faulthandler.cancel_dump_traceback_later()


if __name__ == "__main__":
    cli()
