"""AES-256-GCM envelope encryption in fixed-size chunks.

A sealed value is ``header || chunk_0 || ... || chunk_n``. The header names the data key by id so keys
can rotate while old data stays readable; every chunk has its own nonce (random prefix + counter) and
authenticates the header, the caller's context, its index and whether it is the last, so chunks cannot
be reordered, truncated or moved to another object. Chunking lets large blobs be read incrementally.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mailgate.domain.errors import IntegrityError

MAGIC = b"MGE\x01"
CHUNK_SIZE = 1 << 20
TAG_SIZE = 16
KEY_SIZE = 32
_NONCE_PREFIX = 8


def new_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


def _header(key_id: str) -> bytes:
    kid = key_id.encode("ascii")
    if not 0 < len(kid) < 256:
        raise ValueError("key id must be 1..255 ASCII bytes")
    return MAGIC + bytes([len(kid)]) + kid + os.urandom(_NONCE_PREFIX)


def _parse_header(sealed: bytes) -> tuple[str, bytes, int]:
    if len(sealed) < len(MAGIC) + 1 or not sealed.startswith(MAGIC):
        raise IntegrityError("not a sealed value (bad magic)")
    n = sealed[len(MAGIC)]
    end = len(MAGIC) + 1 + n + _NONCE_PREFIX
    if len(sealed) < end:
        raise IntegrityError("sealed value truncated in its header")
    kid = sealed[len(MAGIC) + 1 : len(MAGIC) + 1 + n].decode("ascii", "replace")
    return kid, sealed[:end], end


def key_id_of(sealed: bytes) -> str:
    return _parse_header(sealed)[0]


def _aad(header: bytes, context: bytes, index: int, last: bool) -> bytes:
    return header + struct.pack(">IB", index, last) + context


def seal(plaintext: bytes, key: bytes, key_id: str, context: bytes = b"") -> bytes:
    header = _header(key_id)
    prefix = header[-_NONCE_PREFIX:]
    aead = AESGCM(key)
    view = memoryview(plaintext)
    count = max(1, -(-len(plaintext) // CHUNK_SIZE))
    parts = [header]
    for i in range(count):
        chunk = view[i * CHUNK_SIZE : (i + 1) * CHUNK_SIZE]
        nonce = prefix + struct.pack(">I", i)
        parts.append(aead.encrypt(nonce, bytes(chunk), _aad(header, context, i, i == count - 1)))
    return b"".join(parts)


def unseal_chunks(sealed: bytes, key: bytes, context: bytes = b"") -> Iterator[bytes]:
    """Yield the plaintext chunk by chunk; raises IntegrityError on any tampering or truncation."""
    _kid, header, pos = _parse_header(sealed)
    prefix = header[-_NONCE_PREFIX:]
    aead = AESGCM(key)
    step = CHUNK_SIZE + TAG_SIZE
    index = 0
    while True:
        part = sealed[pos : pos + step]
        last = pos + step >= len(sealed)
        if len(part) < TAG_SIZE:
            raise IntegrityError("sealed value truncated")
        try:
            yield aead.decrypt(prefix + struct.pack(">I", index), part, _aad(header, context, index, last))
        except InvalidTag:
            raise IntegrityError("sealed value failed authentication (wrong key, context or tampered)") from None
        if last:
            return
        pos += step
        index += 1


def unseal(sealed: bytes, key: bytes, context: bytes = b"") -> bytes:
    return b"".join(unseal_chunks(sealed, key, context))
