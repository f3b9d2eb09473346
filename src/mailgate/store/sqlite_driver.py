"""SQLite for the async engine, one thread round trip per statement.

aiosqlite runs every sqlite3 call on the connection's own thread, and SQLAlchemy's adapter makes three
or four such calls per statement: make a cursor, execute, fetch the rows, close. Each round trip waits
for a turn of the event loop, which on a busy node is milliseconds, and a write transaction holds
SQLite's single write lock for all of them: measured on the outbound benchmark, an accept of eight
statements held it for twenty-odd round trips, and the API and worker processes spent a third of their
commit time waiting for each other's lock. Here the cursor is made, executed, its first rows fetched and
(when that was all of them) closed on the thread in one go; later fetches go back to the thread only for
results larger than PREFETCH rows, so streaming a big table still reads it in chunks.

Statements whose outcome nobody reads right away go further: a SAVEPOINT, and the multi-row writes the
store marks with ``database.PIPELINED`` (the hot inserts and updates, whose callers neither read a row count nor
catch their errors) are queued to the thread without waiting, and the thread runs them back to back with
what follows. As in PostgreSQL's pipeline mode, a failure is held, the statements queued after it are
skipped, and the error is raised by the next statement or commit the caller waits for, which is at the
latest the RELEASE of the savepoint or the COMMIT that would have made them durable: nothing is
committed past a failed statement, and a rollback clears the failure.

The connection is aiosqlite's (its thread, queue and lifecycle); the cursors and the pipeline are ours.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from functools import partial
from types import TracebackType
from typing import Any, TypeVar

import aiosqlite

T = TypeVar("T")

PREFETCH = 512  # rows fetched with the statement; a result this size or larger keeps its cursor open
PIPELINE_OPTION = "mailgate_pipelined"  # the execution option that lets a statement be pipelined


class Connection(aiosqlite.Connection):
    def __init__(self, connector: Callable[[], sqlite3.Connection]) -> None:
        super().__init__(connector, iter_chunk_size=64)
        self._failure: BaseException | None = None  # a pipelined statement failed; set and read on the thread
        self._begun: Callable[[], None] | None = None  # the BEGIN that the next statement opens with
        self._reading = False  # the transaction is read-only
        self._active = False  # a transaction was begun on the thread and not yet ended

    def cursor(self) -> Cursor:  # type: ignore[override]  # a Cursor is its own async context manager
        """A cursor, made without a round trip: its sqlite3 cursor is made when it executes."""
        return Cursor(self)

    async def commit(self) -> None:
        if self._begun is not None:  # nothing ran: there is no transaction to end
            self._begun = None
        elif self._reading:  # a read-only transaction: its end cannot fail and nobody waits for it
            self._queue(self._conn.commit, "COMMIT")
        elif self._active:
            await self._call(self._settled, self._conn.commit)
        self._active = self._reading = False

    async def rollback(self) -> None:
        """A rollback outside a transaction is skipped: the pool asks for one each time a connection
        comes back, even after its transaction was committed."""
        active, self._begun, self._active, self._reading = self._active, None, False, False
        if active:
            await self._call(self._forgiven, self._conn.rollback)

    def begin(self, *, immediate: bool, budget: float) -> None:
        """Open a transaction with the next statement, in its round trip: a transaction that never
        runs one costs nothing, and one that reads elsewhere first takes the write lock only then.

        BEGIN IMMEDIATE takes the write lock, waiting for another process's writer for at most
        ``budget`` seconds: on the thread, polling every fraction of a millisecond, so the lock is
        taken soon after it is released (SQLite's own busy handler sleeps up to 100 ms between tries)
        and the event loop never waits."""
        self._begun = partial(self._begin, immediate, time.monotonic() + budget)
        self._reading = not immediate

    def _pipeline(self, sql: str, parameters: Any, *, many: bool) -> None:
        self._queue(partial(self._run, sql, parameters, many), sql)

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the thread; its result (aiosqlite's ``_execute``, typed)."""
        if not self._running or not self._connection:
            raise ValueError("Connection closed")
        self._open_transaction()
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._tx.put_nowait((future, partial(fn, *args)))
        return await future

    def _queue(self, fn: Callable[[], object], what: str) -> None:
        """Queue ``fn`` without waiting for it (the order of the thread's queue is kept)."""
        if not self._running or not self._connection:
            raise ValueError("Connection closed")
        self._open_transaction()
        self._tx.put_nowait((None, partial(self._pipelined, fn, what)))

    def _open_transaction(self) -> None:
        begun, self._begun = self._begun, None
        if begun is not None:
            self._active = True
            self._tx.put_nowait((None, partial(self._pipelined, begun, "BEGIN")))

    # ----- on the connection's thread -----

    def _pipelined(self, fn: Callable[[], object], what: str) -> None:
        if self._failure is not None:
            return
        try:
            fn()
        except BaseException as exc:
            exc.add_note(f"raised by an earlier pipelined statement: {what[:300]}")
            self._failure = exc

    def _run(self, sql: str, parameters: Any, many: bool) -> None:
        _statement(self._conn, sql, parameters, many).close()

    def _begin(self, immediate: bool, deadline: float) -> None:
        if not immediate:
            self._conn.execute("BEGIN").close()
            return
        pause = 0.0002
        while True:
            try:
                self._conn.execute("BEGIN IMMEDIATE").close()
                return
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                    raise
                if time.monotonic() >= deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 0.002)

    def _settled(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn``, unless a pipelined statement failed since the caller last heard: then its error."""
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure
        return fn(*args)

    def _released(self, sql: str) -> None:
        """RELEASE, or when a pipelined statement since the SAVEPOINT failed: undo back to it, drop it,
        and raise that failure. (SQLAlchemy does not roll back a savepoint whose release failed, so the
        rows written before the failure would otherwise be committed with the outer transaction.)"""
        failure, self._failure = self._failure, None
        if failure is None:
            self._conn.execute(sql).close()
            return
        name = sql.removeprefix("RELEASE SAVEPOINT ")
        self._conn.execute(f"ROLLBACK TO SAVEPOINT {name}").close()
        self._conn.execute(sql).close()
        raise failure

    def _forgiven(self, fn: Callable[..., T], *args: Any) -> T:
        self._failure = None
        return fn(*args)


class Cursor:
    """The aiosqlite cursor interface that SQLAlchemy's adapter uses, over snapshots of results."""

    arraysize = 1

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self.pipelined = False  # the next statement may be pipelined (set by the engine, see PIPELINE_OPTION)
        self._open: sqlite3.Cursor | None = None  # only while the result has rows not yet fetched
        self._rows: deque[Any] = deque()
        self.description: Any = None
        self.rowcount = -1
        self.lastrowid: int | None = None

    async def __aenter__(self) -> Cursor:
        return self

    async def __aexit__(
        self, _type: type[BaseException] | None, _value: BaseException | None, _tb: TracebackType | None
    ) -> None:
        await self.close()

    async def execute(self, sql: str, parameters: Sequence[Any] | dict[str, Any] | None = None) -> Cursor:
        args = (sql, () if parameters is None else parameters)
        connection = self._connection
        if self.pipelined or sql.startswith("SAVEPOINT "):  # a SAVEPOINT cannot fail on a live connection
            self.pipelined = False
            self._pipelined_result()
            connection._pipeline(*args, many=False)
        elif sql.startswith("ROLLBACK"):
            await connection._call(connection._forgiven, self._execute, *args)
        elif sql.startswith("RELEASE SAVEPOINT "):
            await connection._call(connection._released, sql)
        else:
            await connection._call(connection._settled, self._execute, *args)
        return self

    async def executemany(self, sql: str, parameters: Iterable[Sequence[Any] | dict[str, Any]]) -> Cursor:
        connection = self._connection
        if self.pipelined:
            self.pipelined = False
            self._pipelined_result()
            connection._pipeline(sql, list(parameters), many=True)
        else:
            await connection._call(connection._settled, self._execute, sql, parameters, True)
        return self

    def _pipelined_result(self) -> None:
        """What the caller sees of a statement that has not run yet: no rows, an unknown count."""
        self.description, self.rowcount, self.lastrowid = None, -1, None
        self._rows = deque()

    async def fetchone(self) -> Any:
        if not self._rows and self._open is not None:
            await self._connection._call(self._fetch, PREFETCH)
        return self._rows.popleft() if self._rows else None

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        wanted = self.arraysize if size is None else size
        if len(self._rows) < wanted and self._open is not None:
            await self._connection._call(self._fetch, max(wanted - len(self._rows), PREFETCH))
        return [self._rows.popleft() for _ in range(min(wanted, len(self._rows)))]

    async def fetchall(self) -> list[Any]:
        if self._open is not None:
            await self._connection._call(self._fetch, None)
        rows = list(self._rows)
        self._rows.clear()
        return rows

    async def __aiter__(self) -> AsyncIterator[Any]:
        while (row := await self.fetchone()) is not None:
            yield row

    async def close(self) -> None:
        self._rows.clear()
        if self._open is not None:
            await self._connection._call(self._discard)

    # ----- on the connection's thread -----

    def _execute(self, sql: str, parameters: Any, many: bool = False) -> None:
        self._discard()
        self._take(_statement(self._connection._conn, sql, parameters, many))

    def _take(self, cursor: sqlite3.Cursor) -> None:
        self.description, self.rowcount, self.lastrowid = cursor.description, cursor.rowcount, cursor.lastrowid
        self._rows = deque()
        self._open = cursor
        if cursor.description is None:
            self._discard()
        else:
            self._fetch(PREFETCH)

    def _fetch(self, size: int | None) -> None:
        """Up to ``size`` more rows (all with None); the sqlite3 cursor closes once the result is drained."""
        cursor = self._open
        assert cursor is not None
        rows = cursor.fetchall() if size is None else cursor.fetchmany(size)
        self._rows.extend(rows)
        if size is None or len(rows) < size:
            self._discard()

    def _discard(self) -> None:
        if self._open is not None:
            self._open.close()
            self._open = None


def _statement(connection: sqlite3.Connection, sql: str, parameters: Any, many: bool) -> sqlite3.Cursor:
    """A new cursor that has run ``sql`` (closed again if that failed)."""
    cursor = connection.cursor()
    try:
        if many:
            cursor.executemany(sql, parameters)
        else:
            cursor.execute(sql, parameters)
    except BaseException:
        cursor.close()
        raise
    return cursor


def connect(database: str, **kwargs: Any) -> Connection:
    """Like ``aiosqlite.connect``: await the result to open the connection on its thread (a daemon, as
    SQLAlchemy makes aiosqlite's, so that a process never waits at exit for a connection left open)."""
    connection = Connection(lambda: sqlite3.connect(database, **kwargs))
    connection._thread.daemon = True
    return connection
