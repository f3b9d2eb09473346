"""A real SpamAssassin spamd on a free loopback port, for tests.

Usage::

    with SpamdServer() as spamd:
        scorer = SpamScorer(spamd=("127.0.0.1", spamd.port))

It runs with local tests only (``-L``: no DNS, no network rules), no per-user configuration (``-x``)
and no Bayes, so a score depends on the message alone. Its site configuration is a private copy of
the system's ``.pre`` files (which load the plugins; without them spamd cannot scan) plus our own
``local.cf``, so a local.cf of the system does not change the scores; the rules themselves are the
package's (``/usr/share/spamassassin``, or sa-update's when it ran).

Needs the Debian packages ``spamassassin`` and ``spamd`` (``scripts/ensure-services.sh`` installs
them). As root, spamd's children run as ``nobody``. Without the program, ``SpamdUnavailable`` says
why, and tests turn it into a skip. Synchronous, like ``mailgate.testing.rspamd``, so that a
module-scoped fixture can start it once for tests in any event loop.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

from mailgate.testing._daemon import LoopbackDaemon

_SYSTEM_SITE = Path("/etc/spamassassin")
_LOCAL_CF = """\
# written by mailgate.testing.spamd: scores that depend on the message alone
use_bayes 0
bayes_auto_learn 0
"""


class SpamdUnavailable(RuntimeError):
    """spamd cannot run here; the message says why."""


class SpamdServer(LoopbackDaemon):
    """One spamd; ``start()`` returns once it answers PING, ``stop()`` ends it by PID (its children
    with it) and removes its directory. ``log()`` is spamd's log so far, for a failing test."""

    name = "spamd"
    log_files = ("console.log", "spamd.log")

    def __init__(self, *, children: int = 2) -> None:
        self.children = children
        super().__init__()

    def launch(self, program: str, port: int) -> None:
        directory = Path(tempfile.mkdtemp(prefix="spamd-"))
        directory.chmod(0o755)  # the children, as nobody, read the site configuration
        self.directory, self.port = directory, port
        home, site = directory / "home", directory / "site"
        home.mkdir()
        site.mkdir()
        for pre in _SYSTEM_SITE.glob("*.pre"):
            shutil.copy(pre, site)
        (site / "local.cf").write_text(_LOCAL_CF)
        user: list[str] = []
        if os.geteuid() == 0:
            user = ["-u", "nobody"]
            shutil.chown(home, user="nobody")
        argv = [
            program,
            f"--listen=127.0.0.1:{port}",
            "--local",
            "--nouser-config",
            *user,
            f"--helper-home-dir={home}",
            f"--siteconfigpath={site}",
            f"--syslog={directory / 'spamd.log'}",
            f"--max-children={self.children}",
            "--min-children=1",
            "--min-spare=1",
            f"--max-spare={self.children}",
        ]
        self.popen(argv, directory)

    def ready(self, timeout: float) -> bool:
        """Whether spamd answered PING before ``timeout``; False when it exited first. A bare TCP
        connect is not enough: the parent listens before its children can scan."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.exited():
                return False
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
                s.sendall(b"PING SPAMC/1.5\r\n\r\n")
                if b"PONG" in s.recv(100):
                    return True
            time.sleep(0.05)
        raise TimeoutError(f"spamd did not answer PING within {timeout:g}s:\n{self.log()[-3000:]}")

    def find_program(self) -> str:
        return _find_program()


def _find_program() -> str:
    if not sys.platform.startswith("linux"):
        raise SpamdUnavailable("the spamd helper runs only on Linux")
    path = shutil.which("spamd", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"]))
    if path is None or not _SYSTEM_SITE.is_dir():
        raise SpamdUnavailable(
            "spamd not found: install the Debian packages spamassassin and spamd "
            "(scripts/ensure-services.sh does, as root)"
        )
    return path
