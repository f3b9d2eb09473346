"""A real rspamd on a free loopback port, for tests: the Debian package's configuration (/etc/rspamd)
with private local.d and override.d directories, state and log, so no local configuration of the
system applies and nothing is written outside its temp dir and the cache below.

Usage::

    with DnsServer(zone) as dns, RspamdServer(nameserver=dns.servers[0]) as rspamd:
        scorer = SpamScorer(rspamd_url=rspamd.url)

rspamd looks up the client, the HELO name and the sender's domain for every message; with the
system's resolver on an offline machine each lookup fails, and failures score (a sender domain that
"does not resolve" is 1.5 points), so tests give it a ``DnsServer`` that knows their domains.

Only the normal (scanner) worker runs; the controller, proxy and fuzzy workers are off. Most of a
first start (~14 s on two cores) is rspamd compiling its hyperscan databases, the public-suffix list
above all; they are cached in ``cache_dir`` (by default one directory under the system temp dir,
shared by every instance), which brings later starts to about a second.

Needs the Debian package ``rspamd`` (``scripts/ensure-services.sh`` installs it). As root, rspamd's
workers drop to the ``_rspamd`` user the package creates. Without the program, ``RspamdUnavailable``
says why, and tests turn it into a skip. The helper is synchronous so a module-scoped fixture can
start it once for tests running in any event loop.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from mailgate.testing._daemon import LoopbackDaemon

DEFAULT_CACHE = Path(tempfile.gettempdir()) / "mailgate-rspamd-cache"
_USER = "_rspamd"  # the package's system user; root-run workers drop to it


class RspamdUnavailable(RuntimeError):
    """rspamd cannot run here; the message says why."""


class RspamdServer(LoopbackDaemon):
    """One rspamd instance; ``start()`` returns once ``/ping`` answers, ``stop()`` ends it by PID and
    removes its directory. ``log()`` is rspamd's log so far, for a failing test."""

    name = "rspamd"
    log_files = ("console.log", "rspamd.log")

    def __init__(self, *, cache_dir: Path | None = DEFAULT_CACHE, nameserver: tuple[str, int] | None = None) -> None:
        """``cache_dir=None`` compiles everything afresh in the instance's own directory;
        ``nameserver`` (host, port) replaces the system's resolver."""
        self.cache_dir = cache_dir
        self.nameserver = nameserver
        super().__init__()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0) -> None:
        super().start(timeout)

    def launch(self, program: str, port: int) -> None:
        directory = Path(tempfile.mkdtemp(prefix="rspamd-"))
        self.directory, self.port = directory, port
        override, local = directory / "override.d", directory / "local.d"
        override.mkdir()
        local.mkdir()
        (override / "worker-normal.inc").write_text(f'bind_socket = "127.0.0.1:{port}";\ncount = 1;\n')
        for worker in ("controller", "proxy", "fuzzy"):
            (override / f"worker-{worker}.inc").write_text("count = -1;\n")
        cache = self.cache_dir or directory
        if cache.is_symlink():  # it is chowned below, and lives in a world-writable directory
            raise RuntimeError(f"{cache} is a symbolic link; refusing to use it as rspamd's cache")
        cache.mkdir(mode=0o755, parents=True, exist_ok=True)
        options = f'hs_cache_dir = "{cache}";\n'
        if self.nameserver is not None:
            host, port = self.nameserver
            options += f'dns {{\n  nameserver = ["{host}:{port}"];\n}}\n'
        (local / "options.inc").write_text(options)
        user: list[str] = []
        if os.geteuid() == 0:
            user = ["-u", _USER, "-g", _USER]
            directory.chmod(0o755)
            for path in (directory, cache):
                shutil.chown(path, user=_USER, group=_USER)
        paths = [f"--var={var}={directory}" for var in ("LOCAL_CONFDIR", "DBDIR", "RUNDIR", "LOGDIR")]
        self.popen([program, "-f", *user, "-c", "/etc/rspamd/rspamd.conf", *paths], directory)

    def ready(self, timeout: float) -> bool:
        """Whether ``/ping`` answered before ``timeout``; False when rspamd exited first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.exited():
                return False
            with contextlib.suppress(OSError, http.client.HTTPException):
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                try:
                    connection.request("GET", "/ping")
                    if connection.getresponse().read().strip() == b"pong":
                        return True
                finally:
                    connection.close()
            time.sleep(0.05)
        raise TimeoutError(f"rspamd did not answer /ping within {timeout:g}s:\n{self.log()[-3000:]}")

    def find_program(self) -> str:
        return _find_program()


def _find_program() -> str:
    if not sys.platform.startswith("linux"):
        raise RspamdUnavailable("the rspamd helper runs only on Linux")
    path = shutil.which("rspamd")
    if path is None or not Path("/etc/rspamd/rspamd.conf").exists():
        raise RspamdUnavailable(
            "rspamd not found: install the Debian package rspamd (scripts/ensure-services.sh does, as root)"
        )
    return path
