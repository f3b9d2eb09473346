"""Real Postfix on loopback, for tests and benchmarks: a throwaway relay instance, and Postfix's own
``smtp-sink`` and ``smtp-source`` load tools.

Connectors are checked against our own aiosmtpd sink elsewhere; that proves they agree with
aiosmtpd. Postfix is what most relays in the field are, so the same connectors must also agree with
it, and the outbound benchmark needs an anchor that is not written in Python. Usage::

    async with PostfixSink() as sink, PostfixRelay(next_hop_port=sink.port) as relay:
        await smtp_source(relay.port, messages=100, sessions=8)   # or point a connector at relay.port
        await sink.wait_for(100, timeout=30)

Each ``PostfixRelay`` is a separate Postfix instance (``postfix -c DIR``) with its own configuration,
queue and data directories in a fresh temp dir, so several run side by side and none touches the
system's Postfix. Running one needs root (Postfix's master starts as root and drops to the
``postfix`` user) and the Debian package ``postfix`` (``scripts/ensure-services.sh`` installs it);
without them, ``PostfixUnavailable`` says why, and tests turn it into a skip. ``smtp-sink`` and
``smtp-source`` need only the package.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

# Postfix's programs live in sbin, which a non-root PATH often lacks.
_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/sbin"])
_START_ATTEMPTS = 3  # a free port picked here can be taken by someone else before the server binds it


class PostfixUnavailable(RuntimeError):
    """Postfix cannot run here (not root, not installed, not Linux); the message says which."""


def find_program(name: str) -> str:
    """The absolute path of one of Postfix's programs, or PostfixUnavailable naming the package."""
    if not sys.platform.startswith("linux"):
        raise PostfixUnavailable(f"Postfix's {name} runs only on Linux here")
    path = shutil.which(name, path=_SEARCH_PATH)
    if path is None:
        raise PostfixUnavailable(
            f"{name} not found: install the Debian package postfix (scripts/ensure-services.sh does, as root)"
        )
    return path


def require_root() -> None:
    if os.geteuid() != 0:
        raise PostfixUnavailable("a Postfix instance needs root: its master starts as root and drops privileges")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _accepting(port: int, give_up: Callable[[], bool], timeout: float) -> None:  # noqa: ASYNC109 (a bound, not a cancel scope)
    """Wait until 127.0.0.1:port accepts a connection; ``give_up`` says the server died meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if give_up():
                raise RuntimeError(f"the server for 127.0.0.1:{port} exited before it accepted connections") from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing accepted connections on 127.0.0.1:{port} within {timeout:g}s") from None
            await asyncio.sleep(0.02)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return


async def _run(argv: Sequence[str], timeout: float) -> tuple[int, str]:  # noqa: ASYNC109
    """Run a command to completion; its exit status and its stdout and stderr together."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True
    )
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, output.decode(errors="replace")


async def _terminate(proc: asyncio.subprocess.Process, timeout: float = 5.0) -> None:  # noqa: ASYNC109
    """SIGTERM the process group, SIGKILL it if it lingers."""
    if proc.returncode is None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                await asyncio.wait_for(proc.wait(), timeout)
                break
            except TimeoutError:
                continue


# ----- a Postfix relay instance -----

# main.cf: Postfix's compiled-in defaults, except for what a private instance on loopback needs. Every
# line here is such a change; performance settings (process limits, concurrency, connection caching,
# in_flow_delay, queue timers) keep their defaults so a benchmark meets Postfix as it ships.
_MAIN_CF = """\
# a throwaway relay instance made by mailgate.testing.postfix; every line differs from the defaults
# modern defaults without backwards-compatibility warnings
compatibility_level = 3.6
# its own queue and state, so instances run side by side
queue_directory = {dir}/queue
data_directory = {dir}/data
# loopback only, IPv4 like the rest of the harness
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
# fixed names: no hostname lookup, and a name per instance so that chained instances do not take
# each other for themselves ("mail for ... loops back to myself")
myhostname = relay-{port}.test.invalid
mydomain = test.invalid
# a relay for loopback clients
mynetworks = 127.0.0.0/8
# no local delivery: no domain is local, and a local address would be refused rather than delivered
mydestination =
local_recipient_maps =
local_transport = error:5.1.1 local delivery is disabled on this relay
alias_maps =
alias_database =
# everything goes to the next hop, an address, so no DNS lookups at all
relayhost = [127.0.0.1]:{next_hop_port}
smtp_dns_support_level = disabled
# a log file of its own instead of syslog (which containers lack); postlogd writes it
maillog_file = {dir}/maillog
maillog_file_prefixes = {dir}
"""

