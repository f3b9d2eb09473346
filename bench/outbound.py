"""Outbound benchmark: how many messages per second mailgate takes in and delivers to an SMTP relay,
against Postfix relaying the same messages on the same machine in the same run.

- anchor: Postfix's ``smtp-source`` → a throwaway Postfix relay → Postfix's ``smtp-sink``;
- mailgate REST: ``POST /v1/messages`` from concurrent httpx2 clients → ``mailgate serve`` (a
  subprocess, embedded SQLite) → its ``smtp_relay`` connector → ``smtp-sink``;
- mailgate SMTP submission (when the CLI has ``smtp-credentials``): SMTP sessions with STARTTLS
  and AUTH → ``mailgate serve`` → ``smtp-sink``.

Each leg is timed from its first submission until smtp-sink has acknowledged the last message: both
sides must accept durably, queue and relay, so the anchor is the rate a stock MTA achieves here. The
last line is ``ratio mailgate/postfix = X`` (REST rate / Postfix rate). Needs root and the postfix
package (``scripts/ensure-services.sh``); everything runs on 127.0.0.1 and is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import signal
import ssl
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import httpx2
import loadgen  # bench/ is on sys.path: it is the directory of the script being run
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from mailgate.connectors._smtp import SessionOptions, open_session, quit_quietly, transact
from mailgate.domain.delivery import Delivered
from mailgate.testing.postfix import PostfixRelay, PostfixSink, PostfixUnavailable, free_port, smtp_source

MAILGATE = [sys.executable, "-m", "mailgate"]
SENDER = "bench@source.test"
RECIPIENT = "rcpt@sink.test"
STARTUP_S = 60.0  # mailgate serve: migrations on a fresh data dir, then the API answering
STOP_S = 30.0
BATCH = 100  # messages per batch request
STALL_S = 60.0  # a leg fails when smtp-sink receives nothing for this long

err = Console(stderr=True)


@dataclass(frozen=True, slots=True)
class Plan:
    n: int
    concurrency: int
    size: int

    @property
    def leg_timeout(self) -> float:
        """A hard cap far above any plausible run (1 msg/s); a hang is caught sooner by STALL_S."""
        return 300.0 + self.n

    def payload(self) -> str:
        """``size`` bytes of text in 78-character lines, about what smtp-source sends with ``-l``."""
        line = "The quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs. "[:77] + "\n"
        return (line * (self.size // len(line) + 1))[: self.size]


@dataclass(frozen=True, slots=True)
class Leg:
    name: str
    messages: int
    accepted_s: float  # until the last submission was acknowledged (250 or 202)
    delivered_s: float  # until smtp-sink acknowledged the last message

    @property
    def rate(self) -> float:
        return self.messages / self.delivered_s


class Meter:
    """The rich progress bar on stderr: stdout carries only the results."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress

    def leg(self, name: str, total: int, base: int = 0) -> Callable[[int], None]:
        """A callback for PostfixSink.wait_for: sink counts are cumulative, ``base`` is this leg's start."""
        task: TaskID = self._progress.add_task(name, total=total)
        return lambda count: self._progress.update(task, completed=count - base)


async def timed_leg(
    name: str, plan: Plan, sink: PostfixSink, meter: Meter, submit: Callable[[], Awaitable[None]]
) -> Leg:
    """Run ``submit`` and, alongside, wait until smtp-sink has all of its messages; either failing
    cancels the other, and so does a stall (nothing delivered for STALL_S)."""
    base = sink.received
    started = time.perf_counter()
    accepted = delivered = 0.0

    async def submitting() -> None:
        nonlocal accepted
        await submit()
        accepted = time.perf_counter() - started

    async def delivering() -> None:
        nonlocal delivered
        target, progress = base + plan.n, meter.leg(name, plan.n, base)
        while sink.received < target:  # each step waits for at least one more message, or fails
            await sink.wait_for(sink.received + 1, timeout=STALL_S, progress=progress)
        delivered = time.perf_counter() - started

    async with asyncio.timeout(plan.leg_timeout), asyncio.TaskGroup() as group:
        group.create_task(submitting())
        group.create_task(delivering())
    return Leg(name, plan.n, accepted, delivered)


