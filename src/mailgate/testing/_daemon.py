"""The lifecycle the test daemons (rspamd, spamd) share: launched on a free loopback port in a temp
dir of their own, ready when they answer their protocol's ping, stopped by PID with their process group,
and their log at hand for a failing test."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar, Self

_START_ATTEMPTS = 3  # a free port picked here can be taken by someone else before the daemon binds it


class LoopbackDaemon(ABC):
    """Subclasses say how to find the program, launch it and tell it is ready."""

    name: ClassVar[str]
    log_files: ClassVar[tuple[str, ...]]  # under ``directory``, e.g. ("console.log", "spamd.log")

    def __init__(self) -> None:
        self.port = 0
        self.directory: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @abstractmethod
    def find_program(self) -> str:
        """The daemon's executable; raises the subclass's "unavailable" error naming the package."""

    @abstractmethod
    def launch(self, program: str, port: int) -> None:
        """Start the daemon on ``port``, setting ``directory`` and ``_proc``."""

    @abstractmethod
    def ready(self, timeout: float) -> bool:
        """Whether it answered before ``timeout``; False when it exited first."""

    def log(self) -> str:
        if self.directory is None:
            return ""
        parts = []
        for name in self.log_files:
            with contextlib.suppress(FileNotFoundError):
                parts.append((self.directory / name).read_text(errors="replace"))
        return "\n".join(parts)

    def start(self, timeout: float = 60.0) -> None:
        program = self.find_program()
        if self._proc is not None:
            raise RuntimeError(f"{self.name} is already running")
        try:
            for attempt in range(_START_ATTEMPTS):
                self.launch(program, free_port())
                if self.ready(timeout):
                    return
                failure = self.log().strip()[-3000:]
                self.stop()
                if "in use" not in failure or attempt == _START_ATTEMPTS - 1:
                    raise RuntimeError(f"{self.name} did not start:\n{failure}")
        except BaseException:
            self.stop()
            raise

    def popen(self, argv: list[str], directory: Path) -> None:
        with open(directory / "console.log", "wb") as console:
            self._proc = subprocess.Popen(  # noqa: S603 - our own argv, no shell
                argv,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                cwd=directory,
                start_new_session=True,
            )

    def exited(self) -> bool:
        assert self._proc is not None
        return self._proc.poll() is not None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM to the main process, which stops its workers; SIGKILL to the whole process group
        (the daemon started in a session of its own) if anything is left after ``timeout``."""
        proc, self._proc = self._proc, None
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        directory, self.directory = self.directory, None
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
