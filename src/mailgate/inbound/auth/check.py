"""The one entry point the inbound pipeline uses: SPF, DKIM, ARC and DMARC for a received message,
and the Authentication-Results header that records them."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from mailgate.connectors.dns import DnsResolver
from mailgate.domain.errors import ConfigurationError
from mailgate.domain.inbound import ArcResult, AuthResults, AuthVerdict, DkimResult, SpfResult
from mailgate.inbound.auth.arc import check_arc
from mailgate.inbound.auth.dkim import check_dkim
from mailgate.inbound.auth.dmarc import Policy, discover, evaluate, public_suffixes
from mailgate.inbound.auth.results import authentication_results
from mailgate.inbound.auth.spf import check_spf, spf_identity
from mailgate.observability.logging import get_logger

log = get_logger("mailgate.inbound.auth")

_T = TypeVar("_T")
_AUTHSERV_ID = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")  # dot-atom
# Each check gets nine tenths of the budget, so it reports its own timeouts (per signature, per
# lookup) before the hard limit cuts it off with a coarser answer.
_MARGIN = 0.1


class SenderAuthenticator:
    """``authserv_id`` names this receiver in the header it writes (RFC 8601 2.5): the host name
    the MX answers as. ``timeout`` bounds one ``check`` in seconds, all checks included."""

    def __init__(self, resolver: DnsResolver, *, authserv_id: str, timeout: float = 5.0) -> None:
        if not timeout > 0:
            raise ConfigurationError("the authentication timeout must be positive")
        if not _AUTHSERV_ID.fullmatch(authserv_id):
            raise ConfigurationError(f"authserv-id {authserv_id!r} must be a host name or another dot-atom")
        self._resolver = resolver
        self.authserv_id = authserv_id
        self.timeout = timeout
        public_suffixes()  # loaded now rather than on the event loop while the first message waits

    async def check(self, raw: bytes, *, client_ip: str, helo: str, mail_from: str, header_from: str) -> AuthResults:
        """Run the four checks concurrently against one deadline.

        Never raises, and returns by the deadline: a lookup that fails or a check that runs out of
        time is temperror for that check alone, as a message must not be lost or held because DNS is
        down. ``header_from`` is the RFC5322.From domain ("" when the message has none);
        ``mail_from`` "" is the null sender, whose HELO name SPF checks instead."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        budget = self.timeout * (1 - _MARGIN)
        from_domain = header_from.strip().rstrip(".").lower()
        resolver = self._resolver
        scope, spf_domain = spf_identity(helo, mail_from)
        spf, dkim, arc, policy = await _all_by(
            deadline,
            _Guarded(
                "spf",
                check_spf(resolver, client_ip=client_ip, helo=helo, mail_from=mail_from, budget=budget),
                lambda why: SpfResult(AuthVerdict.TEMPERROR, spf_domain, scope, why),
            ),
            _Guarded(
                "dkim",
                check_dkim(resolver, raw, budget=budget),
                lambda why: (DkimResult(AuthVerdict.TEMPERROR, "", reason=why),),
            ),
            _Guarded(
                "arc", check_arc(resolver, raw, budget=budget), lambda why: ArcResult(AuthVerdict.TEMPERROR, reason=why)
            ),
            _Guarded(
                "dmarc",
                discover(resolver, from_domain, budget=budget),
                lambda why: Policy(None, error=AuthVerdict.TEMPERROR, reason=why),
            ),
        )
        dmarc = evaluate(policy, from_domain=from_domain, spf=spf, dkim=dkim, raw=raw)
        return AuthResults(spf, dkim, dmarc, arc)

    def header(self, results: AuthResults) -> str:
        """The ``Authentication-Results:`` field for ``results``, without CRLF."""
        return authentication_results(self.authserv_id, results)


class _Guarded(Generic[_T]):
    """A check with the temperror answer it gives when it fails or runs out of time."""

    def __init__(self, what: str, check: Awaitable[_T], fallback: Callable[[str], _T]) -> None:
        self.what = what
        self.check = check
        self.fallback = fallback

    async def run(self) -> _T:
        """``check``'s answer, or ``fallback``'s temperror when it fails; an unexpected failure is a bug
        of ours, logged, and temporary for the message, as a fix changes it."""
        try:
            return await self.check
        except Exception as exc:
            log.exception("authentication check failed", check=self.what, error=repr(exc))
            return self.fallback(f"{self.what} check failed: {exc!r}")


async def _all_by(deadline: float, *checks: _Guarded[Any]) -> list[Any]:
    """Every check's answer, run concurrently against one deadline (one timer for all of them, where a
    timeout per check cost a tenth of the checks' time); a check still running then is cancelled and
    answers its temperror."""
    tasks = [asyncio.ensure_future(c.run()) for c in checks]
    try:
        _, pending = await asyncio.wait(tasks, timeout=max(deadline - asyncio.get_running_loop().time(), 0.0))
    finally:  # also when the caller is cancelled: no check outlives the message
        for task in tasks:
            task.cancel()
    return [
        c.fallback(f"{c.what} check did not finish in time") if t in pending else t.result()
        for c, t in zip(checks, tasks, strict=True)
    ]