# ----- the anchor: Postfix -----


async def postfix_leg(plan: Plan, meter: Meter) -> Leg:
    async with PostfixSink() as sink, PostfixRelay(next_hop_port=sink.port) as relay:

        async def submit() -> None:
            await smtp_source(
                relay.port,
                messages=plan.n,
                sessions=plan.concurrency,
                size=plan.size,
                mail_from=SENDER,
                rcpt_to=RECIPIENT,
                timeout=plan.leg_timeout,
            )

        return await timed_leg("postfix (smtp-source)", plan, sink, meter, submit)


# ----- mailgate serve as a subprocess -----


def clean_env() -> dict[str, str]:
    """No MAILGATE_* settings from the caller's environment: the bench measures the defaults."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MAILGATE_")}


async def run_cli(
    *args: str,
    root: Path | None = None,
    timeout: float = 60.0,  # noqa: ASYNC109
    env: Mapping[str, str] | None = None,
) -> tuple[int, str]:
    """``mailgate ARGS``: exit status and output (stdout and stderr); killed if it outlasts ``timeout``."""
    proc = await asyncio.create_subprocess_exec(
        *MAILGATE,
        *args,
        cwd=root,
        env={**clean_env(), **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, output.decode(errors="replace")


async def cli_help(*command: str) -> str | None:
    """``mailgate COMMAND --help``, or None if the CLI has no such command."""
    status, output = await run_cli(*command, "--help")
    return output if status == 0 else None


async def submission_supported() -> bool:
    """SMTP submission is new: the leg runs only when the CLI can create credentials and place the
    listener (``serve --submission``)."""
    serve_help = await cli_help("serve")
    return await cli_help("smtp-credentials", "create") is not None and "--submission" in (serve_help or "")


class Server:
    """``mailgate serve`` in its own process group; its log (default level, as in production) goes to
    a file, as Postfix's does."""

    def __init__(self, proc: asyncio.subprocess.Process, log: TextIO) -> None:
        self.proc = proc
        self._log = log
        self.base_url = ""
        self.admin_key = ""
        self._drain: asyncio.Task[None] | None = None

    @classmethod
    async def start(
        cls,
        root: Path,
        submission_port: int | None,
        roles: str,
        *,
        extra: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> Server:
        """``extra`` are more ``serve`` options, ``env`` more environment (the bench's own settings)."""
        data_dir = root / "mailgate"
        argv = [*MAILGATE, "--data-dir", str(data_dir), "serve", "--http", f"127.0.0.1:{free_port()}"]
        argv += ["--roles", roles, *extra]
        if submission_port is not None:
            argv += ["--submission", f"127.0.0.1:{submission_port}"]
        log = (root / "serve.log").open("w")
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=root,
            env={**clean_env(), **(env or {})},
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
            start_new_session=True,
        )
        server = cls(proc, log)
        try:
            async with asyncio.timeout(STARTUP_S):
                await server._read_banner()
                await server._wait_healthy()
        except BaseException:
            await server.stop()
            raise
        return server

    async def _read_banner(self) -> None:
        assert self.proc.stdout is not None
        while not (self.admin_key and self.base_url):
            line = (await self.proc.stdout.readline()).decode(errors="replace")
            if not line:
                raise RuntimeError(f"mailgate serve exited ({await self.proc.wait()}); see serve.log")
            if match := re.match(r"admin API key: (\S+)", line):
                self.admin_key = match.group(1)
            elif match := re.match(r"mailgate API: (\S+)", line):
                self.base_url = match.group(1)
        self._drain = asyncio.create_task(self._discard(self.proc.stdout))

    @staticmethod
    async def _discard(stream: asyncio.StreamReader) -> None:
        """Keep reading what serve prints, so a full pipe never blocks it."""
        while await stream.read(65536):
            pass

    async def _wait_healthy(self) -> None:
        async with httpx2.AsyncClient(base_url=self.base_url, timeout=2.0, trust_env=False) as client:
            while True:
                with contextlib.suppress(httpx2.TransportError):
                    if (await client.get("/healthz")).status_code == 200:
                        return
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        await stop_group(self.proc, "mailgate serve")
        if self._drain is not None:
            await asyncio.wait_for(self._drain, 5)
        self._log.close()


