"""Group commit: many callers' small writes share one transaction, so they share one fsync.

Accepting a message or recording an attempt is a few row inserts, but a durable commit costs a disk
flush (milliseconds), and SQLite runs one writer at a time anyway. Writes submitted while a commit is
in progress are gathered and committed together when it ends. Each caller's work runs in its own
savepoint, so one caller's failure rolls back only its own rows; every caller is answered only after
the commit that holds its rows, exactly as with a transaction of its own.

A statement costs far more than its rows (a thread hop and a compile, about half a millisecond), so
the hottest writes go further: ``run_bulk`` hands every pending item of one kind to a single function
that writes them all with multi-row statements. That function answers each item separately (a result
or an exception), so one bad item does not fail the others.

Begun with read-only transactions, the same gathering serves lookups: concurrent callers' questions of
one kind are answered by one query.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

from prometheus_client import Histogram
from sqlalchemy.ext.asyncio import AsyncConnection

from mailgate.observability.metrics import GROUP_COMMIT_SIZE

T = TypeVar("T")
Item = TypeVar("Item")
Work = Callable[[AsyncConnection], Awaitable[Any]]
Bulk = Callable[[AsyncConnection, list[Any]], Awaitable[list[Any]]]


class GroupCommit:
    def __init__(
        self,
        begin: Callable[[], AbstractAsyncContextManager[AsyncConnection]],
        max_batch: int = 500,
        *,
        sizes: Histogram | None = GROUP_COMMIT_SIZE,
    ) -> None:
        self._begin = begin
        self._sizes = sizes
        self._max_batch = max_batch
        self._pending: list[tuple[Work, asyncio.Future[Any]]] = []
        self._bulk: dict[Bulk, list[tuple[Any, asyncio.Future[Any]]]] = {}
        self._committer: asyncio.Task[None] | None = None
        self._committing: set[asyncio.Task[None]] = set()

    async def run(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """Run ``work`` in a shared transaction; returns its result once that transaction is committed."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append((work, future))
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_all())
        return await future

    async def run_bulk(self, bulk: Callable[[AsyncConnection, list[Item]], Awaitable[list[Any]]], item: Item) -> Any:
        """Queue ``item`` for ``bulk``, which writes all pending items of its kind at once and returns one
        result per item (an Exception instance is raised to that item's caller)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._bulk.setdefault(bulk, []).append((item, future))
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_all())
        result = await future
        if isinstance(result, Exception):
            raise result
        return result

    async def _commit_all(self) -> None:
        """Gather and commit until nothing is pending. The next transaction is begun as soon as the
        previous one's statements are all written, while its COMMIT (the disk flush) is still running:
        its own statements are built meanwhile, and on SQLite run the moment the write lock is free."""
        loop = asyncio.get_running_loop()
        while self._pending or self._bulk:
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            bulks = self._bulk
            self._bulk = {}
            batch.extend(_bulk_entry(bulk, entries) for bulk, entries in bulks.items())
            written: asyncio.Future[None] = loop.create_future()
            committing = asyncio.create_task(self._commit(batch, written))
            self._committing.add(committing)
            committing.add_done_callback(self._committing.discard)
            await asyncio.wait({written, committing}, return_when=asyncio.FIRST_COMPLETED)

    async def _commit(self, batch: list[tuple[Work, asyncio.Future[Any]]], written: asyncio.Future[None]) -> None:
        outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        try:
            async with self._begin() as conn:
                if len(batch) == 1:  # alone in its transaction, a failure rolls back only its own rows anyway
                    work, future = batch[0]
                    if not future.cancelled():
                        outcomes.append((future, await work(conn), None))
                else:
                    for work, future in batch:
                        if future.cancelled():
                            continue
                        try:
                            async with conn.begin_nested():
                                result = await work(conn)
                        except Exception as exc:  # raised by the work or by the release of its savepoint
                            outcomes.append((future, None, exc))
                        else:
                            outcomes.append((future, result, None))
                written.set_result(None)
        except BaseException as exc:  # the commit failed: nobody's rows are stored
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        if self._sizes is not None:
            self._sizes.observe(len(batch))
        for future, result, error in outcomes:
            if future.done():
                continue
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)


def _bulk_entry(bulk: Bulk, entries: list[tuple[Any, asyncio.Future[Any]]]) -> tuple[Work, asyncio.Future[Any]]:
    """One pseudo-caller for all of a bulk's items: its result, set only after the commit, is handed
    on to each item's own future (an exception, set when the commit fails, to all of them)."""
    carrier: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def hand_on(done: asyncio.Future[Any]) -> None:
        error = None if done.cancelled() else done.exception()
        results = done.result() if error is None and not done.cancelled() else None
        for index, (_, future) in enumerate(entries):
            if future.done():
                continue
            if results is not None:
                future.set_result(results[index])
            else:
                future.set_exception(error or asyncio.CancelledError())

    carrier.add_done_callback(hand_on)

    async def work(conn: AsyncConnection) -> list[Any]:
        results = await bulk(conn, [item for item, _ in entries])
        if len(results) != len(entries):
            raise AssertionError(f"bulk writer answered {len(results)} of {len(entries)} items")
        return results

    return work, carrier
