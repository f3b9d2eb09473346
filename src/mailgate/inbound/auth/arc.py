"""ARC chain validation (RFC 8617): whether the intermediaries that handled a message before us sealed
what they saw in an unbroken chain.

dkimpy validates the chain; as with DKIM, the keys every ARC-Seal and ARC-Message-Signature names are
fetched first through our resolver, and dkimpy's body hashing runs on a thread. A key lookup that fails
makes the result ``temperror``: RFC 8617 only knows pass, fail and none, but a chain that could not be
checked must not read as one that was checked and broken.
"""

from __future__ import annotations

import asyncio

import dkim  # type: ignore[import-untyped]

from mailgate.connectors.dns import DnsResolver
from mailgate.domain.inbound import ArcResult, AuthVerdict
from mailgate.inbound.auth.keys import SILENT, Keys, fetch_keys, header_fields, key_name, tags

MAX_INSTANCES = 50  # RFC 8617 4.2.1: i= runs 1 to 50; a longer chain is failed unchecked
_SEAL = b"arc-seal"
_SIGNED = frozenset({_SEAL, b"arc-message-signature"})
_FIELDS = frozenset({*_SIGNED, b"arc-authentication-results"})


async def check_arc(resolver: DnsResolver, raw: bytes, *, budget: float) -> ArcResult:
    """``instance`` is the highest i= among the ARC-Seals: how many hops sealed the message."""
    fields = header_fields(raw, _FIELDS)
    if not fields:
        return ArcResult(AuthVerdict.NONE)
    signed = [(name, parsed) for name, value in fields if name in _SIGNED and (parsed := tags(value)) is not None]
    instance = max((_instance(parsed) for name, parsed in signed if name == _SEAL), default=0)
    if instance > MAX_INSTANCES:
        return ArcResult(AuthVerdict.FAIL, instance, f"more than {MAX_INSTANCES} ARC sets")
    names = [key for _, parsed in signed if (key := key_name(parsed))]
    try:
        async with asyncio.timeout(budget):
            keys = await fetch_keys(resolver, names)
    except TimeoutError:
        return ArcResult(AuthVerdict.TEMPERROR, instance, f"key lookup did not finish within {budget:.1f}s")
    if keys.failures:
        name, reason = next(iter(keys.failures.items()))
        return ArcResult(AuthVerdict.TEMPERROR, instance, f"key {name}: {reason}")
    verdict, reason = await asyncio.to_thread(_validate, raw, keys)
    return ArcResult(verdict, instance, reason)


def _instance(seal: dict[bytes, bytes]) -> int:
    value = seal.get(b"i", b"")
    return int(value) if value.isdigit() else 0


def _validate(raw: bytes, keys: Keys) -> tuple[AuthVerdict, str]:
    """On a worker thread. dkimpy's cv is None when a hop before us already reported the chain broken
    (cv=fail): the chain stays failed (RFC 8617 5.2)."""
    try:
        cv, _, reason = dkim.ARC(raw, logger=SILENT, minkey=1024).verify(dnsfunc=keys.dnsfunc)
    except Exception as exc:  # DKIMException for a malformed set; plain errors on some broken fields
        return AuthVerdict.FAIL, f"ARC set cannot be validated: {exc}"
    if cv == dkim.CV_Pass:
        return AuthVerdict.PASS, ""
    if cv == dkim.CV_None:
        return AuthVerdict.NONE, str(reason)
    return AuthVerdict.FAIL, str(reason)