# master.cf: upstream Postfix's stock services (chroot off, its upstream default; Debian's packaged file
# turns it on, which would need a copy of /etc inside the queue directory), with the smtpd listener on
# our loopback port instead of port 25, and without the pipe(8) transports nothing here uses.
_MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command + args
127.0.0.1:{port} inet n -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PostfixRelay:
    """A Postfix instance that relays everything loopback clients send it to ``[127.0.0.1]:next_hop_port``.

    ``main_cf`` adds or overrides main.cf parameters, e.g. to make it refuse a domain::

        refuse = {"smtpd_recipient_restrictions": "check_recipient_access inline:{refused.test=REJECT}"}
        PostfixRelay(next_hop_port=sink.port, main_cf=refuse)

    ``start()`` returns once the smtpd port (``self.port``) accepts connections; ``stop()`` stops the
    master and every process it started and removes the directory. ``base_dir`` is where the temp
    dir goes (default: the system temp dir); Postfix's socket paths under it must stay short.
    """

    def __init__(
        self,
        *,
        next_hop_port: int,
        main_cf: Mapping[str, str] | None = None,
        base_dir: str | None = None,
    ) -> None:
        self.next_hop_port = next_hop_port
        self.main_cf = dict(main_cf or {})
        self.base_dir = base_dir
        self.port = 0
        self.directory: Path | None = None
        self._postfix = ""
        self._master_pid: int | None = None

    @property
    def config_dir(self) -> Path:
        if self.directory is None:
            raise RuntimeError("the relay is not started")
        return self.directory / "etc"

    def maillog(self) -> str:
        """Postfix's log so far: what to read when a test fails."""
        if self.directory is None:
            return ""
        try:
            return (self.directory / "maillog").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    async def start(self, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        require_root()
        self._postfix = find_program("postfix")
        if self.directory is not None:
            raise RuntimeError("the relay is already started")
        try:
            for attempt in range(_START_ATTEMPTS):
                self._prepare(free_port())
                status, output = await _run([self._postfix, "-c", str(self.config_dir), "start"], timeout)
                if status == 0:
                    break
                failure = f"{output.strip()}\n{self.maillog().strip()}"
                await self._remove()
                # the port was taken between picking and binding it: try another; anything else is for real
                if "in use" not in failure or attempt == _START_ATTEMPTS - 1:
                    raise RuntimeError(f"Postfix did not start:\n{failure}")
            self._master_pid = self._read_master_pid()
            await _accepting(self.port, lambda: not self._alive(), timeout)
        except BaseException:
            await self.stop()
            raise

    def _prepare(self, port: int) -> None:
        directory = Path(tempfile.mkdtemp(prefix="pf-", dir=self.base_dir))
        directory.chmod(0o755)  # Postfix's daemons run as the postfix user and must reach the queue
        self.directory, self.port = directory, port
        (directory / "etc").mkdir()
        (directory / "queue").mkdir()
        data = directory / "data"
        data.mkdir()
        shutil.chown(data, user="postfix")
        main_cf = _MAIN_CF.format(dir=directory, port=port, next_hop_port=self.next_hop_port)
        main_cf += "".join(f"{key} = {value}\n" for key, value in self.main_cf.items())
        (directory / "etc" / "main.cf").write_text(main_cf)
        (directory / "etc" / "master.cf").write_text(_MASTER_CF.format(port=port))

    def _read_master_pid(self) -> int | None:
        try:
            return int((self.config_dir.parent / "queue" / "pid" / "master.pid").read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def _alive(self) -> bool:
        if self._master_pid is None:
            return False
        try:
            os.kill(self._master_pid, 0)
        except ProcessLookupError:
            return False
        return True

    async def stop(self, timeout: float = 15.0) -> None:  # noqa: ASYNC109
        """SIGTERM to the master, which is all ``postfix stop`` does (but then polls only once a second);
        the master stops its children and exits. Whatever is left after ``timeout`` is SIGKILLed: the
        master and its children share one process group, as the master starts its own session."""
        if self.directory is None:
            return
        try:
            if self._master_pid is None:  # start() was interrupted: the master may be up all the same
                self._master_pid = self._read_master_pid()
            if self._master_pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self._master_pid, signal.SIGTERM)
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline:
                    if not self._alive():
                        break
                    await asyncio.sleep(0.02)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._master_pid, signal.SIGKILL)
        finally:
            self._master_pid = None
            await self._remove()

    async def _remove(self) -> None:
        directory, self.directory = self.directory, None
        if directory is not None:
            await asyncio.to_thread(shutil.rmtree, directory, ignore_errors=True)

    async def __aenter__(self) -> PostfixRelay:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


# ----- smtp-sink -----

_COUNTER = re.compile(rb"mesg=(\d+)")


