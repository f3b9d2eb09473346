"""Content-addressed, encrypted blobs, on disk (embedded) or in the database (many nodes).

A blob's id is an HMAC of its bytes under a per-installation key: identical content is stored once,
yet the id reveals nothing to someone who could otherwise confirm a guessed message by its hash.
Writes are durable before ``put`` returns (temp file, fsync, rename, fsync of the directory).

Small blobs (``inline_max``, 64 KiB by default) are kept in the database whatever the location: stored
in the same transaction as the row that refers to them, they cost no flush of their own, where a file
costs two (the file and its directory) before that transaction may even begin.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError as DbIntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from mailgate.domain.errors import NotFound
from mailgate.security import envelope
from mailgate.store.database import PIPELINED, Database, insert_ignoring_duplicates
from mailgate.store.keyring import Keyring
from mailgate.store.schema import blob_data, blobs
from mailgate.store.types import utcnow

Location = Literal["file", "database"]


@dataclass(frozen=True, slots=True)
class BlobRef:
    id: str
    size: int


@dataclass(frozen=True, slots=True)
class StagedBlob:
    """Sealed and, if it lives in a file, already durable there; ``store_in`` records it."""

    ref: BlobRef
    location: Location
    key_id: str
    sealed: bytes | None  # the bytes to keep in the database, None when they are in a file


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, data: bytes) -> None:
    """Write a file so that it survives a crash once this returns: temp file, fsync, rename, and an
    fsync of every directory whose entries changed (including directories created on the way)."""
    created = [p for p in (path.parent.parent, path.parent) if not p.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)
    _fsync_dir(path.parent)
    for directory in created:
        _fsync_dir(directory.parent)


class BlobStore:
    def __init__(
        self, db: Database, keyring: Keyring, location: Location, root: Path, *, inline_max: int = 65536
    ) -> None:
        self._db = db
        self._keyring = keyring
        self.location = location
        self._root = root
        self._inline_max = inline_max
        self._name_key = keyring.subkey("blob-id")

    def blob_id(self, data: bytes) -> str:
        return hmac.new(self._name_key, data, hashlib.sha256).hexdigest()

    def _path(self, blob_id: str) -> Path:
        return self._root / blob_id[:2] / blob_id[2:4] / blob_id

    async def put(self, data: bytes) -> BlobRef:
        staged = await self.stage(data)
        async with self._db.write() as conn:
            await self.store_in(conn, staged)
        return staged.ref

    async def stage(self, data: bytes) -> StagedBlob:
        """The work that needs no transaction: sealing, and writing the file of a large blob."""
        blob_id = self.blob_id(data)
        sealed = self._keyring.seal(data, blob_id.encode())
        ref = BlobRef(blob_id, len(data))
        if self.location == "file" and len(data) > self._inline_max:
            path = self._path(blob_id)
            if not await asyncio.to_thread(path.exists):
                await asyncio.to_thread(write_durably, path, sealed)
            return StagedBlob(ref, "file", envelope.key_id_of(sealed), None)
        return StagedBlob(ref, "database", envelope.key_id_of(sealed), sealed)

    async def store_many(self, conn: AsyncConnection, staged: Sequence[StagedBlob]) -> None:
        """Record staged blobs inside the caller's transaction with two statements, whatever their
        number; content already stored (or repeated in ``staged``) is kept once."""
        unique = {s.ref.id: s for s in staged}
        if not unique:
            return
        at = utcnow()
        await conn.execute(
            insert_ignoring_duplicates(conn, blobs),
            [
                {"id": s.ref.id, "size": s.ref.size, "key_id": s.key_id, "location": s.location, "created_at": at}
                for s in unique.values()
            ],
            execution_options=PIPELINED,
        )
        inline = [{"id": s.ref.id, "data": s.sealed} for s in unique.values() if s.sealed is not None]
        if inline:
            await conn.execute(insert_ignoring_duplicates(conn, blob_data), inline, execution_options=PIPELINED)

    async def store_in(self, conn: AsyncConnection, staged: StagedBlob) -> BlobRef:
        """Record a staged blob inside the caller's transaction (a no-op if the same content exists)."""
        ref = staged.ref
        if (await conn.execute(select(blobs.c.id).where(blobs.c.id == ref.id))).first():
            return ref
        try:
            async with conn.begin_nested():
                await conn.execute(
                    blobs.insert().values(
                        id=ref.id, size=ref.size, key_id=staged.key_id, location=staged.location, created_at=utcnow()
                    )
                )
                if staged.sealed is not None:
                    await conn.execute(blob_data.insert().values(id=ref.id, data=staged.sealed))
        except DbIntegrityError:
            pass  # stored concurrently by another writer: same content, same id
        return ref

    async def get(self, blob_id: str) -> bytes:
        async with self._db.read() as conn:
            row = (await conn.execute(select(blobs.c.location).where(blobs.c.id == blob_id))).first()
            if row is None:
                raise NotFound("blob", blob_id)
            if row.location == "database":
                sealed = (await conn.execute(select(blob_data.c.data).where(blob_data.c.id == blob_id))).scalar_one()
        if row.location == "file":
            try:
                sealed = await asyncio.to_thread(self._path(blob_id).read_bytes)
            except FileNotFoundError:
                raise NotFound("blob", blob_id) from None
        return await self._keyring.unseal(sealed, blob_id.encode())

    async def get_many(self, ids: Sequence[str]) -> dict[str, bytes]:
        """Several blobs with one read transaction (a worker's batch of messages); missing ids are left out."""
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return {}
        async with self._db.read() as conn:
            rows = (await conn.execute(select(blobs.c.id, blobs.c.location).where(blobs.c.id.in_(wanted)))).all()
            in_db = [r.id for r in rows if r.location == "database"]
            sealed = (
                {
                    r.id: r.data
                    for r in (
                        await conn.execute(select(blob_data.c.id, blob_data.c.data).where(blob_data.c.id.in_(in_db)))
                    ).all()
                }
                if in_db
                else {}
            )
        for row in rows:
            if row.location == "file":
                try:
                    sealed[row.id] = await asyncio.to_thread(self._path(row.id).read_bytes)
                except FileNotFoundError:
                    continue
        return {blob_id: await self._keyring.unseal(data, blob_id.encode()) for blob_id, data in sealed.items()}

    async def delete(self, blob_id: str) -> None:
        async with self._db.write() as conn:
            row = (await conn.execute(delete(blobs).where(blobs.c.id == blob_id).returning(blobs.c.location))).first()
        if row is None:
            raise NotFound("blob", blob_id)
        if row.location == "file":
            self._path(blob_id).unlink(missing_ok=True)

    async def discard(self, blob_ids: Sequence[str]) -> None:
        """Delete blobs the caller found unreferenced (after its own commit); one already gone is fine."""
        for blob_id in blob_ids:
            try:
                await self.delete(blob_id)
            except NotFound:
                continue
