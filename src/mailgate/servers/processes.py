"""Worker processes that serve a listener beside the node's own process, on the same socket.

A Python process runs its event loop on one core, and the MX's work per message (SMTP, parsing, the
sender checks, sealing) is CPU; more processes are how it uses the others. The node binds the socket;
each worker is a fresh interpreter (spawned: none of the node's loop, threads or database connections is
inherited) that accepts on it, so the kernel hands a connection to whichever process is waiting first,
and a busy one takes fewer.

A worker talks to the node over a socket pair, in framed pickles both ways (both ends are our own
processes, and the pair is inherited, never bound), and can call the node's handlers (``Link.call``):
what only one process should do, such as write to SQLite, a worker asks the node to do. The channel is an
asyncio protocol: a message costs one buffered write, and reading never blocks the loop. End of file
means the other side is gone (even killed): the worker then stops. A worker that exits unasked is logged
and started again after a pause that doubles, up to a minute, while it keeps failing.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing
import pickle
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from multiprocessing.context import SpawnContext, SpawnProcess
from typing import Any, cast

from mailgate.observability.logging import get_logger

log = get_logger("mailgate.processes")

Message = tuple[Any, ...]
Handler = Callable[[Any], Awaitable[Any]]
CONTEXT: SpawnContext = multiprocessing.get_context("spawn")
RESTART_FIRST = 1.0  # seconds before the first restart of a worker that exited unasked
RESTART_MAX = 60.0
HEALTHY_AFTER = 60.0  # a worker that ran this long before exiting starts again after RESTART_FIRST
REAP_SECONDS = 2.0  # how long an exited worker's last messages may take to arrive
_HEADER = 4  # bytes of a frame's length, big-endian


class NodeGone(ConnectionError):
    """The node process went away before it answered a worker's call."""


class _Channel(asyncio.Protocol):
    """Length-prefixed pickles over a stream socket, both ways."""

    def __init__(self, on_message: Callable[[Message], None]) -> None:
        self._on_message = on_message
        self._buffer = bytearray()
        self._transport: asyncio.WriteTransport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.WriteTransport, transport)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start = 0
        while len(buffer) - start >= _HEADER:
            size = int.from_bytes(buffer[start : start + _HEADER], "big")
            end = start + _HEADER + size
            if len(buffer) < end:
                break
            message = pickle.loads(buffer[start + _HEADER : end])  # noqa: S301  (from our own process)
            start = end
            self._on_message(message)
        del buffer[:start]

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if not self.closed.done():
            self.closed.set_result(None)

    def send(self, message: Message) -> bool:
        """Queue ``message``; False when the other side is gone."""
        if self._transport is None or self._transport.is_closing():
            return False
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        self._transport.write(len(data).to_bytes(_HEADER, "big") + data)
        return True

    def close(self) -> None:
        """Close once what was sent is written (``closed`` then resolves)."""
        if self._transport is not None:
            self._transport.close()


async def _open_channel(sock: socket.socket, on_message: Callable[[Message], None]) -> _Channel:
    channel = _Channel(on_message)
    await asyncio.get_running_loop().create_connection(lambda: channel, sock=sock)
    return channel


class Link:
    """A worker's end of its channel to the node."""

    def __init__(self, index: int, sock: socket.socket) -> None:
        self.index = index
        self._sock = sock
        self._channel: _Channel | None = None
        self._calls: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count()

    async def open(self, on_message: Callable[[Message], None], on_lost: Callable[[], None]) -> None:
        """Hear the node's messages on the running loop; ``on_lost`` once the node is gone."""

        def received(message: Message) -> None:
            if message[0] == "reply":
                self._answered(*message[1:])
            else:
                on_message(message)

        channel = self._channel = await _open_channel(self._sock, received)

        def lost(_: asyncio.Future[None]) -> None:
            for future in self._calls.values():
                if not future.done():
                    future.set_exception(NodeGone("the node process is gone"))
            on_lost()

        channel.closed.add_done_callback(lost)

    def send(self, message: Message) -> None:
        """Best effort: a node that is gone has no use for it (the worker is stopping then)."""
        if self._channel is not None:
            self._channel.send(message)

    async def call(self, kind: str, payload: Any) -> Any:
        """The result of the node's ``kind`` handler for ``payload``; its exception is raised here, and
        NodeGone when the node is gone first."""
        call_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self._channel is None or not self._channel.send(("call", call_id, kind, payload)):
            raise NodeGone("the node process is gone")
        self._calls[call_id] = future
        try:
            return await future
        finally:
            self._calls.pop(call_id, None)

    def _answered(self, call_id: int, ok: bool, value: Any) -> None:
        future = self._calls.get(call_id)
        if future is None or future.done():  # its caller gave up (cancelled)
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    async def close(self) -> None:
        """Close once every message sent is written (a last report must not be lost on exit)."""
        if self._channel is not None:
            self._channel.close()
            await self._channel.closed


def _worker_entry(target: Callable[..., None], index: int, sock: socket.socket, args: tuple[Any, ...]) -> None:
    # Ctrl-C in a terminal reaches the whole process group: the node stops its workers itself, in order
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    target(Link(index, sock), *args)


class _Worker:
    def __init__(self, index: int) -> None:
        self.index = index
        self.process: SpawnProcess | None = None
        self.channel: _Channel | None = None
        self.started = 0.0
        self.delay = RESTART_FIRST