class PostfixSink:
    """Postfix's ``smtp-sink`` on a free loopback port: takes every message and throws it away, in C,
    so it is never the bottleneck of a benchmark. ``received`` counts the messages whose final dot it
    has acknowledged (from its ``-c`` counters on stdout).

    ``options`` are extra smtp-sink flags (see ``man smtp-sink``: e.g. ``["-Q", "RCPT"]`` to answer
    RCPT with 421). Runs without root; as root it drops to ``nobody`` once its socket is open.
    """

    def __init__(
        self, *, hostname: str = "sink.test.invalid", options: Sequence[str] = (), backlog: int = 1024
    ) -> None:
        self.hostname = hostname
        self.options = list(options)
        self.backlog = backlog
        self.port = 0
        self.received = 0
        self._errors = b""
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    async def start(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        program = find_program("smtp-sink")
        if self._proc is not None:
            raise RuntimeError("the sink is already running")
        privileges = ["-u", "nobody"] if os.geteuid() == 0 else []
        for attempt in range(_START_ATTEMPTS):
            self.port = free_port()
            argv = [program, "-c", "-h", self.hostname, *privileges, *self.options]
            proc = await asyncio.create_subprocess_exec(
                *argv,
                f"127.0.0.1:{self.port}",
                str(self.backlog),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
            self._proc = proc
            self._reader = asyncio.create_task(self._read(proc), name=f"smtp-sink :{self.port} counter")
            try:
                await _accepting(self.port, self._exited, timeout)
                return
            except RuntimeError:
                await self.stop()
                error = self._errors.decode(errors="replace").strip()
                if "in use" not in error or attempt == _START_ATTEMPTS - 1:
                    raise RuntimeError(f"smtp-sink did not start: {error}") from None
            except BaseException:
                await self.stop()
                raise

    def _exited(self) -> bool:
        return self._proc is None or self._proc.returncode is not None

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        """smtp-sink rewrites one status line (``sess=N quit=N mesg=N``, ended by CR) after every event;
        anything else it prints is an error message, kept (its end) for the exception."""
        assert proc.stdout is not None
        pending = b""
        while chunk := await proc.stdout.read(65536):
            *lines, pending = (pending + chunk).split(b"\r")
            for line in lines:
                if match := _COUNTER.search(line):
                    self.received = int(match.group(1))
                else:
                    self._errors = (self._errors + line)[-2000:]
            self._changed.set()
        self._errors = (self._errors + pending)[-2000:]
        self._changed.set()  # wake waiters: the sink exited

    async def wait_for(
        self,
        n: int,
        timeout: float = 30.0,  # noqa: ASYNC109 (a test helper's bound)
        progress: Callable[[int], None] | None = None,
    ) -> None:
        """Until ``n`` messages arrived; ``progress`` gets the count whenever it changes."""
        try:
            async with asyncio.timeout(timeout):
                while self.received < n:
                    if self._exited():
                        raise RuntimeError(f"smtp-sink exited after {self.received} of {n} messages")
                    self._changed.clear()
                    await self._changed.wait()
                    if progress is not None:
                        progress(self.received)
        except TimeoutError:
            raise TimeoutError(f"{self.received} of {n} messages reached smtp-sink within {timeout:g}s") from None

    async def stop(self) -> None:
        proc, self._proc = self._proc, None
        reader, self._reader = self._reader, None
        if proc is not None:
            await _terminate(proc)
        if reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(reader, 5)

    async def __aenter__(self) -> PostfixSink:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


# ----- smtp-source -----


async def smtp_source(
    port: int,
    *,
    messages: int,
    sessions: int = 1,
    size: int = 1000,
    mail_from: str = "source@source.test",
    rcpt_to: str = "sink@sink.test",
    reuse_connections: bool = True,
    timeout: float = 120.0,  # noqa: ASYNC109
) -> None:
    """Send ``messages`` messages of ``size`` payload bytes to 127.0.0.1:port with Postfix's
    ``smtp-source`` over ``sessions`` parallel sessions; ``reuse_connections`` keeps each session's
    connection for its next message (``-d``), as a client with a connection pool would.

    Raises RuntimeError with smtp-source's output if it fails (it stops at the first refusal)."""
    argv = [find_program("smtp-source"), "-s", str(sessions), "-m", str(messages), "-l", str(size)]
    argv += ["-f", mail_from, "-t", rcpt_to, "-M", "source.test.invalid"]
    if reuse_connections:
        argv.append("-d")
    status, output = await _run([*argv, f"127.0.0.1:{port}"], timeout)
    if status != 0:
        raise RuntimeError(f"smtp-source exited with status {status}: {output.strip()[-2000:]}")
