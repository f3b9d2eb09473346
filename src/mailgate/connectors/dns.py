"""A small async DNS facade on dnspython for everything mail needs to look up: MX (with the RFC 5321
§5.1 and RFC 7505 rules), addresses and TXT (MTA-STS now; SPF, DKIM and DMARC when receiving).

Callers get plain values or one of three exceptions, never a dnspython type: permanent answers
(the name does not exist, or is not a valid name) are told apart from failures to get an answer at
all, because the first bounces mail and the second only defers it. An empty list is "the name exists
but has no records of this type" (NODATA), which most callers read as "none".
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
from dns.rdtypes.ANY.MX import MX
from dns.rdtypes.ANY.TXT import TXT

from mailgate.domain.errors import ConfigurationError

# The probe ``reachable`` sends: every recursive resolver answers the root zone from its cache.
_PROBE_NAME = dns.name.root
_PROBE_TIMEOUT = 2.0


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

    ``timeout`` bounds one lookup with every retry and server included. There is no cache here: the
    recursive resolver already has one, and a second one would make tests that change their zone
    between steps lie.
    """

    def __init__(self, servers: Sequence[tuple[str, int]] | None = None, *, timeout: float = 5.0) -> None:
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
        for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            try:
                found += [r.to_text() for r in await self._query(host, rdtype)]
            except NoSuchDomain as exc:
                missing = exc
        if missing is not None and not found:
            raise missing
        return found

    async def txt(self, name: str) -> list[str]:
        """Each record's character-strings joined without separators (RFC 7208 §3.3, RFC 6376 §3.6.2.2);
        bytes that are not UTF-8 are replaced, as no mail TXT record is meant to carry them."""
        answer = await self._query(name, dns.rdatatype.TXT)
        return [b"".join(r.strings).decode("utf-8", "replace") for r in answer if isinstance(r, TXT)]

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
        qname = _name(name)
        what = f"{dns.rdatatype.to_text(rdtype)} {_host_text(qname)}"
        try:
            return await self._resolver.resolve(qname, rdtype, raise_on_no_answer=False, search=False)
        except dns.resolver.NXDOMAIN:
            raise NoSuchDomain(f"{_host_text(qname)} does not exist (NXDOMAIN)") from None
        except dns.resolver.LifetimeTimeout:
            raise DnsTemporaryFailure(f"DNS lookup of {what} timed out after {self.timeout:g}s") from None
        except dns.resolver.NoNameservers as exc:
            raise DnsTemporaryFailure(f"DNS lookup of {what} failed: {_server_errors(exc)}") from None
        except dns.exception.DNSException as exc:  # YXDOMAIN, malformed answers
            raise DnsTemporaryFailure(f"DNS lookup of {what} failed: {exc}") from None


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
