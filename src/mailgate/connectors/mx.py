"""Direct delivery: look up each recipient domain's MX hosts and speak SMTP to them, as an MTA does.

Recipients are grouped by domain and each domain gets one transaction, tried host by host in MX
preference order (RFC 5321 §5.1) until one takes it; a host that cannot be reached, fails TLS, or
answers 421 passes the recipients it had not yet decided on to the next one. RCPT and DATA replies
are the recipient's outcome and end the search, as they would at any other host of that domain.

Which failures are the connector's (``Deferred.connector_fault``): only those of the whole path,
i.e. our own resolver not answering. A domain whose DNS is broken, whose hosts are down, or whose
MTA-STS policy cannot be met is that domain's problem: marking it a connector fault would let one
bad destination open the breaker and stop (or fail over) the mail for every other domain. Because a
single failed query cannot say whose fault it is, a transient DNS failure is followed by a probe of
the resolver itself (``DnsResolver.reachable``). The price: a host whose outbound port 25 is blocked
sees every domain deferred rather than a tripped breaker; telling that apart needs failures across
many domains, which is the router's view, not one send's.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Literal

from mailgate.connectors._smtp import (
    PathFailure,
    SessionOptions,
    address_problem,
    client_tls_context,
    open_session,
    quit_quietly,
    start_tls,
    transact,
    valid_helo_name,
)
from mailgate.connectors.base import Sender
from mailgate.connectors.dns import DnsError, DnsResolver, MxRecord, NoSuchDomain, NullMx
from mailgate.connectors.mta_sts import MtaSts, StsPolicy
from mailgate.connectors.smtp_client import SmtpClient
from mailgate.domain.delivery import Bounced, Deferred, DeliveryOutcome, Failed, Reply
from mailgate.domain.errors import InvalidInput
from mailgate.observability.logging import get_logger

log = get_logger("mailgate.connectors.mx")

TlsPolicy = Literal["may", "encrypt", "none"]
# Per connection: what the config asks for, or "verify" where MTA-STS enforces a valid certificate.
_TlsLevel = Literal["none", "may", "encrypt", "verify"]

# Addresses tried per domain and attempt, over all its MX hosts (Postfix: smtp_mx_address_limit): a
# domain with many dead hosts must not hold a delivery slot for many connect timeouts.
MAX_ADDRESSES_PER_DOMAIN = 5


@dataclass(frozen=True)
class MxConfig:
    """``tls="may"`` is opportunistic STARTTLS (RFC 7435): used when offered, certificates not checked
    (most MX certificates would fail), and a failed handshake retried once in clear text, as Postfix
    does; ``encrypt`` requires STARTTLS but still checks no certificate; ``none`` never starts TLS.
    MTA-STS ``enforce`` overrides all three for the hosts it covers: TLS with a certificate valid for
    the MX host name against ``ca_file`` (the system CAs if unset).

    ``port`` is 25 on the Internet; other values are for tests and closed networks.
    """

    port: int = 25
    tls: TlsPolicy = "may"
    mta_sts: bool = True
    ca_file: str | None = None
    helo_name: str | None = None
    timeout: float = 60
    max_connections_per_domain: int = 3
    max_messages_per_connection: int = 100
    idle_timeout: float = 5

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> InvalidInput:
            return InvalidInput(f"{name}: {why}", field=name)

        if not 1 <= self.port <= 65535:
            raise bad("port", "must be between 1 and 65535")
        if self.tls not in ("may", "encrypt", "none"):
            raise bad("tls", "must be one of may, encrypt, none")
        for name in ("timeout", "idle_timeout"):
            if not getattr(self, name) > 0:
                raise bad(name, "must be positive")
        for name in ("max_connections_per_domain", "max_messages_per_connection"):
            if getattr(self, name) < 1:
                raise bad(name, "must be at least 1")
        if self.helo_name is not None and not valid_helo_name(self.helo_name):
            raise bad("helo_name", "must be a host name without spaces or control characters")


@dataclass(frozen=True, slots=True)
class _Hop:
    host: str
    tls: _TlsLevel
    implicit: bool = False


_PoolKey = tuple[str, str, _TlsLevel]  # MX host name, address, TLS level


@dataclass(eq=False)
class _Connection:
    client: SmtpClient
    generation: int
    transactions: int = 0
    idle_since: float = 0.0


class MxSender(Sender):
    """Delivers to the recipients' own mail servers; see the module docstring for the outcomes.

    At most ``max_connections_per_domain`` transactions run at once per recipient domain. A
    connection that finished a transaction waits ``idle_timeout`` seconds for the next message to the
    same host and TLS level, then says QUIT: bursts to one domain (a newsletter to gmail.com) reuse
    it, while the far more common single message costs nothing extra.
    """

    def __init__(
        self,
        config: MxConfig,
        *,
        name: str = "mx",
        resolver: DnsResolver,
        mta_sts: MtaSts | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self._resolver = resolver
        try:
            verified = client_tls_context(validate_certs=True, ca_file=config.ca_file)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise InvalidInput(f"ca_file: cannot load {config.ca_file!r}: {exc}", field="ca_file") from None
        self._verified = verified
        self._unverified = _unverified_context()
        self._own_mta_sts = mta_sts is None and config.mta_sts
        if self._own_mta_sts:
            mta_sts = MtaSts(resolver, tls_context=verified)
        self._mta_sts = mta_sts
        self._helo_name = config.helo_name
        self._domain_slots: dict[str, _Slot] = {}
        self._idle: dict[_PoolKey, list[_Connection]] = {}
        self._generation = 0
        self._reaper: asyncio.Task[None] | None = None

    @property
    def open_connections(self) -> int:
        """Idle pooled connections right now (for metrics and tests)."""
        return sum(1 for conns in self._idle.values() for c in conns if c.client.is_connected)

    async def send(self, mail_from: str, recipients: Sequence[str], message: bytes) -> dict[str, DeliveryOutcome]:
        wanted = list(dict.fromkeys(recipients))
        if not wanted:
            return {}
        problem = address_problem(mail_from, sender=True)
        if problem:
            return {r: Failed(f"sender {problem}") for r in wanted}
        outcomes: dict[str, DeliveryOutcome] = {}
        by_domain: dict[str, list[str]] = {}
        for rcpt in wanted:
            problem = address_problem(rcpt)
            domain = rcpt.rpartition("@")[2].lower().rstrip(".")
            if problem:
                outcomes[rcpt] = Failed(problem)
            elif "@" not in rcpt:
                outcomes[rcpt] = Failed(f"{rcpt!r} has no domain to look up")
            elif domain.startswith("["):
                outcomes[rcpt] = Failed(f"address literals such as {domain} are not routed by MX")
            else:
                by_domain.setdefault(domain, []).append(rcpt)
        results = await asyncio.gather(*(self._deliver(d, mail_from, rs, message) for d, rs in by_domain.items()))
        for result in results:
            outcomes.update(result)
        return {r: outcomes[r] for r in wanted}

    # ----- one domain -----

    async def _deliver(
        self, domain: str, mail_from: str, recipients: list[str], message: bytes
    ) -> dict[str, DeliveryOutcome]:
        try:
            hosts = await self._resolver.mail_hosts(domain)
        except DnsError as exc:
            return dict.fromkeys(recipients, await self._dns_outcome(domain, exc))
        policy = await self._mta_sts.policy(domain) if self._mta_sts is not None else None
        hops = self._hops(domain, hosts, policy)
        if not hops:
            assert policy is not None
            reason = f"no MX host of {domain} matches its MTA-STS policy (mx: {', '.join(policy.mx)})"
            return dict.fromkeys(recipients, Deferred(reason))
        async with self._domain_slot(domain):
            return await self._try_hops(domain, hops, mail_from, recipients, message)

    async def _dns_outcome(self, domain: str, exc: DnsError) -> DeliveryOutcome:
        if isinstance(exc, NullMx):
            return Bounced(Reply(556, "5.1.10", f"{domain} accepts no mail (null MX)"), exc.reason)
        if isinstance(exc, NoSuchDomain):
            return Bounced(Reply(550, "5.1.2", f"domain {domain} does not exist"), exc.reason)
        if await self._resolver.reachable():
            return Deferred(exc.reason)
        return Deferred(f"our DNS resolver is not answering: {exc.reason}", connector_fault=True)

    def _hops(self, domain: str, hosts: list[MxRecord], policy: StsPolicy | None) -> list[_Hop]:
        """Hosts to try, best first, each with the TLS it must use (RFC 8461 §5: in enforce mode only
        hosts the policy names, with a valid certificate; in testing mode everything, logged)."""
        tls: _TlsLevel = self.config.tls
        if policy is None or policy.mode == "none":
            return [_Hop(h.host, tls, h.implicit) for h in hosts]
        outside = [h.host for h in hosts if not policy.matches(h.host)]
        if policy.mode == "testing":
            if outside:
                log.warning(
                    "MX hosts outside the MTA-STS policy (testing mode: delivering anyway)",
                    domain=domain,
                    hosts=outside,
                    policy_id=policy.id,
                )
            return [_Hop(h.host, tls, h.implicit) for h in hosts]
        if outside:
            log.warning(
                "MX hosts outside the MTA-STS policy skipped", domain=domain, hosts=outside, policy_id=policy.id
            )
        return [_Hop(h.host, "verify", h.implicit) for h in hosts if policy.matches(h.host)]

    async def _try_hops(
        self, domain: str, hops: list[_Hop], mail_from: str, recipients: list[str], message: bytes
    ) -> dict[str, DeliveryOutcome]:
        outcomes: dict[str, DeliveryOutcome] = {}
        pending = list(recipients)
        failures: list[str] = []  # every host's, best first: the best host's is usually the telling one
        last_reply: Reply | None = None
        tried = 0
        for hop in hops:
            try:
                addresses = await self._resolver.addresses(hop.host)
            except DnsError as exc:
                failures.append(exc.reason)
                continue
            if not addresses:
                if hop.implicit:  # RFC 5321 §5.1: no MX and no address: the domain takes no mail
                    reply = Reply(550, "5.1.2", f"{domain} has no MX and no address records")
                    return dict.fromkeys(recipients, Bounced(reply, f"{domain} publishes neither MX nor A/AAAA"))
                failures.append(f"{hop.host} has no address records")
            for address in addresses[: MAX_ADDRESSES_PER_DOMAIN - tried]:
                tried += 1
                try:
                    outcomes.update(await self._session(hop, address, mail_from, pending, message))
                    return outcomes
                except PathFailure as failure:
                    outcomes.update(failure.decided)
                    pending = [r for r in pending if r not in outcomes]
                    failures.append(f"{hop.host} [{address}]: {failure.reason}")
                    last_reply = failure.reply or last_reply
                    log.info("MX host failed", domain=domain, host=hop.host, address=address, error=failure.reason)
                    if not pending:
                        return outcomes
            if tried >= MAX_ADDRESSES_PER_DOMAIN:
                break
        reason = f"no MX host of {domain} took the message ({tried} addresses tried): {'; '.join(failures)}"
        outcomes.update(dict.fromkeys(pending, Deferred(reason, last_reply)))
        return outcomes

    @contextlib.asynccontextmanager
    async def _domain_slot(self, domain: str) -> AsyncIterator[None]:
        slot = self._domain_slots.get(domain)
        if slot is None:
            slot = self._domain_slots[domain] = _Slot(asyncio.Semaphore(self.config.max_connections_per_domain))
        slot.users += 1
        try:
            async with slot.semaphore:
                yield
        finally:
            slot.users -= 1
            if not slot.users:
                del self._domain_slots[domain]

    # ----- one host -----

    async def _session(
        self, hop: _Hop, address: str, mail_from: str, recipients: list[str], message: bytes
    ) -> dict[str, DeliveryOutcome]:
        key: _PoolKey = (hop.host, address, hop.tls)
        conn = self._take_idle(key)
        for attempt in range(2):
            if conn is None:
                conn = _Connection(await self._open(hop, address), self._generation)
            try:
                outcomes = await transact(
                    conn.client,
                    mail_from,
                    recipients,
                    message,
                    reset=conn.transactions > 0,
                    where=self._where(hop.host, address),
                    reply_timeout=self.config.timeout,
                )
            except PathFailure as failure:
                conn.client.close()
                if failure.retry_safe and attempt == 0:
                    conn = None  # the pooled connection was dead: once more, on a fresh one
                    continue
                raise
            except BaseException:
                conn.client.close()
                raise
            conn.transactions += 1
            await self._release(key, conn)
            return outcomes
        raise AssertionError("unreachable: the second attempt always returns or raises")

    def _where(self, host: str, address: str) -> str:
        return f"{host} [{address}]:{self.config.port}"

    async def _open(self, hop: _Hop, address: str) -> SmtpClient:
        """A session to ``address`` with TLS as ``hop.tls`` says. The client connects to the address we
        resolved (never letting the OS resolver pick one) and verifies the certificate against the MX
        host name, the identity MTA-STS vouches for."""
        if self._helo_name is None:
            # getfqdn may block on a resolver; once per sender, off the loop
            fqdn = await asyncio.to_thread(socket.getfqdn)
            self._helo_name = fqdn if valid_helo_name(fqdn) else "localhost"
        where = self._where(hop.host, address)
        options = SessionOptions(
            host=address,
            port=self.config.port,
            tls="none",
            tls_context=None,
            timeout=self.config.timeout,
            helo_name=self._helo_name,
        )
        client = await open_session(options)
        if hop.tls == "none":
            return client
        if not client.supports("starttls"):
            if hop.tls == "may":
                return client
            client.close()
            why = "its MTA-STS policy" if hop.tls == "verify" else "this connector (tls=encrypt)"
            raise PathFailure(f"{where} does not offer STARTTLS, which {why} requires")
        context = self._verified if hop.tls == "verify" else self._unverified
        try:
            await start_tls(client, context, hop.host, options)
        except PathFailure as failure:
            client.close()
            if hop.tls != "may":
                raise
            log.info("STARTTLS failed; retrying in clear text", host=hop.host, address=address, error=failure.reason)
            return await open_session(options)
        return client

    # ----- idle connections -----

    def _take_idle(self, key: _PoolKey) -> _Connection | None:
        idle = self._idle.get(key, [])
        while idle:
            conn = idle.pop()
            if conn.client.is_connected:
                return conn
            conn.client.close()
        return None

    async def _release(self, key: _PoolKey, conn: _Connection) -> None:
        if (
            conn.generation != self._generation
            or conn.transactions >= self.config.max_messages_per_connection
            or not conn.client.is_connected
        ):
            await self._quit(conn)
            return
        conn.idle_since = asyncio.get_running_loop().time()
        self._idle.setdefault(key, []).append(conn)
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.create_task(self._reap(), name=f"{self.name}: close idle SMTP connections")

    async def _reap(self) -> None:
        loop = asyncio.get_running_loop()
        limit = self.config.idle_timeout
        while any(self._idle.values()):
            oldest = min(c.idle_since for conns in self._idle.values() for c in conns)
            await asyncio.sleep(max(0.0, oldest + limit - loop.time()))
            now = loop.time()
            expired: list[_Connection] = []
            for key, conns in list(self._idle.items()):
                expired += [c for c in conns if now - c.idle_since >= limit]
                kept = [c for c in conns if now - c.idle_since < limit]
                if kept:
                    self._idle[key] = kept
                else:
                    del self._idle[key]
            await asyncio.gather(*(self._quit(c) for c in expired))

    async def _quit(self, conn: _Connection) -> None:
        await quit_quietly(conn.client, self.config.timeout)

    async def close(self) -> None:
        """Closes idle connections now and busy ones when their send finishes; the sender stays
        usable, like the relay's (the router may close a sender it still holds)."""
        self._generation += 1
        idle = [c for conns in self._idle.values() for c in conns]
        self._idle = {}
        reaper, self._reaper = self._reaper, None
        if reaper is not None and not reaper.done():
            reaper.cancel()
            await asyncio.wait([reaper])
        await asyncio.gather(*(self._quit(c) for c in idle))
        if self._own_mta_sts and self._mta_sts is not None:
            await self._mta_sts.aclose()


@functools.cache
def _unverified_context() -> ssl.SSLContext:
    """Opportunistic TLS checks no certificate, so one context without any CAs loaded serves every
    sender (loading the system bundle for nothing costs tens of milliseconds)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


@dataclass(eq=False)
class _Slot:
    semaphore: asyncio.Semaphore
    users: int = 0