async def stop_group(proc: asyncio.subprocess.Process, what: str) -> None:
    """SIGTERM (a graceful stop), SIGKILL to the whole group if it takes longer than STOP_S."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), STOP_S)
    except TimeoutError:
        err.print(f"{what} did not stop within {STOP_S:g}s: killed")
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    await proc.wait()


class WorkerProcess:
    """``mailgate serve --roles worker`` on the same data dir: the delivery side in a process of its own,
    so that accepting and delivering use both cores, as Postfix's smtpd, cleanup, qmgr and smtp do."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, root: Path) -> WorkerProcess:
        log_path = root / "worker.log"
        with log_path.open("w") as log:
            proc = await asyncio.create_subprocess_exec(
                *MAILGATE,
                "--data-dir",
                str(root / "mailgate"),
                "--log-format",
                "text",
                "serve",
                "--roles",
                "worker",
                cwd=root,
                env=clean_env(),
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        async with asyncio.timeout(STARTUP_S):
            while "delivery worker started" not in log_path.read_text(errors="replace"):
                if proc.returncode is not None:
                    raise RuntimeError(f"mailgate worker exited ({proc.returncode}); see worker.log")
                await asyncio.sleep(0.1)
        return cls(proc)

    async def stop(self) -> None:
        await stop_group(self.proc, "mailgate worker")


class Admin:
    def __init__(self, client: httpx2.AsyncClient) -> None:
        self.client = client

    async def call(self, method: str, path: str, body: dict[str, Any], *, ok: tuple[int, ...]) -> dict[str, Any]:
        response = await self.client.request(method, path, json=body)
        if response.status_code not in ok:
            raise RuntimeError(f"{method} {path} answered {response.status_code}: {response.text[:500]}")
        result: dict[str, Any] = response.json()
        return result


async def configure(server: Server, sink_port: int) -> tuple[str, str]:
    """A tenant, its send/read key, and the default route through one smtp_relay connector (its
    defaults: the benchmark measures mailgate as it ships) to smtp-sink. Returns (tenant id, key)."""
    headers = {"Authorization": f"Bearer {server.admin_key}"}
    async with httpx2.AsyncClient(base_url=server.base_url, headers=headers, timeout=30, trust_env=False) as client:
        admin = Admin(client)
        tenant = (await admin.call("POST", "/v1/tenants", {"name": "bench"}, ok=(201,)))["id"]
        key = await admin.call("POST", "/v1/apikeys", {"tenant": tenant, "scopes": ["send", "read"]}, ok=(201,))
        connector = {"name": "sink", "type": "smtp_relay", "host": "127.0.0.1", "port": sink_port, "tls": "none"}
        await admin.call("POST", "/v1/connectors", connector, ok=(201,))
        await admin.call("PUT", "/v1/routes/default", {"connectors": ["sink"]}, ok=(200, 201))
    return str(tenant), str(key["key"])


# ----- mailgate legs -----


async def rest_leg(plan: Plan, server: Server, key: str, sink: PostfixSink, meter: Meter) -> Leg:
    """One message per ``POST /v1/messages``, over ``concurrency`` keep-alive connections. The client is
    a few lines of raw HTTP/1.1, as smtp-source is a small C program: on two shared cores a full HTTP
    client library would spend as much CPU as the server it measures."""
    text = plan.payload()
    host, _, port = server.base_url.removeprefix("http://").partition(":")
    numbers = iter(range(plan.n))

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            for i in numbers:  # one iterator shared by every connection: each message is sent once
                body = json.dumps({"from": SENDER, "to": [RECIPIENT], "subject": f"bench {i}", "text": text}).encode()
                writer.write(
                    b"POST /v1/messages HTTP/1.1\r\nHost: %b\r\nAuthorization: Bearer %b\r\n"
                    b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
                    % (host.encode(), key.encode(), len(body), body)
                )
                status, answer = await _http_response(reader)
                if status != 202:
                    raise RuntimeError(f"POST /v1/messages answered {status}: {answer[:500]!r}")
        finally:
            writer.close()

    async def submit() -> None:
        await asyncio.gather(*(connection() for _ in range(plan.concurrency)))

    return await timed_leg("mailgate REST", plan, sink, meter, submit)


async def _http_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Status and body of one HTTP/1.1 response with a Content-Length (what uvicorn sends here)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length)


