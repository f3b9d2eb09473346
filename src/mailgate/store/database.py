"""The engine, transactions and migrations for both SQLite and PostgreSQL.

SQLite: WAL, ``synchronous=FULL`` (a commit survives power loss: we acknowledge mail only after it),
foreign keys on, a busy timeout, and writers that take the write lock at ``BEGIN IMMEDIATE`` so a
read-then-write transaction never fails half-way with SQLITE_BUSY. PostgreSQL: asyncpg with a pool.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Executable, Insert, Table, event, text
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import IntegrityError as DbIntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from mailgate.domain.errors import Conflict, Unavailable
from mailgate.store import sqlite_driver
from mailgate.store.group_commit import GroupCommit

MIGRATIONS = Path(__file__).parent / "migrations"
# Execution options for a write whose caller reads no row count and catches none of its errors:
# on SQLite it is pipelined (sqlite_driver), its failure raised by the transaction's next awaited step.
PIPELINED = {sqlite_driver.PIPELINE_OPTION: True}
_READONLY = "mailgate_readonly"
_EVENTS_FLAG = "mailgate.events_written"


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


class Database:
    def __init__(self, url: str, *, pool_size: int = 10, busy_timeout_ms: int = 30000) -> None:
        self.url = url
        self.dialect = "sqlite" if url.startswith("sqlite") else "postgresql"
        self._after_event_commit: list[Callable[[], None]] = []
        if self.dialect == "sqlite":
            path = url.split("///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)

            def connect() -> sqlite_driver.Connection:
                args, kwargs = self.engine.dialect.create_connect_args(self.engine.url)
                return sqlite_driver.connect(*args, **kwargs, timeout=busy_timeout_ms / 1000)

            self.engine: AsyncEngine = create_async_engine(
                url, async_creator=connect, pool_size=pool_size, max_overflow=0
            )
            self._configure_sqlite(busy_timeout_ms)
        else:
            self.engine = create_async_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
        self.batched = GroupCommit(self.write)
        self.batched_read = GroupCommit(self.read, sizes=None)

    def _configure_sqlite(self, busy_timeout_ms: int) -> None:
        sync_engine = self.engine.sync_engine

        @event.listens_for(sync_engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None  # we issue BEGIN ourselves, below
            cursor = dbapi_connection.cursor()
            for pragma in (
                "journal_mode=WAL",
                "synchronous=FULL",
                "foreign_keys=ON",
                "busy_timeout=0",  # waits for the write lock happen in _take_write_lock, asynchronously
            ):
                cursor.execute(f"PRAGMA {pragma}")
            cursor.close()

        @event.listens_for(sync_engine, "before_cursor_execute")
        def _on_execute(
            _conn: Connection, cursor: Any, _sql: str, _params: Any, context: Any, _executemany: bool
        ) -> None:
            if context is not None and context.execution_options.get(sqlite_driver.PIPELINE_OPTION):
                cursor._cursor.pipelined = True  # the adapter's cursor wraps the driver's

        @event.listens_for(sync_engine, "begin")
        def _on_begin(conn: Connection) -> None:
            driver: sqlite_driver.Connection = conn.connection.dbapi_connection._connection  # type: ignore[union-attr]
            readonly = conn.get_execution_options().get(_READONLY, False)
            driver.begin(immediate=not readonly, budget=busy_timeout_ms / 1000)

    def on_events_committed(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after every commit that appended events (wakes long-polls at once)."""
        self._after_event_commit.append(callback)

    def events_committed_elsewhere(self) -> None:
        """Another process of this node committed events: the same wake-up as for one of ours."""
        for callback in self._after_event_commit:
            callback()

    @staticmethod
    def mark_events_written(conn: AsyncConnection) -> None:
        conn.info[_EVENTS_FLAG] = True

    @asynccontextmanager
    async def _transaction(self, *, readonly: bool) -> AsyncIterator[AsyncConnection]:
        try:
            conn = await self.engine.connect()
        except (DBAPIError, OSError) as exc:  # any failure to connect means "down", whatever the driver says
            raise Unavailable(f"database unavailable: {_short(exc)}") from exc
        try:
            if readonly:
                conn = await conn.execution_options(**{_READONLY: True})
            conn.info.pop(_EVENTS_FLAG, None)
            async with conn.begin():
                yield conn
            if conn.info.pop(_EVENTS_FLAG, False):
                for callback in self._after_event_commit:
                    callback()
        except DBAPIError as exc:
            if isinstance(exc, OperationalError | InterfaceError) or exc.connection_invalidated:
                raise Unavailable(f"database unavailable: {_short(exc)}") from exc
            raise
        except OSError as exc:
            raise Unavailable(f"database unavailable: {_short(exc)}") from exc
        finally:
            await conn.close()

    def write(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """A read-write transaction, committed when the block ends without an exception.

        Raises Unavailable when the database cannot serve (down, locked past the busy timeout, disk
        full); other database errors propagate, since they mean the request itself was wrong.
        """
        return self._transaction(readonly=False)

    def read(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """A read-only transaction (on SQLite it does not take the write lock)."""
        return self._transaction(readonly=True)

    async def ping(self) -> None:
        async with self.read() as conn:
            await conn.execute(text("SELECT 1"))

    async def upgrade(self) -> None:
        def run(sync_conn: Connection) -> None:
            cfg = alembic_config()
            cfg.attributes["connection"] = sync_conn
            command.upgrade(cfg, "head")

        async with self.write() as conn:
            if self.dialect == "postgresql":
                # several nodes may start at once: one migrates, the others wait and find it done
                await conn.execute(text("SELECT pg_advisory_xact_lock(7310001)"))
            await conn.run_sync(run)

    async def revisions(self) -> tuple[str | None, str | None]:
        """(revision the database is at, newest revision this code knows)."""
        head = ScriptDirectory.from_config(alembic_config()).get_current_head()
        async with self.read() as conn:
            current = await conn.run_sync(lambda c: MigrationContext.configure(c).get_current_revision())
        return current, head

    async def is_current(self) -> bool:
        current, head = await self.revisions()
        return current == head

    async def dispose(self) -> None:
        await self.engine.dispose()


def _short(exc: BaseException) -> str:
    message = str(getattr(exc, "orig", None) or exc).strip()
    return message.splitlines()[0][:200] if message else type(exc).__name__


def insert_ignoring_duplicates(conn: AsyncConnection, table: Table) -> Insert:
    """INSERT that skips rows whose key exists (ON CONFLICT DO NOTHING), on either engine."""
    insert = sqlite_insert if conn.dialect.name == "sqlite" else postgresql_insert
    return insert(table).on_conflict_do_nothing()


async def execute_unique(conn: AsyncConnection, statement: Executable, conflict: str) -> None:
    """Run a write that a unique constraint may refuse, in a savepoint (so the caller's transaction
    goes on), and say ``conflict`` as the Conflict it raises when refused."""
    try:
        async with conn.begin_nested():
            await conn.execute(statement)
    except DbIntegrityError:
        raise Conflict(conflict) from None
