"""Passwords people type into mail clients: generated for them, stored only as argon2id hashes.

SMTP clients send the password on every connection, and argon2 is deliberately slow (tens of
milliseconds, 64 MiB), so a verified password is remembered in memory as a keyed hash for a few minutes:
a client that opens a hundred connections pays argon2 once. The memo is keyed by credential id and the
hash it was checked against, so a changed or revoked credential never matches a stale entry.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_HASHER = PasswordHasher()
MEMO_SECONDS = 300.0
MEMO_LIMIT = 10_000


def new_password() -> str:
    """32 URL-safe characters (192 bits): nothing a person must remember, safe in any client's config."""
    return secrets.token_urlsafe(24)


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


class PasswordChecker:
    def __init__(self, pepper: bytes) -> None:
        self._pepper = pepper
        self._memo: dict[tuple[str, str], tuple[bytes, float]] = {}

    async def verify(self, credential_id: str, stored_hash: str, password: str) -> bool:
        """Whether ``password`` matches; argon2 runs in a thread so the event loop keeps serving."""
        tag = hmac.new(self._pepper, password.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()
        key = (credential_id, stored_hash)
        remembered = self._memo.get(key)
        now = time.monotonic()
        if remembered is not None and remembered[1] > now:
            return hmac.compare_digest(remembered[0], tag)
        if not await asyncio.to_thread(_argon2_matches, stored_hash, password):
            return False
        if len(self._memo) >= MEMO_LIMIT:
            self._memo.clear()
        self._memo[key] = (tag, now + MEMO_SECONDS)
        return True


def _argon2_matches(stored_hash: str, password: str) -> bool:
    try:
        return _HASHER.verify(stored_hash, password)
    except (VerificationError, InvalidHashError):
        return False
