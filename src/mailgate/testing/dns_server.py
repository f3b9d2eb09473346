"""A tiny authoritative DNS server on loopback for tests: every DNS-dependent path (MX routing,
MTA-STS, SPF, DKIM, DMARC) is exercised over real UDP and TCP instead of a patched resolver.

Usage::

    async with DnsServer({"example.test": {"MX": "10 mx.example.test.", "TXT": "v=spf1 -all"}}) as dns:
        dns.add("mx.example.test", "A", "127.0.0.1")
        dns.fail("broken.test", "servfail")        # or "timeout" (never answer), "refused"
        resolver = DnsResolver(dns.servers, timeout=1)

It answers exactly what it was given: names compare case-insensitively, a CNAME is followed inside
the zone, a name with records or with names below it exists (NOERROR, maybe without answers), every
other name is NXDOMAIN. TXT values are taken as the record's text (quoted and split into 255-octet
strings here); every other type uses its zone-file syntax. Answers longer than the client's UDP
payload are truncated, so clients retry over TCP on the same port, as they would with a real server.

It runs in the caller's event loop (``async with`` / ``start``), or in a thread of its own (``with``)
for synchronous code that queries DNS from the loop's own thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import threading
from collections.abc import Iterable, Mapping
from typing import Literal, cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from dns.rdtypes.ANY.CNAME import CNAME

log = logging.getLogger(__name__)

FailMode = Literal["servfail", "refused", "timeout"]
ZoneValue = str | Iterable[str]

_MAX_CNAME_CHAIN = 8
_UDP_DEFAULT_PAYLOAD = 512


def _txt(value: str) -> str:
    """Zone-file text for a TXT record holding ``value`` exactly (UTF-8, split into 255-octet strings)."""
    raw = value.encode()
    chunks = [raw[i : i + 255] for i in range(0, len(raw), 255)] or [b""]
    return " ".join('"' + "".join(_escape(b) for b in chunk) + '"' for chunk in chunks)


def _escape(octet: int) -> str:
    return chr(octet) if 32 <= octet < 127 and octet not in b'"\\' else f"\\{octet:03d}"


class DnsServer:
    """``zone`` maps a name to {type: value or values}; ``ttl`` is every record's TTL. With
    ``negative_ttl`` > 0 a negative answer (NXDOMAIN, or a name without the type asked) carries an SOA
    saying so, as real servers' do, and caching resolvers keep it that long; 0 (the default) leaves the
    SOA out, so nothing is cached negatively and a test may add a record it just found missing."""

    def __init__(
        self,
        zone: Mapping[str, Mapping[str, ZoneValue]] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ttl: int = 60,
        negative_ttl: int = 0,
    ) -> None:
        self.host = host
        self.port = port
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.queries: list[tuple[str, str]] = []
        """(name, type) of every question received, lower case without the final dot."""
        self._records: dict[tuple[dns.name.Name, dns.rdatatype.RdataType], dns.rrset.RRset] = {}
        self._failing: dict[dns.name.Name, FailMode] = {}
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._tcp_clients: set[asyncio.StreamWriter] = set()
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None
        for name, types in (zone or {}).items():
            for rdtype, values in types.items():
                for value in [values] if isinstance(values, str) else values:
                    self.add(name, rdtype, value)

    @property
    def servers(self) -> list[tuple[str, int]]:
        """What ``DnsResolver`` takes."""
        return [(self.host, self.port)]

    # ----- the zone -----

    def add(self, name: str, rdtype: str, value: str, *, ttl: int | None = None) -> None:
        """Add one record, e.g. ``add("example.test", "MX", "10 mx.example.test.")``."""
        owner = dns.name.from_text(name)
        kind = dns.rdatatype.from_text(rdtype)
        text = _txt(value) if kind == dns.rdatatype.TXT else value
        rdata = dns.rdata.from_text(dns.rdataclass.IN, kind, text, origin=dns.name.root, relativize=False)
        rrset = self._records.get((owner, kind))
        if rrset is None:
            rrset = self._records[(owner, kind)] = dns.rrset.RRset(owner, dns.rdataclass.IN, kind)
        rrset.add(rdata, self.ttl if ttl is None else ttl)

    def remove(self, name: str, rdtype: str | None = None) -> None:
        """Drop a name's records of one type, or all of them."""
        owner = dns.name.from_text(name)
        kinds = [dns.rdatatype.from_text(rdtype)] if rdtype else [k for (n, k) in self._records if n == owner]
        for kind in kinds:
            self._records.pop((owner, kind), None)

    def fail(self, name: str, mode: FailMode | None = "servfail") -> None:
        """Make every question about ``name`` fail (None heals it)."""
        owner = dns.name.from_text(name)
        if mode is None:
            self._failing.pop(owner, None)
        else:
            self._failing[owner] = mode

    # ----- answering -----

    def _exists(self, name: dns.name.Name) -> bool:
        """A name with records, or an empty non-terminal (only names below it have records)."""
        owners = list(self._records)  # one atomic copy: the threaded mode may add records meanwhile
        return any(owner.is_subdomain(name) for owner, _ in owners)

    def answer(self, query: dns.message.Message) -> dns.message.Message | None:
        """The response to ``query``, or None to stay silent."""
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if not query.question:
            response.set_rcode(dns.rcode.FORMERR)
            return response
        question = query.question[0]
        name, kind = question.name, dns.rdatatype.RdataType(question.rdtype)
        self.queries.append((name.to_text(omit_final_dot=True).lower(), dns.rdatatype.to_text(kind)))
        for _ in range(_MAX_CNAME_CHAIN):
            failing = self._failing.get(name)
            if failing == "timeout":
                return None
            if failing is not None:
                response.set_rcode(dns.rcode.SERVFAIL if failing == "servfail" else dns.rcode.REFUSED)
                return response
            cname = self._records.get((name, dns.rdatatype.CNAME))
            if cname is not None and kind != dns.rdatatype.CNAME:
                response.answer.append(cname)
                target = next(iter(cname))
                assert isinstance(target, CNAME)
                name = target.target
                continue
            rrset = self._records.get((name, kind))
            if rrset is not None:
                response.answer.append(rrset)
                return response
            if not self._exists(name):
                response.set_rcode(dns.rcode.NXDOMAIN)
            if self.negative_ttl > 0:
                response.authority.append(self._soa(name))
            return response
        response.set_rcode(dns.rcode.SERVFAIL)  # a CNAME loop
        return response

    def _soa(self, name: dns.name.Name) -> dns.rrset.RRset:
        """The SOA of a negative answer: owned by the name's top two labels, as if each test domain
        were a zone of its own; its MINIMUM is the negative TTL (RFC 2308 4)."""
        zone = dns.name.Name(name.labels[-3:]) if len(name.labels) > 3 else name
        text = f"ns.{zone.to_text()} hostmaster.{zone.to_text()} 1 3600 600 86400 {self.negative_ttl}"
        soa = dns.rrset.RRset(zone, dns.rdataclass.IN, dns.rdatatype.SOA)
        soa.add(dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.SOA, text), self.negative_ttl)
        return soa

    def _reply_bytes(self, data: bytes, *, udp: bool) -> bytes | None:
        try:
            query = dns.message.from_wire(data)
        except dns.exception.DNSException:
            return None
        try:
            response = self.answer(query)
        except Exception:  # a bug here must show as a traceback, not as a client timing out
            log.exception("DNS test server failed to answer %s", query.question)
            response = dns.message.make_response(query)
            response.set_rcode(dns.rcode.SERVFAIL)
        if response is None:
            return None
        if not udp:
            return response.to_wire(max_size=65535)  # not the payload size the query offered for UDP
        payload = max(query.payload, _UDP_DEFAULT_PAYLOAD) if query.edns >= 0 else _UDP_DEFAULT_PAYLOAD
        try:
            return response.to_wire(max_size=payload)
        except dns.exception.TooBig:
            response.answer.clear()
            response.flags |= dns.flags.TC
            return response.to_wire()

    # ----- serving -----

    async def start(self) -> None:
        """Listen on UDP and TCP, on a free port unless one was given (and then the same after stop())."""
        if self._udp is not None:
            raise RuntimeError("the DNS server is already running")
        loop = asyncio.get_running_loop()
        self._tcp = await asyncio.start_server(self._serve_tcp, self.host, self.port)
        self.port = self._tcp.sockets[0].getsockname()[1]
        try:
            self._udp, _ = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self), local_addr=(self.host, self.port)
            )
        except BaseException:
            self._tcp.close()
            self._tcp = None
            raise

    async def stop(self) -> None:
        udp, self._udp = self._udp, None
        tcp, self._tcp = self._tcp, None
        if udp is not None:
            udp.close()
        if tcp is not None:
            tcp.close()
            for writer in list(self._tcp_clients):
                writer.close()
            await tcp.wait_closed()

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._tcp_clients.add(writer)
        try:
            while True:
                (length,) = struct.unpack("!H", await reader.readexactly(2))
                reply = self._reply_bytes(await reader.readexactly(length), udp=False)
                if reply is None:
                    continue  # "timeout": the client gives up on its own
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._tcp_clients.discard(writer)
            writer.close()

    async def __aenter__(self) -> DnsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def __enter__(self) -> DnsServer:
        """Serve from a thread with its own event loop, for callers that block their own loop."""
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._thread_loop = loop
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:
                failure.append(exc)
                started.set()
                loop.close()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        self._thread = threading.Thread(target=run, name="dns-server", daemon=True)
        self._thread.start()
        started.wait()
        if failure:
            raise failure[0]
        return self

    def __exit__(self, *exc: object) -> None:
        loop, thread = self._thread_loop, self._thread
        if loop is not None and thread is not None:
            with contextlib.suppress(RuntimeError):  # the loop already stopped
                loop.call_soon_threadsafe(loop.stop)
            thread.join()
        self._thread = self._thread_loop = None


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        reply = self.server._reply_bytes(data, udp=True)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)
