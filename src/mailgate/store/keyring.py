"""Data keys: random AES keys kept in the database, each wrapped by a master key.

Blobs (and later, encrypted columns) are sealed under the active data key and name it in their header,
so rotating the master key only re-wraps these few rows, and old ciphertext stays readable. One extra
secret (purpose ``hmac``) never changes; HMAC subkeys (API key pepper, audit chain, blob names, the
search blind index) are derived from it, so they survive master-key rotation.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from mailgate.domain.errors import ConfigurationError, IntegrityError
from mailgate.security import envelope
from mailgate.security.masterkeys import MasterKey, generate, write_key_file
from mailgate.store.database import Database
from mailgate.store.schema import data_keys
from mailgate.store.types import utcnow

PURPOSE_DATA = "data"
PURPOSE_HMAC = "hmac"


@dataclass(frozen=True, slots=True)
class RotationResult:
    master_kid: str
    rewrapped: int
    data_key_id: str


def _wrap_context(key_id: str, purpose: str) -> bytes:
    return f"data-key:{key_id}:{purpose}".encode()


class Keyring:
    def __init__(self, db: Database, master_keys: list[MasterKey], key_file: Path | None) -> None:
        if not master_keys:
            raise ConfigurationError("no master key")
        self._db = db
        self._masters = {k.kid: k for k in master_keys}
        self._active_master = master_keys[0]
        self._key_file = key_file
        self._keys: dict[str, bytes] = {}
        self._active_id: str | None = None
        self._hmac_root: bytes | None = None

    @property
    def master_kid(self) -> str:
        return self._active_master.kid

    async def load(self) -> None:
        """Read (creating on first start) the data keys; fails with the missing master key's id."""
        async with self._db.write() as conn:
            rows = (await conn.execute(select(data_keys))).all()
            if not any(r.purpose == PURPOSE_DATA and r.active for r in rows):
                await self._insert(conn, PURPOSE_DATA)
            if not any(r.purpose == PURPOSE_HMAC for r in rows):
                await self._insert(conn, PURPOSE_HMAC)
            rows = (await conn.execute(select(data_keys))).all()
        keys: dict[str, bytes] = {}
        for row in rows:
            master = self._masters.get(row.master_kid)
            if master is None:
                raise ConfigurationError(
                    f"data key {row.id} is wrapped by master key {row.master_kid}, which is not configured"
                )
            keys[row.id] = envelope.unseal(row.wrapped, master.key, _wrap_context(row.id, row.purpose))
            if row.purpose == PURPOSE_DATA and row.active:
                self._active_id = row.id
            if row.purpose == PURPOSE_HMAC:
                self._hmac_root = keys[row.id]
        self._keys = keys

    async def _insert(self, conn: AsyncConnection, purpose: str) -> str:
        key_id = "dk_" + secrets.token_hex(8)
        wrapped = envelope.seal(
            envelope.new_key(), self._active_master.key, self._active_master.kid, _wrap_context(key_id, purpose)
        )
        await conn.execute(
            data_keys.insert().values(
                id=key_id,
                purpose=purpose,
                master_kid=self._active_master.kid,
                wrapped=wrapped,
                active=True,
                created_at=utcnow(),
            )
        )
        return key_id

    def subkey(self, label: str) -> bytes:
        """A stable 32-byte key for one HMAC use, derived from the never-rotated root secret."""
        if self._hmac_root is None:
            raise RuntimeError("keyring not loaded")
        return HKDF(hashes.SHA256(), 32, salt=None, info=b"mailgate:" + label.encode()).derive(self._hmac_root)

    def seal(self, plaintext: bytes, context: bytes) -> bytes:
        if self._active_id is None:
            raise RuntimeError("keyring not loaded")
        return envelope.seal(plaintext, self._keys[self._active_id], self._active_id, context)

    async def _key(self, key_id: str) -> bytes:
        if key_id not in self._keys:
            await self.load()  # another node may have rotated since we loaded
        try:
            return self._keys[key_id]
        except KeyError:
            raise IntegrityError(f"data key {key_id} is unknown") from None

    async def unseal(self, sealed: bytes, context: bytes) -> bytes:
        return envelope.unseal(sealed, await self._key(envelope.key_id_of(sealed)), context)

    async def rotate(self) -> RotationResult:
        """Make a new master key active (generated into the key file, or the first of the
        environment's list), re-wrap every data key under it and start a new data key for new writes."""
        if self._key_file is not None:
            new = generate()
            write_key_file(self._key_file, [new, *self._masters.values()])
            self._masters[new.kid] = new
            self._active_master = new
        master = self._active_master
        async with self._db.write() as conn:
            rows = (await conn.execute(select(data_keys))).all()
            for row in rows:
                old = self._masters.get(row.master_kid)
                if old is None:
                    raise ConfigurationError(f"data key {row.id} needs master key {row.master_kid}, not configured")
                ctx = _wrap_context(row.id, row.purpose)
                plain = envelope.unseal(row.wrapped, old.key, ctx)
                await conn.execute(
                    update(data_keys)
                    .where(data_keys.c.id == row.id)
                    .values(wrapped=envelope.seal(plain, master.key, master.kid, ctx), master_kid=master.kid)
                )
            await conn.execute(update(data_keys).where(data_keys.c.purpose == PURPOSE_DATA).values(active=False))
            new_id = await self._insert(conn, PURPOSE_DATA)
        if self._key_file is not None:
            write_key_file(self._key_file, [master])
            self._masters = {master.kid: master}
        await self.load()
        return RotationResult(master.kid, len(rows), new_id)