async def rest_batch_leg(plan: Plan, server: Server, key: str, sink: PostfixSink, meter: Meter) -> Leg:
    """The same N messages through ``POST /v1/messages/batch``, BATCH per request: how senders of bulk
    mail use the API. Informational; the ratio is taken from the one-message-per-request leg."""
    text = plan.payload()
    headers = {"Authorization": f"Bearer {key}"}
    starts = iter(range(0, plan.n, BATCH))

    async def submit() -> None:
        async with httpx2.AsyncClient(
            base_url=server.base_url, headers=headers, timeout=120, trust_env=False
        ) as client:

            async def worker() -> None:
                for start in starts:
                    count = min(BATCH, plan.n - start)
                    recipients = [{"to": RECIPIENT, "variables": {"i": start + k}} for k in range(count)]
                    body = {"from": SENDER, "subject": "bench batch", "text": text, "recipients": recipients}
                    response = await client.post("/v1/messages/batch", json=body)
                    if response.status_code != 202:
                        raise RuntimeError(
                            f"POST /v1/messages/batch answered {response.status_code}: {response.text[:500]}"
                        )

            await asyncio.gather(*(worker() for _ in range(min(4, plan.concurrency))))

    return await timed_leg(f"mailgate REST batch ({BATCH}/request)", plan, sink, meter, submit)


async def smtp_credentials(root: Path, tenant: str) -> tuple[str, str]:
    """``mailgate smtp-credentials create``; its last line is ``USERNAME PASSWORD``."""
    command = ("--data-dir", str(root / "mailgate"), "smtp-credentials", "create", "--tenant", tenant)
    status, output = await run_cli(*command, root=root)
    lines = output.strip().splitlines()
    if status != 0 or not lines or len(lines[-1].split()) != 2:
        raise RuntimeError(f"mailgate smtp-credentials create failed ({status}): {output[-500:]}")
    username, password = lines[-1].split()
    return username, password


def smtp_message(i: int, text: str) -> bytes:
    head = f"From: {SENDER}\r\nTo: {RECIPIENT}\r\nSubject: bench {i}\r\nMessage-ID: <bench-{i}@source.test>\r\n\r\n"
    return (head + text.replace("\n", "\r\n")).encode()


async def submission_leg(plan: Plan, port: int, credentials: tuple[str, str], sink: PostfixSink, meter: Meter) -> Leg:
    """``concurrency`` sessions, like smtp-source's: each connects, does STARTTLS (the server's
    self-signed certificate is not verified) and AUTH, then sends its share over the one connection."""
    text = plan.payload()
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    numbers = iter(range(plan.n))

    options = SessionOptions(
        host="127.0.0.1",
        port=port,
        tls="starttls",
        tls_context=context,
        timeout=60,
        helo_name="bench.test",
        username=credentials[0],
        password=credentials[1],
    )

    async def session() -> None:
        client = await open_session(options)
        try:
            for i in numbers:
                outcomes = await transact(
                    client,
                    SENDER,
                    [RECIPIENT],
                    smtp_message(i, text),
                    reset=False,
                    where=options.where,
                    reply_timeout=options.timeout,
                )
                if not isinstance(outcomes[RECIPIENT], Delivered):
                    raise RuntimeError(f"submission refused the message: {outcomes[RECIPIENT]}")
            await quit_quietly(client, 5.0)
        finally:
            client.close()

    async def submit() -> None:
        await asyncio.gather(*(session() for _ in range(plan.concurrency)))

    return await timed_leg("mailgate SMTP submission", plan, sink, meter, submit)


