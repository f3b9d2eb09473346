"""A small async DNS facade on dnspython for everything mail needs to look up: MX (with the RFC 5321
§5.1 and RFC 7505 rules), addresses, PTR and TXT (MTA-STS when sending; SPF, DKIM, ARC and DMARC
when receiving).

Callers get plain values or one of three exceptions, never a dnspython type: permanent answers
(the name does not exist, or is not a valid name) are told apart from failures to get an answer at
all, because the first bounces mail and the second only defers it. An empty list is "the name exists
but has no records of this type" (NODATA), which most callers read as "none".
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
import dns.reversename
from dns.rdtypes.ANY.MX import MX
from dns.rdtypes.ANY.PTR import PTR
from dns.rdtypes.ANY.TXT import TXT

from mailgate.domain.errors import ConfigurationError

# The probe ``reachable`` sends: every recursive resolver answers the root zone from its cache.
_PROBE_NAME = dns.name.root
_PROBE_TIMEOUT = 2.0
MAX_CACHE_TTL = 3600.0  # seconds: a record changed upstream is seen within the hour whatever its TTL


class DnsError(Exception):
    """A lookup did not produce records. ``permanent`` failures will give the same answer tomorrow."""

    permanent = False

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NoSuchDomain(DnsError):
    """NXDOMAIN, or a name that cannot be a DNS name at all (an empty label, one over 63 octets)."""

    permanent = True


class NullMx(DnsError):
    """The domain publishes the RFC 7505 null MX (``0 .``): it accepts no mail at all."""

    permanent = True


class DnsTemporaryFailure(DnsError):
    """No answer: SERVFAIL, REFUSED, a timeout, or no resolver reachable. Whether the fault is the
    domain's or our resolver's is not visible in one failed query; ``DnsResolver.reachable`` says."""


@dataclass(frozen=True, slots=True, order=True)
class MxRecord:
    """``host`` is lower case without the trailing dot. ``implicit`` marks the RFC 5321 §5.1
    fallback to the domain itself when it publishes no MX."""

    preference: int
    host: str
    implicit: bool = False


def _host_text(name: dns.name.Name) -> str:
    """The root (a null MX's target) becomes ""."""
    return "" if name == dns.name.root else name.to_text(omit_final_dot=True).lower()


class DnsResolver:
    """``servers`` are (IP address, port) pairs; empty or None reads the system's resolv.conf.

    ``timeout`` bounds one lookup with every retry and server included. ``cache_size`` > 0 keeps that
    many answers for their TTL (``_AnswerCache``): the sender checks of received mail ask the same few
    names for every message from one sender, and each round trip costs more in dnspython than the
    check itself. Sending needs none (the recursive resolver has its own), so it is off by default.
    """

    def __init__(
        self, servers: Sequence[tuple[str, int]] | None = None, *, timeout: float = 5.0, cache_size: int = 0
    ) -> None:
        if not timeout > 0:
            raise ConfigurationError("dns timeout must be positive")
        try:
            if servers:
                resolver = dns.asyncresolver.Resolver(configure=False)
                resolver.nameservers = [dns.nameserver.Do53Nameserver(_ip(host), port) for host, port in servers]
            else:
                resolver = dns.asyncresolver.Resolver()
        except dns.resolver.NoResolverConfiguration as exc:
            raise ConfigurationError(f"no DNS servers configured and none usable in resolv.conf: {exc}") from None
        resolver.lifetime = timeout
        resolver.timeout = min(timeout, 2.0)  # per query to one server: a lost UDP packet costs at most this
        resolver.use_edns(0, 0, 1232)  # DKIM keys and SPF records outgrow 512 octets; 1232 avoids fragments
        self._cache = _AnswerCache(cache_size) if cache_size > 0 else None
        self._resolver = resolver
        self.timeout = timeout

    async def mx(self, domain: str) -> list[MxRecord]:
        """The MX records as published, by preference (a null MX shows up as host "")."""
        answer = await self._query(domain, dns.rdatatype.MX)
        records = [MxRecord(r.preference, _host_text(r.exchange)) for r in answer if isinstance(r, MX)]
        return sorted(records)

    async def mail_hosts(self, domain: str) -> list[MxRecord]:
        """Where mail for ``domain`` goes, best first (RFC 5321 §5.1, RFC 7505).

        No MX at all means the domain itself (an implicit MX; its addresses are for the caller to look
        up, since that is a lookup it makes for every host anyway). Raises NullMx for a lone null MX.
        A null MX beside real ones is a broken zone; the real ones are used, as the mail can get there.
        """
        records = await self.mx(domain)
        if not records:
            return [MxRecord(0, _host_text(_name(domain)), implicit=True)]
        usable = [r for r in records if r.host]
        if not usable:
            raise NullMx(f"{domain} publishes a null MX: it accepts no mail")
        return usable

    async def addresses(self, host: str) -> list[str]:
        """IPv4 addresses first, then IPv6: most senders' IPv4 paths are the well-trodden ones, and a
        host without IPv6 connectivity fails over quickly from an IPv6 address anyway. Raises
        NoSuchDomain only when neither lookup found the name."""
        found: list[str] = []
        missing: NoSuchDomain | None = None
        for lookup in (self.ipv4, self.ipv6):
            try:
                found += await lookup(host)
            except NoSuchDomain as exc:
                missing = exc
        if missing is not None and not found:
            raise missing
        return found

    async def ipv4(self, host: str) -> list[str]:
        """The A records alone: SPF's ``a``, ``mx`` and ``exists`` ask for one family at a time."""
        return [r.to_text() for r in await self._query(host, dns.rdatatype.A)]

    async def ipv6(self, host: str) -> list[str]:
        """The AAAA records alone, in dnspython's compressed text form."""
        return [r.to_text() for r in await self._query(host, dns.rdatatype.AAAA)]

    async def ptr(self, address: str) -> list[str]:
        """The names an IP address points back to (lower case, no trailing dot), for SPF's ``ptr`` and
        ``%{p}`` and for naming an SMTP client. Unverified: whoever controls the address's reverse zone
        writes them, so a caller must look each name up forward before believing it."""
        try:
            reverse = dns.reversename.from_address(address.strip("[]"))
        except (ValueError, dns.exception.SyntaxError):
            raise NoSuchDomain(f"{address!r} is not an IP address") from None
        answer = await self._query(reverse.to_text(), dns.rdatatype.PTR)
        return [_host_text(r.target) for r in answer if isinstance(r, PTR)]

    async def txt(self, name: str) -> list[str]:
        """Each record's character-strings joined without separators (RFC 7208 §3.3, RFC 6376 §3.6.2.2);
        bytes that are not UTF-8 are replaced, as no mail TXT record is meant to carry them."""
        return [record.decode("utf-8", "replace") for record in await self.txt_bytes(name)]

    async def txt_bytes(self, name: str) -> list[bytes]:
        """As ``txt`` but undecoded, for checkers that must judge the bytes themselves: an SPF record
        with a non-ASCII octet is a permerror, not a record with a replacement character in it."""
        answer = await self._query(name, dns.rdatatype.TXT)
        return [b"".join(r.strings) for r in answer if isinstance(r, TXT)]

    async def reachable(self) -> bool:
        """Whether the configured resolvers answer at all: tells "this domain's DNS is broken" from
        "our DNS is broken" after a DnsTemporaryFailure. A resolver that cannot resolve the root
        zone (SERVFAIL) or will not serve us (REFUSED) counts as unreachable."""
        try:
            await self._resolver.resolve(
                _PROBE_NAME,
                dns.rdatatype.NS,
                raise_on_no_answer=False,
                search=False,
                lifetime=min(self.timeout, _PROBE_TIMEOUT),
            )
        except dns.resolver.NXDOMAIN:
            return True
        except dns.exception.DNSException:
            return False
        return True

    async def _query(self, name: str, rdtype: dns.rdatatype.RdataType) -> dns.resolver.Answer:
        key = (name.rstrip(".").lower(), int(rdtype))
        if self._cache is not None and (hit := self._cache.get(key)) is not None:
            if isinstance(hit, str):
                raise NoSuchDomain(hit)
            return hit
        qname = _name(name)
        what = f"{dns.rdatatype.to_text(rdtype)} {_host_text(qname)}"
        try:
            answer = await self._resolver.resolve(qname, rdtype, raise_on_no_answer=False, search=False)
        except dns.resolver.NXDOMAIN as exc:
            reason = f"{_host_text(qname)} does not exist (NXDOMAIN)"
            if self._cache is not None:
                self._cache.put(key, reason, _negative_ttl((exc.kwargs.get("responses") or {}).get(qname)))
            raise NoSuchDomain(reason) from None
        except dns.resolver.LifetimeTimeout:
            raise DnsTemporaryFailure(f"DNS lookup of {what} timed out after {self.timeout:g}s") from None
        except dns.resolver.NoNameservers as exc:
            raise DnsTemporaryFailure(f"DNS lookup of {what} failed: {_server_errors(exc)}") from None
        except dns.exception.DNSException as exc:  # YXDOMAIN, malformed answers
            raise DnsTemporaryFailure(f"DNS lookup of {what} failed: {exc}") from None
        if self._cache is not None:
            ttl = answer.expiration - time.time() if answer.rrset is not None else _negative_ttl(answer.response)
            self._cache.put(key, answer, ttl)
        return answer


class _AnswerCache:
    """Answers (and "no such domain") by (name, type), each until its TTL runs out and never longer than
    ``MAX_CACHE_TTL``; the least recently stored go first when it is full. It sits in front of
    dnspython rather than in it: a hit there still parses the name and builds a resolution, which was a
    fifth of the work of receiving a message. A negative answer is kept only when its SOA gives it a
    negative TTL (RFC 2308 5)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._entries: OrderedDict[tuple[str, int], tuple[float, dns.resolver.Answer | str]] = OrderedDict()

    def get(self, key: tuple[str, int]) -> dns.resolver.Answer | str | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= time.monotonic():
            del self._entries[key]
            return None
        return entry[1]

    def put(self, key: tuple[str, int], value: dns.resolver.Answer | str, ttl: float) -> None:
        if ttl <= 0:
            return
        self._entries.pop(key, None)
        self._entries[key] = (time.monotonic() + min(ttl, MAX_CACHE_TTL), value)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)


def _negative_ttl(response: dns.message.Message | None) -> float:
    """RFC 2308 5: the lesser of the SOA's own TTL and its MINIMUM; 0 (do not keep) without an SOA."""
    for rrset in response.authority if response is not None else ():
        if rrset.rdtype == dns.rdatatype.SOA:
            return float(min(rrset.ttl, *(r.minimum for r in rrset)))
    return 0.0


def _name(text: str) -> dns.name.Name:
    """An absolute name; a U-label domain (SMTPUTF8 mail) is looked up by its A-label."""
    try:
        return dns.name.from_text(text.rstrip(".") + ".")
    except (dns.exception.DNSException, UnicodeError) as exc:
        raise NoSuchDomain(f"{text!r} is not a valid domain name: {exc}") from None


def _ip(host: str) -> str:
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        raise ConfigurationError(f"DNS server {host!r} must be an IP address, not a name") from None


def _server_errors(exc: dns.resolver.NoNameservers) -> str:
    """Say "SERVFAIL from Do53:10.0.0.53@53" rather than dump dnspython's tuples."""
    parts = []
    for error in exc.kwargs.get("errors") or []:
        server, problem = error[0], error[3]
        parts.append(f"{problem} from {server}")
    return "; ".join(parts) or "no DNS server answered"
