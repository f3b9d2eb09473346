"""The Authentication-Results header field (RFC 8601) that records a message's checks, written by
authres.

Every property value here comes from the sender (MAIL FROM, HELO, a DKIM-Signature's d= and s=, the
From domain), and authres leaves a value containing "@" unquoted whatever else it contains. A value
with anything but domain-name characters is therefore left out, so that a sender cannot write result
clauses of its own. Reasons are left out too, as they quote DNS text and pyspf's explanations (which
hold addresses); they stay in the stored results.
"""

from __future__ import annotations

import functools
import re

import authres  # type: ignore[import-untyped]
import authres.arc  # type: ignore[import-untyped]
import authres.dmarc  # type: ignore[import-untyped]

from mailgate.domain.inbound import ArcResult, AuthResults, AuthVerdict, DkimResult, DmarcResult, SpfResult

FEATURES = authres.FeatureContext(authres.dmarc, authres.arc)
"""Parses what ``authentication_results`` writes, DMARC and ARC clauses included."""

_DOMAIN = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?")
_LINE_LIMIT = 998  # RFC 5322 2.1.1: longer lines are folded between clauses


@functools.lru_cache(maxsize=4096)
def authentication_results(authserv_id: str, results: AuthResults) -> str:
    """``Authentication-Results: <authserv-id>; spf=…; dkim=…; dmarc=…; arc=…`` without CRLF; one
    dkim clause per signature, ``dkim=none`` for none. Results are frozen values and one sender's
    mail gets the same ones again and again, so the rendering (authres objects) is remembered."""
    clauses = [
        _spf(results.spf),
        *(_dkim(d) for d in results.dkim),
        *([] if results.dkim else [authres.DKIMAuthenticationResult(result="none")]),
        _dmarc(results.dmarc),
        _arc(results.arc),
    ]
    line = str(FEATURES.header(authserv_id=authserv_id, results=clauses))
    return line if len(line) <= _LINE_LIMIT else line.replace("; ", ";\r\n\t")


def _spf(spf: SpfResult) -> authres.SPFAuthenticationResult:
    identity = _domain(spf.domain)
    if spf.scope == "helo":
        return authres.SPFAuthenticationResult(result=spf.result.value, smtp_helo=identity)
    return authres.SPFAuthenticationResult(result=spf.result.value, smtp_mailfrom=identity)


def _dkim(dkim: DkimResult) -> authres.DKIMAuthenticationResult:
    return authres.DKIMAuthenticationResult(
        result=dkim.result.value, header_d=_domain(dkim.domain), header_s=_domain(dkim.selector)
    )


def _dmarc(dmarc: DmarcResult) -> authres.dmarc.DMARCAuthenticationResult:
    decided = dmarc.result in (AuthVerdict.PASS, AuthVerdict.FAIL)
    return authres.dmarc.DMARCAuthenticationResult(
        result=dmarc.result.value,
        result_comment=f"p={dmarc.policy} dis={dmarc.disposition}" if decided else None,
        header_from=_domain(dmarc.domain),
    )


def _arc(arc: ArcResult) -> authres.arc.ARCAuthenticationResult:
    return authres.arc.ARCAuthenticationResult(result=arc.result.value)


def _domain(value: str) -> str | None:
    """The value when it is made of domain-name characters (a selector is too), else None: omitted."""
    value = value.rstrip(".")
    return value if _DOMAIN.fullmatch(value) else None