async def mailgate_legs(plan: Plan, root: Path, meter: Meter) -> tuple[Leg, list[Leg]]:
    """The REST leg, then the batch REST leg and (when the CLI has it) the SMTP submission leg, on one
    server and one sink."""
    submission_port = free_port() if await submission_supported() else None
    async with PostfixSink() as sink:
        roles = "api" + (",submission" if submission_port is not None else "")
        server = await Server.start(root, submission_port, roles)
        worker: WorkerProcess | None = None
        try:
            worker = await WorkerProcess.start(root)
            err.print(f"mailgate serve: pid {server.proc.pid}, {server.base_url}, log {root / 'serve.log'}")
            tenant, key = await configure(server, sink.port)
            rest = await rest_leg(plan, server, key, sink, meter)
            others = [await rest_batch_leg(plan, server, key, sink, meter)]
            if submission_port is not None:
                credentials = await smtp_credentials(root, tenant)
                others.append(await submission_leg(plan, submission_port, credentials, sink, meter))
            return rest, others
        finally:
            if worker is not None:
                await worker.stop()
            await server.stop()


# ----- report -----


def report(plan: Plan, legs: list[Leg], anchor: Leg) -> Table:
    table = Table(title=f"outbound: {plan.n} messages of {plan.size} bytes, concurrency {plan.concurrency}")
    table.add_column("leg")
    table.add_column("accepted in", justify="right")
    table.add_column("delivered in", justify="right")
    table.add_column("msgs/s", justify="right")
    table.add_column("vs postfix", justify="right")
    for leg in legs:
        table.add_row(
            leg.name,
            f"{leg.accepted_s:.2f} s",
            f"{leg.delivered_s:.2f} s",
            f"{leg.rate:.1f}",
            f"{leg.rate / anchor.rate:.2f}",
        )
    return table


async def main(plan: Plan, base_dir: str | None) -> None:
    this = asyncio.current_task()
    assert this is not None
    # SIGTERM (e.g. a CI timeout) cancels like Ctrl-C does, so every finally block still stops its server
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, this.cancel)
    out = Console(soft_wrap=True)
    out.print(
        f"mailgate outbound bench: Python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"N={plan.n}, {plan.size}-byte messages, concurrency {plan.concurrency}, 127.0.0.1 only; "
        "mailgate as two processes on one SQLite data dir (api+submission, worker)"
    )
    with (
        tempfile.TemporaryDirectory(prefix="mailgate-outbound-", dir=base_dir) as tmp,
        Progress(
            TextColumn("{task.description:<26}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
        ) as progress,
    ):
        meter = Meter(progress)
        anchor = await postfix_leg(plan, meter)
        rest, others = await mailgate_legs(plan, Path(tmp), meter)
    out.print(report(plan, [anchor, rest, *others], anchor))
    if not any("SMTP" in leg.name for leg in others):
        print("smtp submission: not available")
    print(f"ratio mailgate/postfix = {rest.rate / anchor.rate:.2f}", flush=True)


def cli() -> None:
    parser = argparse.ArgumentParser(description="mailgate outbound rate against Postfix relaying the same mail")
    parser.add_argument("--n", type=int, default=20000, help="messages per leg (default 20000)")
    parser.add_argument(
        "--concurrency", type=int, default=32, help="parallel SMTP sessions / HTTP requests (default 32)"
    )
    parser.add_argument("--size", type=int, default=1000, help="message body bytes (default 1000)")
    parser.add_argument("--dir", default=None, help="where to create the temp data dir (default: system temp dir)")
    args = parser.parse_args()
    if args.n < 1 or args.concurrency < 1 or args.size < 1:
        parser.error("--n, --concurrency and --size must be positive")
    try:
        loadgen.on_uvloop(main(Plan(args.n, args.concurrency, args.size), args.dir))
    except PostfixUnavailable as exc:
        sys.exit(f"outbound bench: {exc}")
    except (KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C or SIGTERM, after every server stopped
        sys.exit("outbound bench: interrupted")


if __name__ == "__main__":
    cli()
