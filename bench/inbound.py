"""Inbound benchmark: how many messages per second mailgate's MX listener takes in durably, against
Postfix accepting the same load into its own queue, on the same machine in the same run.

- anchor: Postfix's ``smtp-source`` (N messages over 20 sessions) → a throwaway Postfix whose outgoing
  transport is deferred, so each message ends as a queue file written and fsynced by smtpd/cleanup;
- mailgate: the same ``smtp-source`` load → ``mailgate serve --roles api,mx`` (a subprocess, embedded
  SQLite, default settings) for a hosted mailbox: each message is parsed, checked (SPF, DKIM, DMARC,
  spam) against a DNS server on loopback, sealed and stored before its 250.

Each leg is timed from smtp-source's start until it has had its last 250 (smtp-source stops at the
first refusal, so a 4xx fails the run); mailgate's count of stored messages is checked afterwards. The
two legs run ``--rounds`` times (default 3), in alternating order and each mailgate leg on a fresh data
dir: on a shared virtual machine one leg's rate moves by a third from run to run, and the median of the
rounds' ratios is what a single run would show most often. The last line is
``ratio mailgate/postfix = X``, that median. Needs root and the postfix package
(``scripts/ensure-services.sh``); everything runs on 127.0.0.1 and is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx2
import loadgen  # bench/ is on sys.path: it is the directory of the script being run
from outbound import Server, run_cli
from rich.console import Console
from rich.table import Table

from mailgate.testing.dns_server import DnsServer
from mailgate.testing.postfix import PostfixRelay, PostfixUnavailable, free_port, smtp_source

SENDER = "bench@source.test"
RECIPIENT = "inbox@bench.test"
SESSIONS = 20

err = Console(stderr=True)


@dataclass(frozen=True, slots=True)
class Leg:
    name: str
    messages: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


async def timed_source(name: str, port: int, n: int, size: int) -> Leg:
    started = time.perf_counter()
    with err.status(f"{name}: smtp-source, {n} messages over {SESSIONS} sessions"):
        await smtp_source(
            port, messages=n, sessions=SESSIONS, size=size, mail_from=SENDER, rcpt_to=RECIPIENT, timeout=300 + n
        )
    return Leg(name, n, time.perf_counter() - started)


async def postfix_leg(n: int, size: int) -> Leg:
    # nothing listens on the next hop and the smtp transport is deferred: mail stays in the queue
    held = {"defer_transports": "smtp", "relay_domains": "bench.test"}
    async with PostfixRelay(next_hop_port=free_port(), main_cf=held) as relay:
        return await timed_source("postfix", relay.port, n, size)


async def stored_count(server: Server, mailbox: str) -> int:
    headers = {"Authorization": f"Bearer {server.admin_key}"}
    async with httpx2.AsyncClient(base_url=server.base_url, headers=headers, timeout=30, trust_env=False) as client:
        response = await client.get(f"/v1/mailboxes/{mailbox}/folders")
        response.raise_for_status()
        return sum(int(f["total"]) for f in response.json()["items"])


async def cli_last_line(root: Path, env: dict[str, str], *args: str) -> str:
    status, output = await run_cli("--data-dir", str(root / "mailgate"), *args, root=root, env=env)
    lines = output.strip().splitlines()
    if status != 0 or not lines:
        raise RuntimeError(f"mailgate {' '.join(args)} failed ({status}): {output[-500:]}")
    return lines[-1].strip()


async def mailgate_leg(n: int, size: int, root: Path) -> Leg:
    # the only resolver mailgate may use: it answers NXDOMAIN for the bench's names, with the SOA (and so
    # the negative TTL) an internet server would give
    async with DnsServer(negative_ttl=300) as dns:
        env = {"MAILGATE_DNS_SERVERS": f"127.0.0.1:{dns.port}"}
        mx_port = free_port()
        server = await Server.start(root, None, "api,mx", extra=["--mx", f"127.0.0.1:{mx_port}"], env=env)
        try:
            await cli_last_line(root, env, "tenants", "create", "bench")
            await cli_last_line(root, env, "domains", "create", "bench.test", "--tenant", "bench")
            mailbox = await cli_last_line(root, env, "mailboxes", "create", RECIPIENT, "--tenant", "bench")
            err.print(f"mailgate serve: pid {server.proc.pid}, MX 127.0.0.1:{mx_port}, log {root / 'serve.log'}")
            leg = await timed_source("mailgate MX", mx_port, n, size)
            stored = await stored_count(server, mailbox)
            if stored != n:
                raise RuntimeError(f"smtp-source had {n} replies of 250 but the mailbox holds {stored} messages")
            return leg
        finally:
            await server.stop()


def report(n: int, size: int, rounds: list[tuple[Leg, Leg]]) -> Table:
    table = Table(title=f"inbound: {n} messages of {size} bytes over {SESSIONS} SMTP sessions")
    table.add_column("round", justify="right")
    table.add_column("leg")
    table.add_column("seconds", justify="right")
    table.add_column("msgs/s", justify="right")
    table.add_column("vs postfix", justify="right")
    for number, (anchor, ours) in enumerate(rounds, 1):
        for leg in (anchor, ours):
            table.add_row(
                str(number), leg.name, f"{leg.seconds:.2f}", f"{leg.rate:.1f}", f"{leg.rate / anchor.rate:.2f}"
            )
    return table


async def main(n: int, size: int, base_dir: str | None, rounds: int) -> None:
    this = asyncio.current_task()
    assert this is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, this.cancel)
    out = Console(soft_wrap=True)
    out.print(
        f"mailgate inbound bench: Python {platform.python_version()}, {os.cpu_count()} CPUs, N={n}, "
        f"{size}-byte messages, {SESSIONS} sessions, 127.0.0.1 only; mailgate on its embedded SQLite"
    )
    results: list[tuple[Leg, Leg]] = []
    for number in range(rounds):
        with tempfile.TemporaryDirectory(prefix="mailgate-inbound-", dir=base_dir) as tmp:
            if number % 2 == 0:
                anchor = await postfix_leg(n, size)
                ours = await mailgate_leg(n, size, Path(tmp))
            else:
                ours = await mailgate_leg(n, size, Path(tmp))
                anchor = await postfix_leg(n, size)
        results.append((anchor, ours))
        err.print(f"round {number + 1}: ratio {ours.rate / anchor.rate:.2f}")
    out.print(report(n, size, results))
    ratio = statistics.median(ours.rate / anchor.rate for anchor, ours in results)
    print(f"ratio mailgate/postfix = {ratio:.2f}", flush=True)


def cli() -> None:
    parser = argparse.ArgumentParser(description="mailgate MX intake rate against Postfix queueing the same mail")
    parser.add_argument("--n", type=int, default=20000, help="messages per leg (default 20000)")
    parser.add_argument("--size", type=int, default=1000, help="message body bytes (default 1000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of both legs; the ratio is their median")
    parser.add_argument("--dir", default=None, help="where to create the temp data dir (default: system temp dir)")
    args = parser.parse_args()
    if args.n < 1 or args.size < 1 or args.rounds < 1:
        parser.error("--n, --size and --rounds must be positive")
    try:
        loadgen.on_uvloop(main(args.n, args.size, args.dir, args.rounds))
    except PostfixUnavailable as exc:
        sys.exit(f"inbound bench: {exc}")
    except (KeyboardInterrupt, asyncio.CancelledError):
        sys.exit("inbound bench: interrupted")


if __name__ == "__main__":
    cli()
