"""SPF (RFC 7208) for received mail: pyspf evaluates the policy, mailgate's DnsResolver answers it.

pyspf is synchronous and asks DNS through one module-level function, ``spf.DNSLookup``. That function
is replaced, once, by a dispatcher that hands each question to the event loop's resolver and waits for
the answer on its thread; it finds the resolver in a context variable that one evaluation sets, and
outside an evaluation it refuses (TempError), so nothing in the process can reach the system resolver
through pyspf. pyspf keeps enforcing RFC 7208 4.6.4 itself: 10 DNS-querying terms, 2 void lookups,
10 MX and 10 PTR names.

Evaluations run on a small pool of their own: those threads spend their time waiting on DNS and must
not fill the default executor the rest of the process uses for short CPU and file work.
"""

from __future__ import annotations

import asyncio
import re
import time
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass

import dns.exception
import dns.name
import dns.reversename
import spf  # type: ignore[import-untyped]

from mailgate.connectors.dns import DnsResolver, DnsTemporaryFailure, NoSuchDomain
from mailgate.domain.inbound import AuthVerdict, SpfResult

_THREADS = ThreadPoolExecutor(max_workers=16, thread_name_prefix="mailgate-spf")
_SPF_RECORD = re.compile(rb"v=spf1(?: |$)", re.IGNORECASE)  # RFC 7208 4.5: the version, then a space or the end


@dataclass(frozen=True, slots=True)
class _Bridge:
    """One evaluation's way to DNS: the loop's resolver, until the evaluation's deadline."""

    resolver: DnsResolver
    loop: asyncio.AbstractEventLoop
    deadline: float  # time.monotonic()

    def lookup(self, name: str, qtype: str) -> list[object]:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise spf.TempError("DNS: the SPF check ran out of time")
        future = asyncio.run_coroutine_threadsafe(_records(self.resolver, name, qtype), self.loop)
        try:
            return future.result(remaining)
        except TimeoutError:
            future.cancel()
            raise spf.TempError(f"DNS: {qtype} {name} did not answer in time") from None
        except DnsTemporaryFailure as exc:
            raise spf.TempError(f"DNS: {exc.reason}") from None


_bridge: ContextVar[_Bridge | None] = ContextVar("mailgate_spf_bridge", default=None)


def _dns_lookup(name: str, qtype: str, strict: object = True, timeout: object = None) -> list[tuple[object, object]]:
    """pyspf's DNSLookup contract: ((name, type), value) pairs; pyspf's own deadline and per-query
    timeout arguments are superseded by the bridge's deadline."""
    bridge = _bridge.get()
    if bridge is None:
        raise spf.TempError("DNS: pyspf used outside mailgate's SPF check, which holds its resolver")
    return [((name, qtype), value) for value in bridge.lookup(name, qtype)]


spf.DNSLookup = _dns_lookup


async def _records(resolver: DnsResolver, name: str, qtype: str) -> list[object]:
    """Values in the shapes pyspf's dnspython driver gives: address text, (preference, host) for MX,
    the host for PTR, a tuple of byte strings for TXT. A name that does not exist answers nothing,
    which pyspf counts as a void lookup."""
    try:
        if qtype == "A":
            return list(await resolver.ipv4(name))
        if qtype == "AAAA":
            return list(await resolver.ipv6(name))
        if qtype == "MX":
            return [(mx.preference, mx.host) for mx in await resolver.mx(name)]
        if qtype == "TXT":
            return [(record,) for record in await resolver.txt_bytes(name)]
        if qtype == "PTR":
            return list(await resolver.ptr(str(dns.reversename.to_address(dns.name.from_text(name)))))
    except NoSuchDomain:
        return []
    except (dns.exception.DNSException, ValueError):  # a PTR question that names no address
        return []
    return []  # type SPF (99): pyspf asks for it only in its "harsh" mode, which is not used here


def spf_identity(helo: str, mail_from: str) -> tuple[str, str]:
    """(scope, domain): MAIL FROM's domain, or HELO's when MAIL FROM is the null sender (RFC 7208
    2.4); a local part alone takes HELO's domain too, as pyspf does (RFC 7208 4.3)."""
    domain = mail_from.rpartition("@")[2] if "@" in mail_from else helo
    return ("mailfrom" if mail_from else "helo"), domain.rstrip(".").lower()


async def check_spf(resolver: DnsResolver, *, client_ip: str, helo: str, mail_from: str, budget: float) -> SpfResult:
    """Evaluate the identity ``spf_identity`` names; ``budget`` (seconds) bounds its lookups together."""
    scope, domain = spf_identity(helo, mail_from)
    try:
        published: list[bytes] | None = await resolver.txt_bytes(domain)
    except NoSuchDomain:
        published = []  # RFC 7208 4.3: a domain that does not exist is "none"
    except DnsTemporaryFailure:
        published = None  # pyspf asks again and answers temperror as RFC 7208 4.4 says
    if published is not None and not any(_SPF_RECORD.match(record) for record in published):
        # no SPF record (RFC 7208 4.5): "none", without a thread and pyspf's own lookups
        return SpfResult(AuthVerdict.NONE, domain, scope, "no SPF record")
    loop = asyncio.get_running_loop()
    bridge = _Bridge(resolver, loop, time.monotonic() + budget)
    result, reason = await loop.run_in_executor(_THREADS, _evaluate, bridge, client_ip, helo, mail_from)
    try:
        verdict = AuthVerdict(result)
    except ValueError:
        verdict, reason = AuthVerdict.PERMERROR, f"pyspf answered {result!r}: {reason}"
    return SpfResult(verdict, domain, scope, reason)


def _evaluate(bridge: _Bridge, client_ip: str, helo: str, mail_from: str) -> tuple[str, str]:
    """On an SPF thread: (pyspf's result, its explanation or error)."""
    token = _bridge.set(bridge)
    try:
        result, _code, explanation = spf.query(i=client_ip, s=mail_from, h=helo).check()
    except spf.PermError as exc:  # raised while setting up, for a client address that is not one
        return "permerror", str(exc)
    finally:
        _bridge.reset(token)
    return str(result), str(explanation)
