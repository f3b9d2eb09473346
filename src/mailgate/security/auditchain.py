"""The audit chain's hash: HMAC-SHA256 over the previous hash and a canonical encoding of the entry.

Keyed, so that someone who can write to the database but has no master key cannot forge a consistent
chain after editing it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import datetime
from typing import Any

GENESIS = "0" * 64


def canonical(fields: dict[str, Any]) -> bytes:
    def default(value: object) -> str:
        if isinstance(value, datetime):
            return value.isoformat()
        return str(value)

    return json.dumps(fields, sort_keys=True, separators=(",", ":"), default=default, ensure_ascii=False).encode()


def link_hash(key: bytes, prev_hash: str, fields: dict[str, Any]) -> str:
    return hmac.new(key, prev_hash.encode() + b"\n" + canonical(fields), hashlib.sha256).hexdigest()
