"""DKIM verification (RFC 6376, Ed25519 from RFC 8463) of every signature on a received message.

dkimpy does the cryptography; this module decides what each outcome means in RFC 8601 terms, which
dkimpy's True/False does not say: a signature that does not verify is ``fail``, one that cannot be
checked at all (malformed tags, no usable key) is ``permerror``, and one whose key could not be fetched
is ``temperror``, as a retry may pass.

Keys are fetched first, on the event loop (``keys.fetch_keys``); the hashing then runs on a thread,
because dkimpy canonicalizes the body in Python at about 85 ms per megabyte and signature.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import dkim  # type: ignore[import-untyped]

from mailgate.connectors.dns import DnsResolver
from mailgate.domain.inbound import AuthVerdict, DkimResult
from mailgate.inbound.auth.keys import SILENT, Keys, fetch_keys, header_fields, key_name, tags

# RFC 6376 6.1 lets a verifier limit the signatures it tries; each costs a body hash, so a message
# carrying hundreds must not buy that much CPU. Signatures past the limit are not reported.
MAX_SIGNATURES = 10
_FIELD = frozenset({b"dkim-signature"})


@dataclass(frozen=True, slots=True)
class _Signature:
    index: int  # its place among the message's DKIM-Signature fields, as dkimpy counts them
    domain: str
    selector: str
    key: str | None  # the DNS name of its key; None when the tags do not give one
    problem: str  # why it cannot be verified, known before any lookup; "" when none


async def check_dkim(resolver: DnsResolver, raw: bytes, *, budget: float) -> tuple[DkimResult, ...]:
    """One result per DKIM-Signature field, top first; () when the message carries none."""
    deadline = time.monotonic() + budget
    signatures = [_signature(i, value) for i, (_, value) in enumerate(header_fields(raw, _FIELD))]
    signatures = signatures[:MAX_SIGNATURES]
    if not signatures:
        return ()
    names = [s.key for s in signatures if s.key and not s.problem]
    try:
        async with asyncio.timeout(budget):
            keys = await fetch_keys(resolver, names)
    except TimeoutError:
        keys = Keys({}, dict.fromkeys(names, f"key lookup did not finish within {budget:.1f}s"))
    return tuple(await asyncio.to_thread(_verify_all, raw, signatures, keys, deadline))


def _signature(index: int, value: bytes) -> _Signature:
    parsed = tags(value)
    if parsed is None:
        return _Signature(index, "", "", None, "DKIM-Signature tags do not parse")
    domain = parsed.get(b"d", b"").decode("ascii", "replace").lower()
    selector = parsed.get(b"s", b"").decode("ascii", "replace")
    try:
        dkim.validate_signature_fields(parsed)
    except dkim.DKIMException as exc:
        return _Signature(index, domain, selector, None, str(exc))
    return _Signature(index, domain, selector, key_name(parsed), "")


def _verify_all(raw: bytes, signatures: list[_Signature], keys: Keys, deadline: float) -> list[DkimResult]:
    """On a worker thread. The deadline is checked between signatures: a message with several large
    ones stops costing CPU once its caller has given up on it."""
    try:
        verifier = dkim.DKIM(raw, logger=SILENT, minkey=1024)
    except Exception as exc:  # dkimpy raises plain errors too on headers it cannot split
        reason = f"message header cannot be parsed: {exc}"
        return [_result(s, AuthVerdict.PERMERROR, s.problem or reason) for s in signatures]
    results = []
    for signature in signatures:
        if signature.problem:
            results.append(_result(signature, AuthVerdict.PERMERROR, signature.problem))
        elif time.monotonic() > deadline:
            results.append(_result(signature, AuthVerdict.TEMPERROR, "verification ran out of time"))
        else:
            results.append(_verify(verifier, signature, keys))
    return results


def _verify(verifier: dkim.DKIM, signature: _Signature, keys: Keys) -> DkimResult:
    assert signature.key is not None  # validate_signature_fields demands both d= and s=
    if signature.key in keys.failures:
        return _result(signature, AuthVerdict.TEMPERROR, keys.failures[signature.key])
    record, unusable = keys.key(signature.key)
    if record is None or unusable:
        return _result(signature, AuthVerdict.PERMERROR, unusable)
    try:
        verified = verifier.verify(signature.index, dnsfunc=keys.dnsfunc)
    except dkim.ValidationError as exc:  # the tags were validated already: this is the body hash
        return _result(signature, AuthVerdict.FAIL, str(exc))
    except dkim.DKIMException as exc:  # a key too small (RFC 8301), a c= it cannot apply
        return _result(signature, AuthVerdict.PERMERROR, str(exc))
    except Exception as exc:  # dkimpy meets some malformed input with plain Python errors
        return _result(signature, AuthVerdict.PERMERROR, f"signature cannot be verified: {exc!r}")
    if verified:
        return _result(signature, AuthVerdict.PASS, "")
    return _result(signature, AuthVerdict.FAIL, "signature does not verify")


def _result(signature: _Signature, verdict: AuthVerdict, reason: str) -> DkimResult:
    return DkimResult(verdict, signature.domain, signature.selector, reason)
