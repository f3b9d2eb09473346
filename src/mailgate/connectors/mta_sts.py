"""MTA-STS (RFC 8461): which MX hosts a domain vouches for, and whether they must be reached over
TLS with a valid certificate.

Discovery follows RFC 8461 §5: the ``_mta-sts`` TXT record announces a policy id; the policy itself
comes over HTTPS from ``mta-sts.<domain>`` and is cached for its ``max_age``. A cached policy outlives
a missing TXT record and a failed fetch (an attacker who can block those must not be able to switch
the policy off); with no cached policy, any failure means "no policy", as the RFC requires.

The HTTPS host is resolved with our own DnsResolver and the request goes to that address with the
host name as SNI and Host header, so MTA-STS sees the same DNS view as MX routing (and tests point it
at loopback with nothing but DNS records). Every fetch closes its connection: a pooled connection to
a shared hosting address, verified for one domain's name, must not carry another domain's policy.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import dns.exception
import dns.name
import httpx2

from mailgate.connectors.dns import DnsError, DnsResolver
from mailgate.observability.logging import get_logger

log = get_logger("mailgate.connectors.mta_sts")

StsMode = Literal["enforce", "testing", "none"]

MAX_AGE_LIMIT = 31_557_600  # RFC 8461 §3.2: about a year
POLICY_PATH = "/.well-known/mta-sts.txt"
_MAX_POLICY_BYTES = 64 * 1024  # RFC 8461 §3.3: senders may refuse larger bodies

_RECORD_PREFIX = "v=STSv1;"
_FIELD_DELIM = re.compile(r"[ \t]*;[ \t]*")
_RECORD_ID = re.compile(r"id=([A-Za-z0-9]{1,32})")
_RECORD_EXTENSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}=[\x21-\x3a\x3c\x3e-\x7e]+")
_MAX_AGE = re.compile(r"[0-9]{1,10}")
_MODES: dict[str, StsMode] = {"enforce": "enforce", "testing": "testing", "none": "none"}


class PolicyError(ValueError):
    """A policy body that does not parse; treated like a failed fetch."""


@dataclass(frozen=True, slots=True)
class StsPolicy:
    """``mx`` holds the patterns lower case without a final dot; ``max_age`` is capped at a year."""

    id: str
    mode: StsMode
    mx: tuple[str, ...]
    max_age: int

    def matches(self, host: str) -> bool:
        return any(mx_matches(pattern, host) for pattern in self.mx)


def mx_matches(pattern: str, host: str) -> bool:
    """RFC 8461 §4.1: ``*.example.com`` stands for exactly one more label, so it matches
    ``mx1.example.com`` but neither ``example.com`` nor ``a.mx1.example.com``."""
    pattern = pattern.lower().rstrip(".")
    host = host.lower().rstrip(".")
    if pattern.startswith("*."):
        label, dot, rest = host.partition(".")
        return bool(label) and bool(dot) and rest == pattern[2:]
    return host == pattern


def parse_record(texts: Sequence[str]) -> str | None:
    """The policy id announced by the ``_mta-sts`` TXT records, or None when there is no usable
    record: records not starting ``v=STSv1;`` are ignored, and more than one, or one that does not
    parse, means no policy (RFC 8461 §3.1)."""
    candidates = [t for t in texts if t.startswith(_RECORD_PREFIX)]
    if len(candidates) != 1:
        return None
    fields = [f for f in _FIELD_DELIM.split(candidates[0][len(_RECORD_PREFIX) :].strip(" \t")) if f]
    policy_id: str | None = None
    for field in fields:
        if m := _RECORD_ID.fullmatch(field):
            if policy_id is not None:
                return None
            policy_id = m.group(1)
        elif not _RECORD_EXTENSION.fullmatch(field):
            return None
    return policy_id


def parse_policy(text: str, policy_id: str) -> StsPolicy:
    """Parse a policy body (RFC 8461 §3.2). Unknown keys are ignored, as the RFC's extension rule
    asks; for a repeated single-valued key the first one counts. Raises PolicyError."""
    values: dict[str, str] = {}
    mx: list[str] = []
    for raw in text.splitlines():
        line = raw.strip(" \t")
        if not line:
            continue
        key, colon, value = line.partition(":")
        if not colon:
            raise PolicyError(f"policy line {line[:60]!r} is not 'key: value'")
        key, value = key.strip(" \t"), value.strip(" \t")
        if key == "mx":
            mx.append(value.lower().rstrip("."))
        else:
            values.setdefault(key, value)
    if values.get("version") != "STSv1":
        raise PolicyError(f"policy version is {values.get('version')!r}, not 'STSv1'")
    mode = _MODES.get(values.get("mode", ""))
    if mode is None:
        raise PolicyError(f"policy mode is {values.get('mode')!r}, not enforce, testing or none")
    max_age = values.get("max_age", "")
    if not _MAX_AGE.fullmatch(max_age):
        raise PolicyError(f"policy max_age is {max_age!r}, not a number of seconds")
    if not mx and mode != "none":
        raise PolicyError(f"a policy in {mode} mode lists no mx patterns")
    return StsPolicy(policy_id, mode, tuple(mx), min(int(max_age), MAX_AGE_LIMIT))


@dataclass(slots=True)
class _Cached:
    policy: StsPolicy
    expires: float


class MtaSts:
    """Discovers, fetches and caches the policies of recipient domains.

    ``client`` is for tests and special egress: it must verify certificates against the CAs the
    operator trusts; by default one is made from ``tls_context`` (the system CAs if None) and closed
    by ``aclose``. ``https_port`` exists so tests can serve policies from an unprivileged port.
    """

    def __init__(
        self,
        resolver: DnsResolver,
        *,
        client: httpx2.AsyncClient | None = None,
        tls_context: ssl.SSLContext | None = None,
        https_port: int = 443,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._resolver = resolver
        self._given_client = client
        self._own_client: httpx2.AsyncClient | None = None
        self._tls_context = tls_context
        self._timeout = timeout
        self._port = https_port
        self._clock = clock
        self._cache: dict[str, _Cached] = {}
        self._inflight: dict[str, asyncio.Task[StsPolicy | None]] = {}

    async def policy(self, domain: str) -> StsPolicy | None:
        """The policy in force for ``domain``, or None. Never raises for what DNS or the web server
        did; concurrent calls for one domain share one discovery."""
        key = domain.lower().rstrip(".")
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.create_task(self._discover(key), name=f"MTA-STS discovery for {key}")
            self._inflight[key] = task
            task.add_done_callback(lambda _: self._inflight.pop(key, None))
        return await asyncio.shield(task)

    async def aclose(self) -> None:
        """Close the client made here once the discoveries in progress are done (a sender may be
        closed while it sends; those sends must not fail for it). The cache is kept, and a later
        ``policy`` call opens a new client, so senders stay usable after ``close``."""
        if self._inflight:
            await asyncio.wait(list(self._inflight.values()))
        client, self._own_client = self._own_client, None
        if client is not None:
            await client.aclose()

    def _client(self) -> httpx2.AsyncClient:
        if self._given_client is not None:
            return self._given_client
        if self._own_client is None:
            self._own_client = httpx2.AsyncClient(
                verify=self._tls_context or ssl.create_default_context(),
                timeout=self._timeout,
                trust_env=False,  # the request goes to an address with SNI set: a proxy would break that
                follow_redirects=False,
            )
        return self._own_client

    async def _discover(self, domain: str) -> StsPolicy | None:
        cached = self._cache.get(domain)
        if cached is not None and cached.expires <= self._clock():
            del self._cache[domain]
            cached = None
        try:
            policy_id = parse_record(await self._resolver.txt(f"_mta-sts.{domain}"))
        except DnsError as exc:
            if not exc.permanent:
                log.info("MTA-STS record lookup failed", domain=domain, error=exc.reason)
            policy_id = None
        if cached is not None and policy_id in (None, cached.policy.id):
            return cached.policy
        if policy_id is None:
            return None
        try:
            policy = parse_policy(await self._fetch(domain), policy_id)
        except (PolicyError, _FetchError) as exc:
            log.warning("MTA-STS policy unavailable", domain=domain, error=str(exc), using_cached=cached is not None)
            return cached.policy if cached is not None else None
        self._cache[domain] = _Cached(policy, self._clock() + policy.max_age)
        return policy

    async def _fetch(self, domain: str) -> str:
        try:
            host = dns.name.from_text(f"mta-sts.{domain}").to_text(omit_final_dot=True)
        except (dns.exception.DNSException, UnicodeError) as exc:
            raise _FetchError(f"mta-sts.{domain} is not a valid host name: {exc}") from None
        try:
            addresses = await self._resolver.addresses(host)
        except DnsError as exc:
            raise _FetchError(exc.reason) from None
        if not addresses:
            raise _FetchError(f"{host} has no address records")
        failure = _FetchError(f"{host} could not be reached")
        for address in addresses:
            try:
                return await self._get(host, address)
            except _FetchError as exc:
                failure = exc
        raise failure

    async def _get(self, host: str, address: str) -> str:
        authority = f"[{address}]" if ":" in address else address
        url = f"https://{authority}:{self._port}{POLICY_PATH}"
        headers = {"Host": host if self._port == 443 else f"{host}:{self._port}", "Connection": "close"}
        where = f"https://{host}{POLICY_PATH} at {address}"
        try:
            async with self._client().stream(
                "GET", url, headers=headers, extensions={"sni_hostname": host}, follow_redirects=False
            ) as response:
                if response.status_code != 200:
                    raise _FetchError(f"{where} answered HTTP {response.status_code}")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > _MAX_POLICY_BYTES:
                        raise _FetchError(f"{where} sent more than {_MAX_POLICY_BYTES} bytes")
        except httpx2.HTTPError as exc:
            raise _FetchError(f"fetching {where} failed: {exc.__class__.__name__}: {exc}") from None
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            raise _FetchError(f"{where} sent a policy that is not UTF-8") from None


class _FetchError(Exception):
    pass
