"""The blind search index: keyed hashes of normalized words, so stored mail is searchable by whole word
while the index itself reveals no word.

Each tenant's words are hashed with a key of its own (derived from one root key), so equal words in two
tenants' mail give unrelated terms and one tenant's index says nothing about another's. What the index
does reveal is how often the same (unknown) term occurs, which is the price of searching without
decrypting every message; the ``plain`` mode trades that away further for prefix and ranked search.
"""

from __future__ import annotations

import functools
import hmac
import re
import unicodedata
from collections.abc import Iterable

_WORD = re.compile(r"\w+")
TERM_HEX = 20  # 80 bits: collisions are not a concern at any mailbox size
MIN_WORD, MAX_WORD = 2, 64
MAX_TERMS = 5000  # per message: a huge message stays searchable by its first words without flooding the table
_FIELD_FROM = b"from\x00"


def words(text: str) -> list[str]:
    """Normalized words in first-seen order: NFKC, case-folded, split on anything not a letter or
    digit (so ``alice+sales@acme.test`` is four words); one-letter words are left out."""
    normalized = unicodedata.normalize("NFKC", text).casefold()
    seen: dict[str, None] = {}
    for match in _WORD.finditer(normalized):
        word = match.group()
        if MIN_WORD <= len(word) <= MAX_WORD and word not in seen:
            seen[word] = None
    return list(seen)


class BlindIndex:
    def __init__(self, root_key: bytes) -> None:
        self._root = root_key

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - one instance per process, keys are tenant ids
    def _tenant_key(self, tenant_id: str) -> bytes:
        return hmac.digest(self._root, b"tenant\x00" + tenant_id.encode(), "sha256")

    def _term(self, key: bytes, data: bytes) -> str:
        return hmac.digest(key, data, "sha256")[: TERM_HEX // 2].hex()  # one-shot: a message hashes hundreds

    def terms(self, tenant_id: str, texts: Iterable[str], *, senders: Iterable[str] = ()) -> list[str]:
        """The terms to store for one message: its words, and a field term per sender address (which
        is what the ``from`` filter matches)."""
        key = self._tenant_key(tenant_id)
        out: dict[str, None] = {}
        for text in texts:
            for word in words(text):
                out[self._term(key, word.encode())] = None
                if len(out) >= MAX_TERMS:
                    break
        for address in senders:
            if address:
                out[self.sender_term(tenant_id, address)] = None
        return list(out)

    def query(self, tenant_id: str, text: str) -> tuple[str, ...]:
        """The terms a message must all have to match a free-text query."""
        key = self._tenant_key(tenant_id)
        return tuple(self._term(key, word.encode()) for word in words(text))

    def sender_term(self, tenant_id: str, address: str) -> str:
        return self._term(self._tenant_key(tenant_id), _FIELD_FROM + address.strip().casefold().encode())

    def fingerprint(self, tenant_id: str, kind: str, value: str) -> str:
        """A keyed hash of one whole value (a Message-ID, a normalized subject) for equality lookups."""
        return self._term(self._tenant_key(tenant_id), kind.encode() + b"\x00" + value.encode())
