"""DMARC (RFC 7489): policy discovery through our resolver, evaluation by the ``dmarc`` package.

Organizational domains come from ``publicsuffixlist``, whose data is current, and not from dmarc's own
helper (publicsuffix2, frozen in 2019). The package's relaxed alignment also treats a public suffix as
aligned with everything below it (``d=com`` with ``example.com``); identifiers that are public suffixes
are therefore left out before it sees them.

Only ``import dmarc`` is safe here: ``dmarc.resolver`` and ``dmarc.asyncresolver`` build a resolver
from the system's configuration when imported.
"""

from __future__ import annotations

import asyncio
import re
import zlib
from dataclasses import dataclass
from functools import cache

import dmarc  # type: ignore[import-untyped]
from publicsuffixlist import PublicSuffixList

from mailgate.connectors.dns import DnsResolver, DnsTemporaryFailure, NoSuchDomain
from mailgate.domain.inbound import AuthVerdict, DkimResult, DmarcResult, SpfResult

_RECORD = re.compile(r"v\s*=\s*DMARC1\s*(?:;|$)")  # RFC 7489 6.6.3: others at _dmarc are not ours
_MILDER = {"reject": "quarantine", "quarantine": "none", "none": "none"}
_PASS = dmarc.DMARCResult.PASS


@cache
def public_suffixes() -> PublicSuffixList:
    """The list, loaded once per process (~80 ms)."""
    return PublicSuffixList()


def organizational_domain(domain: str) -> str:
    """RFC 7489 3.2: the public suffix plus one label; a public suffix itself is its own."""
    domain = domain.rstrip(".").lower()
    return str(public_suffixes().privatesuffix(domain) or domain)


class _OrganizationalDomains:
    """What dmarc's alignment check calls ``get_public_suffix``: it means the organizational domain."""

    def get_public_suffix(self, domain: str) -> str:
        return organizational_domain(domain)


@dataclass(frozen=True, slots=True)
class Policy:
    """What discovery found for one From domain."""

    record: str | None  # the DMARC record; None when there is none, or on ``error``
    organizational: bool = False  # found at the organizational domain, so sp= applies rather than p=
    error: AuthVerdict | None = None  # temperror (a lookup failed), permerror (conflicting records)
    reason: str = ""


async def discover(resolver: DnsResolver, from_domain: str, *, budget: float) -> Policy:
    """``_dmarc.<From domain>``, then ``_dmarc.<organizational domain>`` when the first has no record
    (RFC 7489 6.6.3). A failed first lookup does not fall back: the record may exist."""
    if not from_domain:
        return Policy(None)
    try:
        async with asyncio.timeout(budget):
            records = await _records(resolver, from_domain)
            organization = organizational_domain(from_domain)
            organizational = not records and organization != from_domain
            if organizational:
                records = await _records(resolver, organization)
    except DnsTemporaryFailure as exc:
        return Policy(None, error=AuthVerdict.TEMPERROR, reason=exc.reason)
    except TimeoutError:
        return Policy(None, error=AuthVerdict.TEMPERROR, reason=f"DMARC lookup did not finish within {budget:.1f}s")
    if len(records) > 1:
        return Policy(None, error=AuthVerdict.PERMERROR, reason=f"{len(records)} DMARC records published")
    return Policy(records[0] if records else None, organizational)


async def _records(resolver: DnsResolver, domain: str) -> list[str]:
    try:
        return [text for text in await resolver.txt(f"_dmarc.{domain}") if _RECORD.match(text)]
    except NoSuchDomain:
        return []


def evaluate(
    policy: Policy, *, from_domain: str, spf: SpfResult, dkim: tuple[DkimResult, ...], raw: bytes
) -> DmarcResult:
    """Pass when an aligned SPF or DKIM identifier passed. On failure the disposition is the policy's,
    made one step milder for a message ``pct`` samples out (RFC 7489 6.6.4). ``raw`` only seeds that
    sample, so a message delivered twice is sampled the same way both times.

    A failure is temperror instead when an aligned identifier's own check hit a temporary error: the
    policy cannot be applied on an answer a retry might change (RFC 7489 6.6.2)."""
    if not from_domain:
        return DmarcResult(AuthVerdict.NONE, "", reason="the message has no RFC5322.From domain")
    if policy.error is not None:
        return DmarcResult(policy.error, from_domain, reason=policy.reason)
    if policy.record is None:
        return DmarcResult(AuthVerdict.NONE, from_domain, reason="no DMARC record")
    checker = dmarc.DMARC(publicsuffix=_OrganizationalDomains())
    organization = organizational_domain(from_domain) if policy.organizational else None
    try:
        published = checker.parse_record(policy.record, from_domain, organization, strict=False)
    except dmarc.RecordSyntaxError as exc:
        return DmarcResult(AuthVerdict.PERMERROR, from_domain, reason=str(exc))
    subdomain_policy = organization and published.sp is not dmarc.DMARCDisposition.UNSPECIFIED
    applies = str((published.sp if subdomain_policy else published.p).value)
    spf_ids = [spf] if _alignable(spf.domain, from_domain) else []
    dkim_ids = [d for d in dkim if _alignable(d.domain, from_domain)]
    found = dmarc.AuthResults(spf=next(map(_spf, spf_ids), None), dkim=[_dkim(d) for d in dkim_ids])
    outcome = checker.get_result(published, auth_results=found)
    spf_aligned, dkim_aligned = outcome.spf is _PASS, outcome.dkim is _PASS
    if outcome.result is _PASS:
        return DmarcResult(AuthVerdict.PASS, from_domain, applies, "none", spf_aligned, dkim_aligned)
    checks = [(i, published.aspf) for i in spf_ids] + [(i, published.adkim) for i in dkim_ids]
    for identifier, mode in checks:
        if identifier.result is AuthVerdict.TEMPERROR and checker.check_alignment(
            from_domain, identifier.domain, mode, checker.publicsuffix
        ):
            reason = f"{identifier.domain} could not be checked: {identifier.reason}"
            return DmarcResult(AuthVerdict.TEMPERROR, from_domain, applies, "none", reason=reason)
    sampled_in = zlib.crc32(raw) % 100 < published.pct
    disposition = applies if sampled_in else _MILDER[applies]
    reason = "no aligned identifier passed" + ("" if sampled_in else f"; pct={published.pct} sampled it out")
    return DmarcResult(AuthVerdict.FAIL, from_domain, applies, disposition, reason=reason)


def _alignable(identifier: str, from_domain: str) -> bool:
    return bool(identifier) and (identifier == from_domain or not public_suffixes().is_public(identifier))


def _spf(result: SpfResult) -> dmarc.SPF:
    scope = dmarc.SPFDomainScope.MFROM if result.scope == "mailfrom" else dmarc.SPFDomainScope.HELO
    return dmarc.SPFAuthResult(result.domain, _known(dmarc.SPFResult, result.result), scope)


def _dkim(result: DkimResult) -> dmarc.DKIM:
    return dmarc.DKIMAuthResult(result.domain, _known(dmarc.DKIMResult, result.result), result.selector)


def _known(kind: type, verdict: AuthVerdict) -> object:
    """dmarc's enums spell results as RFC 8601 does; one they lack cannot pass, so it counts as none."""
    try:
        return kind(verdict.value)
    except ValueError:
        return kind("none")
