"""The vocabulary of received mail: authentication verdicts and spam verdicts.

These cross layers (checked in ``inbound``, stored by ``store``, shown by ``api``), so they are plain
frozen data here and carry their own JSON form.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class AuthVerdict(StrEnum):
    """RFC 8601 result values shared by SPF, DKIM, DMARC and ARC (each uses a subset)."""

    PASS = "pass"  # noqa: S105 - a verdict, not a password
    FAIL = "fail"
    SOFTFAIL = "softfail"
    NEUTRAL = "neutral"
    NONE = "none"
    POLICY = "policy"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"


@dataclass(frozen=True, slots=True)
class SpfResult:
    result: AuthVerdict
    domain: str  # the domain checked: MAIL FROM's, or HELO's when MAIL FROM is empty
    scope: str = "mailfrom"  # "mailfrom" or "helo"
    reason: str = ""


@dataclass(frozen=True, slots=True)
class DkimResult:
    result: AuthVerdict
    domain: str  # d=
    selector: str = ""  # s=
    reason: str = ""


@dataclass(frozen=True, slots=True)
class DmarcResult:
    result: AuthVerdict  # pass, fail, none (no policy), temperror, permerror
    domain: str  # the RFC5322.From domain
    policy: str = "none"  # the policy that applies to this domain: none, quarantine, reject
    disposition: str = "none"  # what the policy asks of this message: none, quarantine, reject
    spf_aligned: bool = False
    dkim_aligned: bool = False
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ArcResult:
    result: AuthVerdict  # pass, fail, none (no ARC set)
    instance: int = 0  # the highest i= in the chain
    reason: str = ""


@dataclass(frozen=True, slots=True)
class AuthResults:
    spf: SpfResult
    dkim: tuple[DkimResult, ...]
    dmarc: DmarcResult
    arc: ArcResult

    def to_json(self) -> dict[str, Any]:
        return {
            "spf": {"result": self.spf.result.value, "domain": self.spf.domain, "scope": self.spf.scope},
            "dkim": [{"result": d.result.value, "domain": d.domain, "selector": d.selector} for d in self.dkim],
            "dmarc": {
                "result": self.dmarc.result.value,
                "domain": self.dmarc.domain,
                "policy": self.dmarc.policy,
                "disposition": self.dmarc.disposition,
            },
            "arc": {"result": self.arc.result.value, "instance": self.arc.instance},
        }


class SpamAction(StrEnum):
    """What the per-domain thresholds make of a score, mildest first."""

    NONE = "none"
    TAG = "tag"  # X-Spam-Flag / X-Spam-Status headers, stays in INBOX
    JUNK = "junk"  # stored in the Junk folder
    REJECT = "reject"  # refused at SMTP time with 550 5.7.1


@dataclass(frozen=True, slots=True)
class SpamThresholds:
    tag: float = 5.0
    junk: float = 8.0
    reject: float = 15.0

    def action(self, score: float) -> SpamAction:
        if score >= self.reject:
            return SpamAction.REJECT
        if score >= self.junk:
            return SpamAction.JUNK
        if score >= self.tag:
            return SpamAction.TAG
        return SpamAction.NONE


@dataclass(frozen=True, slots=True)
class SpamVerdict:
    score: float
    symbols: dict[str, float] = field(default_factory=dict)  # rule name -> its contribution
    engines: tuple[str, ...] = ()  # which scorers answered: builtin, rspamd, spamd
    errors: tuple[str, ...] = ()  # scorers that were configured but could not answer

    def to_json(self, action: SpamAction) -> dict[str, Any]:
        return {
            "score": round(self.score, 2),
            "action": action.value,
            "symbols": {k: round(v, 2) for k, v in self.symbols.items()},
            "engines": list(self.engines),
        }


@dataclass(frozen=True, slots=True)
class InboundEnvelope:
    """One message as the MX listener received it: the SMTP envelope and the DATA bytes."""

    client_ip: str
    helo: str
    mail_from: str  # "" for the null reverse-path <>
    recipients: tuple[str, ...]
    data: bytes
    tls: bool = False
    client_name: str | None = None  # reverse DNS of client_ip, when it was looked up
