"""API key tokens: ``mg_<key id>_<secret>``.

The id is public and indexes the row; the secret is 32 random bytes, stored only as HMAC-SHA256 under a
server-side pepper, so a database dump yields no usable key and checking one costs a hash, not argon2.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

TOKEN_PREFIX = "mg_"  # noqa: S105 - a public prefix
_TOKEN = re.compile(r"^mg_(key_[a-z0-9]{16})_([A-Za-z0-9_-]{43})$")


def new_key_id() -> str:
    return "key_" + secrets.token_hex(8)


def new_token(key_id: str) -> str:
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    return f"{TOKEN_PREFIX}{key_id}_{secret}"


def split_token(token: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed token, else None."""
    match = _TOKEN.match(token)
    return (match.group(1), match.group(2)) if match else None


def hash_secret(pepper: bytes, secret: str) -> str:
    return hmac.new(pepper, secret.encode(), hashlib.sha256).hexdigest()


def secret_matches(pepper: bytes, secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(pepper, secret), stored_hash)