class WorkerPool:
    """``count`` processes, numbered from 1 (the node's own process is 0), each running
    ``target(link, *args)``; ``target`` must be a module-level function and ``args`` picklable (sockets
    and shared memory are passed to the child as they are). ``handlers`` answer the workers' calls."""

    def __init__(
        self,
        name: str,
        target: Callable[..., None],
        args: tuple[Any, ...],
        count: int,
        *,
        on_message: Callable[[int, Message], None],
        on_exit: Callable[[int], None],
        handlers: dict[str, Handler] | None = None,
    ) -> None:
        self.name = name
        self._target = target
        self._args = args
        self._on_message = on_message
        self._on_exit = on_exit
        self._handlers = handlers or {}
        self._workers = [_Worker(i) for i in range(1, count + 1)]
        self._stopping = False
        self._restarts: set[asyncio.TimerHandle] = set()
        self._calls: set[asyncio.Task[None]] = set()
        self._none_left = asyncio.Event()  # set while stopping, once every worker has exited

    async def start(self) -> None:
        for worker in self._workers:
            await self._spawn(worker)

    @property
    def pids(self) -> list[int]:
        """The live workers' process ids."""
        return [w.process.pid for w in self._workers if w.process is not None and w.process.pid is not None]

    def send_all(self, message: Message) -> None:
        for worker in self._workers:
            if worker.channel is not None:
                worker.channel.send(message)

    async def _spawn(self, worker: _Worker) -> None:
        ours, theirs = socket.socketpair()
        process = CONTEXT.Process(
            target=_worker_entry,
            args=(self._target, worker.index, theirs, self._args),
            name=f"mailgate-{self.name}-{worker.index}",
        )
        try:
            process.start()
        finally:
            theirs.close()  # the child has its own copy; ours then sees end of file when the child is gone
        worker.process, worker.started = process, time.monotonic()
        worker.channel = await _open_channel(ours, lambda message: self._received(worker, message))
        asyncio.get_running_loop().add_reader(process.sentinel, self._exited, worker)
        log.info("worker started", pool=self.name, worker=worker.index, pid=process.pid)

    def _received(self, worker: _Worker, message: Message) -> None:
        if message[0] == "call":
            task = asyncio.create_task(self._answer(worker, *message[1:]))
            self._calls.add(task)
            task.add_done_callback(self._calls.discard)
        else:
            self._on_message(worker.index, message)

    async def _answer(self, worker: _Worker, call_id: int, kind: str, payload: Any) -> None:
        channel = worker.channel
        handler = self._handlers.get(kind)
        reply: Message
        try:
            if handler is None:
                raise LookupError(f"the node has no handler for {kind!r}")
            reply = ("reply", call_id, True, await handler(payload))
        except Exception as exc:
            try:
                pickle.dumps(exc)
            except Exception:
                exc = RuntimeError(repr(exc))
            reply = ("reply", call_id, False, exc)
        if channel is not None and worker.channel is channel:  # the same worker is still there to hear it
            channel.send(reply)

    def _exited(self, worker: _Worker) -> None:
        assert worker.process is not None
        asyncio.get_running_loop().remove_reader(worker.process.sentinel)
        task = asyncio.ensure_future(self._reap(worker))
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)

    async def _reap(self, worker: _Worker) -> None:
        """A worker exited: hear what it sent before it went (its end of file), then let it go."""
        process, channel = worker.process, worker.channel
        assert process is not None
        if channel is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(channel.closed), REAP_SECONDS)
            channel.close()
        process.join()
        worker.process = worker.channel = None
        self._on_exit(worker.index)
        if self._stopping:
            if not self._live():
                self._none_left.set()
            return
        lived = time.monotonic() - worker.started
        worker.delay = RESTART_FIRST if lived >= HEALTHY_AFTER else min(worker.delay * 2, RESTART_MAX)
        log.error(
            "worker exited unasked",
            pool=self.name,
            worker=worker.index,
            pid=process.pid,
            exitcode=process.exitcode,
            restart_in=worker.delay,
        )

        def restart() -> None:
            self._restarts.discard(handle)
            if not self._stopping:
                task = asyncio.ensure_future(self._spawn(worker))
                task.add_done_callback(self._spawned)

        handle = asyncio.get_running_loop().call_later(worker.delay, restart)
        self._restarts.add(handle)

    def _spawned(self, task: asyncio.Future[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("worker could not be started", pool=self.name, error=repr(task.exception()))

    async def stop(self, timeout: float) -> None:  # noqa: ASYNC109  (the shutdown budget is the caller's)
        """Ask every worker to stop (it finishes its sessions within ``timeout``), then end the rest."""
        self._stopping = True
        for handle in self._restarts:
            handle.cancel()
        self._restarts.clear()
        self.send_all(("stop",))
        for signal_name, wait in ((None, timeout), ("terminate", 2.0), ("kill", 2.0)):
            late = self._live()
            if not late:
                return
            if signal_name is not None:
                log.warning("worker did not stop in time", pool=self.name, workers=[w.index for w in late])
                for worker in late:
                    assert worker.process is not None
                    getattr(worker.process, signal_name)()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._none_left.wait(), wait)

    def _live(self) -> list[_Worker]:
        return [w for w in self._workers if w.process is not None]
