"""Opaque cursors: clients pass back what they got, and cannot depend on what is inside."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence

from mailgate.domain.errors import InvalidInput

DEFAULT_LIMIT = 50


def encode(value: str | int) -> str:
    return base64.urlsafe_b64encode(f"c1:{value}".encode()).decode().rstrip("=")


def decode(cursor: str | None) -> str | None:
    if cursor is None or cursor == "":
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raw = ""
    if not raw.startswith("c1:"):
        raise InvalidInput("cursor is not one this API handed out", field="cursor")
    return raw[3:]


def decode_int(cursor: str | None) -> int:
    value = decode(cursor)
    if value is None:
        return 0
    try:
        return int(value)
    except ValueError:
        raise InvalidInput("cursor is not one this API handed out", field="cursor") from None


def next_cursor(items: Sequence[object], limit: int, last: str | int | None) -> str | None:
    return encode(last) if len(items) >= limit and last is not None else None
