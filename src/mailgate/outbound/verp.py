"""VERP return paths: the envelope sender names the delivery, so an asynchronous bounce finds its row.

A bounce goes to the envelope sender and nothing else about it can be trusted: half of all MTAs quote
nothing of the original message, and anyone can mail our bounce domain. So the return path carries the
delivery id *and* a truncated HMAC of it: without the key nobody can forge the address that would mark
an arbitrary recipient as bounced. The token is lowercase (hex ids, base32 tag) because MTAs and
forwarders lower-case local parts, and it stays within the 64 octets RFC 5321 4.5.3.1.1 allows.

Pure: no store and no network, so the sender and the inbound side share one codec built from config.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

from mailgate.domain.address import MAX_LOCAL_OCTETS, canonical_domain

MIN_KEY_OCTETS = 16
TAG_OCTETS = 10  # 80 bits: an online forger cannot try 2**80 bounces; 16 base32 characters, no padding
_TAG_CHARS = TAG_OCTETS * 8 // 5
_PURPOSE = b"mailgate verp v1\x00"  # domain-separates this use of the key from any other
_SEPARATOR = "-"
# Lowercase only, so a lower-cased return path still names the same delivery; no dots, so the local part
# is always a valid dot-atom wherever the id sits in it.
_ID = re.compile(r"[a-z0-9_][a-z0-9_-]*")
_PREFIX = re.compile(r"[a-z0-9_-]+")
_TAG = re.compile(rf"[a-z2-7]{{{_TAG_CHARS}}}")
MIN_ID_ROOM = 24  # what outbound.service mints: "dlv_" + 20 hex digits


class VerpCodec:
    """Encodes a delivery id into a signed return path and verifies it back."""

    def __init__(self, key: bytes, bounce_domain: str, local_prefix: str = "bounces") -> None:
        if len(key) < MIN_KEY_OCTETS:
            raise ValueError(f"the VERP key must be at least {MIN_KEY_OCTETS} bytes long")
        prefix = local_prefix.lower()
        if not _PREFIX.fullmatch(prefix):
            raise ValueError(f"VERP local prefix {local_prefix!r} must be letters, digits, '_' or '-'")
        self._key = key
        self._domain = canonical_domain(bounce_domain)
        # The envelope must be ASCII unless the peer offers SMTPUTF8, so the domain is sent as A-labels.
        self._ascii_domain = self._domain.encode("idna").decode("ascii")
        self._prefix = prefix
        self.max_id_length = MAX_LOCAL_OCTETS - len(prefix) - len("+") - len(_SEPARATOR) - _TAG_CHARS
        if self.max_id_length < MIN_ID_ROOM:
            raise ValueError(f"VERP local prefix {local_prefix!r} is too long to leave room for a delivery id")

    def encode(self, delivery_id: str) -> str:
        if not _ID.fullmatch(delivery_id):
            raise ValueError(f"delivery id {delivery_id!r} must be lowercase letters, digits, '_' or '-'")
        if len(delivery_id) > self.max_id_length:
            raise ValueError(f"delivery id is {len(delivery_id)} characters; this prefix allows {self.max_id_length}")
        return f"{self._prefix}+{delivery_id}{_SEPARATOR}{self._tag(delivery_id)}@{self._ascii_domain}"

    def decode(self, address: str) -> str | None:
        """The delivery id, or ``None`` for anything that is not a return path this key signed."""
        text = address.strip()
        if text.startswith("<") and text.endswith(">"):
            text = text[1:-1].strip()
        local, at, domain = text.rpartition("@")
        if not at or not local.isascii():
            return None
        try:
            if canonical_domain(domain) != self._domain:
                return None
        except ValueError:
            return None
        prefix, plus, token = local.lower().partition("+")
        delivery_id, separator, tag = token.rpartition(_SEPARATOR)
        if not (plus and separator) or prefix != self._prefix:
            return None
        if not (_ID.fullmatch(delivery_id) and _TAG.fullmatch(tag)):
            return None
        if not hmac.compare_digest(tag, self._tag(delivery_id)):
            return None
        return delivery_id

    def _tag(self, delivery_id: str) -> str:
        digest = hmac.new(self._key, _PURPOSE + delivery_id.encode("ascii"), hashlib.sha256).digest()
        return base64.b32encode(digest[:TAG_OCTETS]).decode("ascii").lower()
