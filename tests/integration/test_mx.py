"""Direct MX delivery over real sockets: a loopback DNS server routes test domains to SmtpSink servers
on 127.0.0.1, 127.0.0.2 and 127.0.0.3 (all loopback on Linux, all on one port, since MX delivery has
one port for every host), and a loopback HTTPS server publishes MTA-STS policies. Nothing here asks
the system resolver."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trustme

from mailgate.connectors.dns import DnsResolver, DnsTemporaryFailure, MxRecord, NoSuchDomain, NullMx
from mailgate.connectors.mta_sts import POLICY_PATH, MtaSts
from mailgate.connectors.mx import MxConfig, MxSender
from mailgate.domain.delivery import Bounced, Deferred, Delivered, DeliveryOutcome, Failed
from mailgate.domain.errors import InvalidInput
from mailgate.testing.dns_server import DnsServer
from mailgate.testing.smtp_sink import SmtpSink
from tests.conftest import free_port

pytestmark = pytest.mark.timeout(30)

MESSAGE = b"From: app@acme.test\r\nTo: user@example.test\r\nSubject: hello\r\n\r\nbody\r\n"
ENFORCE = "version: STSv1\nmode: enforce\nmx: {mx}\nmax_age: 86400\n"


# ----- fixtures: CA, DNS, sinks, HTTPS policy server, sender -----


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def server_context(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(ctx)
    return ctx


@pytest.fixture(scope="module")
def mx_tls(ca: trustme.CA) -> ssl.SSLContext:
    return server_context(ca, "*.example.test", "*.sts.test")


@pytest.fixture(scope="module")
def trust(ca: trustme.CA) -> ssl.SSLContext:
    """A client context trusting only the test CA (and not loading the system bundle, which is slow)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(ctx)
    return ctx


@pytest.fixture
async def dns() -> AsyncIterator[DnsServer]:
    zone: dict[str, dict[str, str | list[str]]] = {
        "example.test": {"MX": ["10 mx1.example.test.", "20 mx2.example.test."]},
        "mx1.example.test": {"A": "127.0.0.1"},
        "mx2.example.test": {"A": "127.0.0.2"},
        "other.test": {"MX": "10 mx.other.test."},
        "mx.other.test": {"A": "127.0.0.2"},
    }
    async with DnsServer(zone) as server:
        yield server


@pytest.fixture
def port() -> int:
    return free_port()


SinkFactory = Callable[..., Any]


@pytest.fixture
async def sinks(port: int) -> AsyncIterator[SinkFactory]:
    """``await sinks("127.0.0.2", mode=...)``: a sink on that loopback address and the shared port."""
    started: list[SmtpSink] = []

    async def make(host: str = "127.0.0.1", **kwargs: Any) -> SmtpSink:
        sink = SmtpSink(host=host, port=port, **kwargs)
        await sink.start()
        started.append(sink)
        return sink

    yield make
    for sink in started:
        await sink.stop()


class PolicyServer:
    """Serves ``policies[host] = (status, body)`` over HTTPS by Host header and records each request."""

    def __init__(self, tls: ssl.SSLContext) -> None:
        self.tls = tls
        self.policies: dict[str, tuple[int, str]] = {}
        self.requests: list[tuple[str, str]] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            writer.close()
            return
        request_line, *lines = head.split("\r\n")
        path = request_line.split(" ")[1]
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}
        host = headers.get("host", "").rsplit(":", 1)[0]
        self.requests.append((host, path))
        status, body = self.policies.get(host, (404, "no policy here")) if path == POLICY_PATH else (404, "")
        data = body.encode()
        writer.write(
            f"HTTP/1.1 {status} Whatever\r\nContent-Type: text/plain\r\nContent-Length: {len(data)}\r\n"
            f"Connection: close\r\n\r\n".encode()
            + data
        )
        try:
            await writer.drain()
        finally:
            writer.close()


@pytest.fixture(scope="module")
def policy_tls(ca: trustme.CA) -> ssl.SSLContext:
    return server_context(ca, "mta-sts.sts.test", "mta-sts.testing.test")


@pytest.fixture
async def policies(policy_tls: ssl.SSLContext) -> AsyncIterator[PolicyServer]:
    server = PolicyServer(policy_tls)
    await server.start()
    yield server
    await server.stop()


def publish_policy(dns: DnsServer, web: PolicyServer, domain: str, body: str, policy_id: str = "1") -> None:
    dns.remove(f"_mta-sts.{domain}")
    dns.add(f"_mta-sts.{domain}", "TXT", f"v=STSv1; id={policy_id};")
    dns.add(f"mta-sts.{domain}", "A", "127.0.0.1")
    web.policies[f"mta-sts.{domain}"] = (200, body)


SenderFactory = Callable[..., MxSender]


@pytest.fixture
async def sender_factory(
    dns: DnsServer, port: int, trust: ssl.SSLContext, ca_file: str, policies: PolicyServer
) -> AsyncIterator[SenderFactory]:
    made: list[tuple[MxSender, MtaSts]] = []

    def make(**kwargs: Any) -> MxSender:
        kwargs.setdefault("timeout", 5)
        kwargs.setdefault("helo_name", "sender.test")
        kwargs.setdefault("ca_file", ca_file)
        resolver = DnsResolver(dns.servers, timeout=kwargs.pop("dns_timeout", 1.0))
        mta_sts = MtaSts(resolver, tls_context=trust, https_port=policies.port, timeout=5)
        config = MxConfig(port=port, **kwargs)
        sender = MxSender(config, name="mx", resolver=resolver, mta_sts=mta_sts if config.mta_sts else None)
        made.append((sender, mta_sts))
        return sender

    yield make
    for sender, mta_sts in made:
        await asyncio.wait_for(sender.close(), 10)
        await mta_sts.aclose()


@pytest.fixture
def sender(sender_factory: SenderFactory) -> MxSender:
    return sender_factory()


def deferred(outcome: DeliveryOutcome, *words: str, fault: bool = False) -> Deferred:
    assert isinstance(outcome, Deferred), outcome
    assert outcome.connector_fault is fault, outcome
    for word in words:
        assert word.lower() in outcome.reason.lower(), outcome.reason
    return outcome


def bounced(outcome: DeliveryOutcome, code: int, enhanced: str) -> Bounced:
    assert isinstance(outcome, Bounced), outcome
    assert (outcome.reply.code, outcome.reply.enhanced) == (code, enhanced), outcome
    return outcome


# ----- MX order and fallback -----


async def test_the_most_preferred_mx_gets_the_mail(sinks: SinkFactory, sender: MxSender) -> None:
    first, second = await sinks("127.0.0.1"), await sinks("127.0.0.2")
    result = await sender.send("app@acme.test", ["a@example.test", "b@EXAMPLE.test"], MESSAGE)
    assert all(isinstance(o, Delivered) for o in result.values()), result
    assert [(m.mail_from, m.rcpt_tos) for m in first.messages] == [
        ("app@acme.test", ["a@example.test", "b@EXAMPLE.test"])
    ]
    assert first.messages[0].data.endswith(b"body\r\n")
    assert (second.connections, first.connections) == (0, 1)


async def test_preference_not_record_order_decides(dns: DnsServer, sinks: SinkFactory, sender: MxSender) -> None:
    dns.remove("example.test", "MX")
    dns.add("example.test", "MX", "30 mx1.example.test.")
    dns.add("example.test", "MX", "5 mx2.example.test.")
    first, second = await sinks("127.0.0.1"), await sinks("127.0.0.2")
    assert isinstance((await sender.send("", ["a@example.test"], MESSAGE))["a@example.test"], Delivered)
    assert (len(first.messages), len(second.messages)) == (0, 1)
    assert second.messages[0].mail_from == ""


async def test_next_mx_when_the_first_refuses_connections(dns: DnsServer, sinks: SinkFactory, sender: MxSender) -> None:
    dns.remove("mx1.example.test")
    dns.add("mx1.example.test", "A", "127.0.0.3")  # nothing listens there
    second = await sinks("127.0.0.2")
    result = await sender.send("app@acme.test", ["a@example.test"], MESSAGE)
    assert isinstance(result["a@example.test"], Delivered), result
    assert len(second.messages) == 1


@pytest.mark.parametrize("mode", ["busy", "drop", "hang"])
async def test_next_mx_when_the_first_sheds_load_or_misbehaves(
    sinks: SinkFactory, sender_factory: SenderFactory, mode: str
) -> None:
    first, second = await sinks("127.0.0.1", mode=mode), await sinks("127.0.0.2")
    sender = sender_factory(timeout=0.5)
    result = await sender.send("app@acme.test", ["a@example.test"], MESSAGE)
    assert isinstance(result["a@example.test"], Delivered), result
    assert (first.connections, len(first.messages), len(second.messages)) == (1, 0, 1)


async def test_a_421_to_rcpt_moves_the_undecided_recipients_on(sinks: SinkFactory, sender: MxSender) -> None:
    first = await sinks("127.0.0.1", rcpt_replies={"b@example.test": "421 4.3.2 going down"})
    first.rcpt_replies["a@example.test"] = "550 5.1.1 no such user"
    second = await sinks("127.0.0.2")
    result = await sender.send("app@acme.test", ["a@example.test", "b@example.test", "c@example.test"], MESSAGE)
    bounced(result["a@example.test"], 550, "5.1.1")  # decided by the first host: not asked again
    assert isinstance(result["b@example.test"], Delivered)
    assert isinstance(result["c@example.test"], Delivered)
    assert [m.rcpt_tos for m in second.messages] == [["b@example.test", "c@example.test"]]


async def test_every_mx_down_defers_without_blaming_the_connector(sender: MxSender) -> None:
    result = await sender.send("app@acme.test", ["a@example.test"], MESSAGE)
    outcome = deferred(result["a@example.test"], "example.test", "2 addresses tried", "mx2.example.test")
    assert outcome.reply is None


async def test_every_mx_answering_421_defers_with_the_reply(sinks: SinkFactory, sender: MxSender) -> None:
    await sinks("127.0.0.1", mode="busy")
    await sinks("127.0.0.2", mode="busy")
    outcome = deferred((await sender.send("app@acme.test", ["a@example.test"], MESSAGE))["a@example.test"])
    assert outcome.reply is not None and outcome.reply.code == 421


async def test_mx_hosts_without_addresses_defer(dns: DnsServer, sender: MxSender) -> None:
    dns.remove("mx1.example.test")
    dns.remove("mx2.example.test")
    deferred((await sender.send("", ["a@example.test"], MESSAGE))["a@example.test"], "does not exist")


# ----- what DNS says about the domain -----


async def test_implicit_mx_on_the_domains_address(dns: DnsServer, sinks: SinkFactory, sender: MxSender) -> None:
    dns.add("bare.test", "A", "127.0.0.2")
    sink = await sinks("127.0.0.2")
    assert isinstance((await sender.send("", ["x@bare.test"], MESSAGE))["x@bare.test"], Delivered)
    assert sink.messages[0].rcpt_tos == ["x@bare.test"]


async def test_no_mx_and_no_address_bounces(dns: DnsServer, sender: MxSender) -> None:
    dns.add("textonly.test", "TXT", "v=spf1 -all")
    bounced((await sender.send("", ["x@textonly.test"], MESSAGE))["x@textonly.test"], 550, "5.1.2")


async def test_null_mx_bounces(dns: DnsServer, sender: MxSender) -> None:
    dns.add("nomail.test", "MX", "0 .")
    dns.add("nomail.test", "A", "127.0.0.1")  # an address must not turn it into an implicit MX
    bounced((await sender.send("", ["x@nomail.test"], MESSAGE))["x@nomail.test"], 556, "5.1.10")


async def test_nxdomain_bounces(sender: MxSender) -> None:
    outcome = bounced((await sender.send("", ["x@nowhere.test"], MESSAGE))["x@nowhere.test"], 550, "5.1.2")
    assert "NXDOMAIN" in outcome.reason


@pytest.mark.parametrize("mode", ["servfail", "timeout"])
async def test_a_broken_domain_dns_defers_without_blaming_the_connector(
    dns: DnsServer, sender_factory: SenderFactory, mode: Any
) -> None:
    dns.fail("example.test", mode)
    sender = sender_factory(dns_timeout=0.3)
    deferred((await sender.send("", ["x@example.test"], MESSAGE))["x@example.test"], "example.test")


async def test_an_unreachable_resolver_is_a_connector_fault(dns: DnsServer, sender_factory: SenderFactory) -> None:
    sender = sender_factory(dns_timeout=0.3)
    await dns.stop()
    deferred((await sender.send("", ["x@example.test"], MESSAGE))["x@example.test"], "resolver", fault=True)


# ----- recipients and domains -----


async def test_per_recipient_replies(sinks: SinkFactory, sender: MxSender) -> None:
    sink = await sinks(
        "127.0.0.1",
        rcpt_replies={"gone@example.test": "550 5.1.1 No such user", "full@example.test": "452 4.2.2 Mailbox full"},
    )
    second = await sinks("127.0.0.2")
    result = await sender.send("app@acme.test", ["gone@example.test", "full@example.test", "ok@example.test"], MESSAGE)
    bounced(result["gone@example.test"], 550, "5.1.1")
    deferred(result["full@example.test"])
    assert isinstance(result["ok@example.test"], Delivered)
    assert [m.rcpt_tos for m in sink.messages] == [["ok@example.test"]]
    assert second.connections == 0  # a recipient's reply is final for the whole domain


async def test_one_transaction_per_domain(sinks: SinkFactory, sender: MxSender) -> None:
    first, second = await sinks("127.0.0.1"), await sinks("127.0.0.2")
    rcpts = ["a@example.test", "x@other.test", "b@example.test", "y@other.test", "c@nowhere.test"]
    result = await sender.send("app@acme.test", rcpts, MESSAGE)
    assert list(result) == rcpts
    assert [m.rcpt_tos for m in first.messages] == [["a@example.test", "b@example.test"]]
    assert [m.rcpt_tos for m in second.messages] == [["x@other.test", "y@other.test"]]
    bounced(result["c@nowhere.test"], 550, "5.1.2")


async def test_addresses_that_cannot_be_routed_fail(sender: MxSender) -> None:
    result = await sender.send("app@acme.test", ["postmaster", "x@[127.0.0.1]", "bad address@example.test"], MESSAGE)
    assert all(isinstance(o, Failed) for o in result.values()), result
    assert all(
        isinstance(o, Failed) for o in (await sender.send("a\r\nb@x.test", ["x@example.test"], MESSAGE)).values()
    )


async def test_data_refusals(sinks: SinkFactory, sender: MxSender) -> None:
    sink = await sinks("127.0.0.1", mode="permfail_data")
    bounced((await sender.send("", ["a@example.test"], MESSAGE))["a@example.test"], 554, "5.7.1")
    sink.mode = "tempfail_data"
    deferred((await sender.send("", ["a@example.test"], MESSAGE))["a@example.test"])


# ----- TLS -----


async def test_opportunistic_starttls_without_checking_the_certificate(
    sinks: SinkFactory, sender_factory: SenderFactory
) -> None:
    untrusted = server_context(trustme.CA(), "somewhere.else")  # neither our CA nor the MX name
    sink = await sinks("127.0.0.1", starttls=untrusted)
    sender = sender_factory()
    assert isinstance((await sender.send("", ["a@example.test"], MESSAGE))["a@example.test"], Delivered)
    assert sink.messages[0].tls


async def test_opportunistic_tls_falls_back_to_clear_text_when_tls_fails(
    ca: trustme.CA, sinks: SinkFactory, sender: MxSender
) -> None:
    demanding = server_context(ca, "mx1.example.test")
    demanding.verify_mode = ssl.CERT_REQUIRED  # wants a client certificate we do not have
    ca.configure_trust(demanding)
    sink = await sinks("127.0.0.1", starttls=demanding)
    assert isinstance((await sender.send("", ["a@example.test"], MESSAGE))["a@example.test"], Delivered)
    assert [m.tls for m in sink.messages] == [False]
    assert sink.connections == 2


async def test_clear_text_when_starttls_is_not_offered_or_not_wanted(
    sinks: SinkFactory, sender_factory: SenderFactory, mx_tls: ssl.SSLContext
) -> None:
    plain = await sinks("127.0.0.1")
    await sender_factory().send("", ["a@example.test"], MESSAGE)
    await plain.stop()
    tls = await sinks("127.0.0.2", starttls=mx_tls)
    await sender_factory(tls="none").send("", ["a@example.test"], MESSAGE)
    assert [m.tls for m in plain.messages + tls.messages] == [False, False]


async def test_tls_encrypt_requires_starttls(sinks: SinkFactory, sender_factory: SenderFactory) -> None:
    await sinks("127.0.0.1")
    outcome = (await sender_factory(tls="encrypt").send("", ["a@example.test"], MESSAGE))["a@example.test"]
    deferred(outcome, "STARTTLS")


# ----- MTA-STS -----


async def test_mta_sts_enforce_skips_hosts_outside_the_policy(
    dns: DnsServer, policies: PolicyServer, sinks: SinkFactory, sender: MxSender, mx_tls: ssl.SSLContext
) -> None:
    dns.add("sts.test", "MX", "10 mx1.sts.test.")
    dns.add("mx1.sts.test", "A", "127.0.0.1")
    publish_policy(dns, policies, "sts.test", ENFORCE.format(mx="mx.elsewhere.test"))
    sink = await sinks("127.0.0.1", starttls=mx_tls)
    outcome = deferred((await sender.send("", ["a@sts.test"], MESSAGE))["a@sts.test"], "MTA-STS")
    assert outcome.reply is None
    assert sink.connections == 0
    assert policies.requests == [("mta-sts.sts.test", POLICY_PATH)]


async def test_mta_sts_enforce_delivers_over_verified_tls(
    dns: DnsServer, policies: PolicyServer, sinks: SinkFactory, sender: MxSender, mx_tls: ssl.SSLContext
) -> None:
    dns.add("sts.test", "MX", "10 mx1.sts.test.")
    dns.add("sts.test", "MX", "20 rogue.elsewhere.test.")
    dns.add("mx1.sts.test", "A", "127.0.0.1")
    dns.add("rogue.elsewhere.test", "A", "127.0.0.2")
    publish_policy(dns, policies, "sts.test", ENFORCE.format(mx="*.sts.test"))
    sink = await sinks("127.0.0.1", starttls=mx_tls)
    rogue = await sinks("127.0.0.2")
    assert isinstance((await sender.send("", ["a@sts.test"], MESSAGE))["a@sts.test"], Delivered)
    assert sink.messages[0].tls
    sink.mode = "busy"  # the only matching host is away: the rogue one must not be used instead
    await sink.close_connections()
    deferred((await sender.send("", ["b@sts.test"], MESSAGE))["b@sts.test"], "mx1.sts.test")
    assert rogue.connections == 0


@pytest.mark.parametrize("problem", ["no_starttls", "wrong_name", "untrusted_ca"])
async def test_mta_sts_enforce_defers_without_valid_tls(
    dns: DnsServer, policies: PolicyServer, sinks: SinkFactory, sender: MxSender, ca: trustme.CA, problem: str
) -> None:
    dns.add("sts.test", "MX", "10 mx1.sts.test.")
    dns.add("mx1.sts.test", "A", "127.0.0.1")
    publish_policy(dns, policies, "sts.test", ENFORCE.format(mx="mx1.sts.test"))
    tls = {
        "no_starttls": None,
        "wrong_name": server_context(ca, "mx9.sts.test"),
        "untrusted_ca": server_context(trustme.CA(), "mx1.sts.test"),
    }[problem]
    sink = await sinks("127.0.0.1", starttls=tls)
    outcome = deferred((await sender.send("", ["a@sts.test"], MESSAGE))["a@sts.test"])
    assert ("STARTTLS" if problem == "no_starttls" else "certificate") in outcome.reason
    assert sink.messages == []


async def test_mta_sts_testing_mode_delivers_anyway(
    dns: DnsServer, policies: PolicyServer, sinks: SinkFactory, sender: MxSender
) -> None:
    dns.add("testing.test", "MX", "10 mx.elsewhere.test.")
    dns.add("mx.elsewhere.test", "A", "127.0.0.1")
    publish_policy(dns, policies, "testing.test", ENFORCE.format(mx="mx.testing.test").replace("enforce", "testing"))
    sink = await sinks("127.0.0.1")  # no STARTTLS either
    assert isinstance((await sender.send("", ["a@testing.test"], MESSAGE))["a@testing.test"], Delivered)
    assert len(sink.messages) == 1
    assert policies.requests == [("mta-sts.testing.test", POLICY_PATH)]


async def test_mta_sts_can_be_switched_off(
    dns: DnsServer, policies: PolicyServer, sinks: SinkFactory, sender_factory: SenderFactory
) -> None:
    dns.add("sts.test", "MX", "10 mx.elsewhere.test.")
    dns.add("mx.elsewhere.test", "A", "127.0.0.1")
    publish_policy(dns, policies, "sts.test", ENFORCE.format(mx="mx1.sts.test"))
    sink = await sinks("127.0.0.1")
    sender = sender_factory(mta_sts=False)
    assert isinstance((await sender.send("", ["a@sts.test"], MESSAGE))["a@sts.test"], Delivered)
    assert (len(sink.messages), policies.requests) == (1, [])


async def test_mta_sts_policies_are_cached_by_id(dns: DnsServer, policies: PolicyServer, trust: ssl.SSLContext) -> None:
    dns.add("mx1.sts.test", "A", "127.0.0.1")
    publish_policy(dns, policies, "sts.test", ENFORCE.format(mx="mx1.sts.test"), policy_id="one")
    now = [1000.0]
    sts = MtaSts(DnsResolver(dns.servers, timeout=1), tls_context=trust, https_port=policies.port, clock=lambda: now[0])
    try:
        first, *others = await asyncio.gather(*(sts.policy("sts.test") for _ in range(3)))
        assert others == [first, first]  # concurrent sends share one discovery
        assert first is not None and (first.id, first.mode, first.mx) == ("one", "enforce", ("mx1.sts.test",))
        assert await sts.policy("STS.test") == first
        assert len(policies.requests) == 1

        # the web server fails and the TXT record disappears: the cached policy still holds
        policies.policies.clear()
        dns.remove("_mta-sts.sts.test")
        assert await sts.policy("sts.test") == first
        # a new id with an unreachable policy: the cached policy still holds
        publish_policy(dns, policies, "sts.test", "garbage", policy_id="two")
        assert await sts.policy("sts.test") == first
        # a new id with a valid policy replaces it
        publish_policy(dns, policies, "sts.test", ENFORCE.format(mx="*.sts.test"), policy_id="three")
        third = await sts.policy("sts.test")
        assert third is not None and (third.id, third.mx) == ("three", ("*.sts.test",))
        # after max_age the cache is gone, and with it the policy when discovery fails
        now[0] += 86400
        policies.policies.clear()
        assert await sts.policy("sts.test") is None
    finally:
        await sts.aclose()


async def test_mta_sts_fetch_requires_a_certificate_for_the_policy_host(
    dns: DnsServer, trust: ssl.SSLContext, policies: PolicyServer
) -> None:
    publish_policy(dns, policies, "wrongcert.test", ENFORCE.format(mx="mx.wrongcert.test"))
    sts = MtaSts(DnsResolver(dns.servers, timeout=1), tls_context=trust, https_port=policies.port)
    try:
        assert await sts.policy("wrongcert.test") is None  # the server's certificate names other hosts
        assert policies.requests == []
        assert await sts.policy("nopolicy.test") is None
    finally:
        await sts.aclose()


# ----- connections -----


async def test_connections_are_reused_across_sends(sinks: SinkFactory, sender: MxSender) -> None:
    sink = await sinks("127.0.0.1")
    for i in range(3):
        assert isinstance((await sender.send("", [f"u{i}@example.test"], MESSAGE))[f"u{i}@example.test"], Delivered)
    assert (sink.connections, len(sink.messages), sender.open_connections) == (1, 3, 1)
    await sender.close()
    assert sender.open_connections == 0
    await sink.close_connections()  # a dead pooled connection is replaced without a failure
    assert isinstance((await sender.send("", ["x@example.test"], MESSAGE))["x@example.test"], Delivered)


async def test_concurrency_per_domain_is_limited(sinks: SinkFactory, sender_factory: SenderFactory) -> None:
    first, second = await sinks("127.0.0.1", delay=0.05), await sinks("127.0.0.2", delay=0.05)
    sender = sender_factory(max_connections_per_domain=2)
    sends = [sender.send("", [f"u{i}@example.test"], MESSAGE) for i in range(6)]
    sends += [sender.send("", [f"u{i}@other.test"], MESSAGE) for i in range(2)]
    results = await asyncio.gather(*sends)
    assert all(isinstance(o, Delivered) for r in results for o in r.values())
    assert (first.peak_connections, len(first.messages)) == (2, 6)
    assert second.peak_connections == 2  # other.test has slots of its own


# ----- configuration and the resolver over the loopback server -----


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"port": 0}, "port"),
        ({"tls": "starttls"}, "tls"),
        ({"timeout": 0}, "timeout"),
        ({"max_connections_per_domain": 0}, "max_connections_per_domain"),
        ({"helo_name": "a b"}, "helo_name"),
    ],
)
def test_config_validation(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        MxConfig(**kwargs)
    assert info.value.field == field


async def test_bad_ca_file_is_invalid_input(dns: DnsServer, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as info:
        MxSender(MxConfig(ca_file=str(tmp_path / "missing.pem")), resolver=DnsResolver(dns.servers))
    assert info.value.field == "ca_file"


async def test_resolver_lookups(dns: DnsServer) -> None:
    resolver = DnsResolver(dns.servers, timeout=1)
    dns.add("alias.example.test", "CNAME", "mx1.example.test.")
    dns.add("mx1.example.test", "AAAA", "::1")
    dns.add("long.example.test", "TXT", "v=DKIM1; p=" + "A" * 1500)  # over the UDP payload: retried over TCP
    assert await resolver.mail_hosts("Example.Test.") == [
        MxRecord(10, "mx1.example.test"),
        MxRecord(20, "mx2.example.test"),
    ]
    assert await resolver.addresses("alias.example.test") == ["127.0.0.1", "::1"]
    assert await resolver.txt("long.example.test") == ["v=DKIM1; p=" + "A" * 1500]
    assert await resolver.txt("mx1.example.test") == []  # the name exists: no data, no error
    assert await resolver.txt("example.test") == []  # an empty non-terminal exists too
    with pytest.raises(NoSuchDomain):
        await resolver.txt("missing.example.test")
    with pytest.raises(NoSuchDomain):
        await resolver.mx("bad..name")
    dns.add("mixed.test", "MX", "0 .")
    dns.add("mixed.test", "MX", "10 mx1.example.test.")
    assert await resolver.mail_hosts("mixed.test") == [MxRecord(10, "mx1.example.test")]
    dns.add("null.test", "MX", "0 .")
    with pytest.raises(NullMx):
        await resolver.mail_hosts("null.test")
    dns.fail("example.test", "refused")
    with pytest.raises(DnsTemporaryFailure, match="REFUSED"):
        await resolver.mx("example.test")
    assert await resolver.reachable()
    assert ("long.example.test", "TXT") in dns.queries


def test_dns_server_in_a_thread_for_synchronous_callers() -> None:
    import dns.nameserver
    import dns.resolver

    with DnsServer({"sync.test": {"A": "127.0.0.9"}}) as server:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [dns.nameserver.Do53Nameserver(server.host, server.port)]
        assert [r.to_text() for r in resolver.resolve("sync.test", "A")] == ["127.0.0.9"]


async def test_the_answer_cache_keeps_answers_for_their_ttl_and_negatives_only_with_an_soa() -> None:
    async with DnsServer(ttl=1, negative_ttl=1) as dns:
        dns.add("cached.test", "TXT", "v=spf1 -all")
        resolver = DnsResolver(dns.servers, cache_size=10)
        for _ in range(3):
            assert await resolver.txt("cached.test") == ["v=spf1 -all"]
            with pytest.raises(NoSuchDomain):
                await resolver.txt("gone.test")
        assert dns.queries == [("cached.test", "TXT"), ("gone.test", "TXT")]
        dns.add("gone.test", "TXT", "now here")
        await asyncio.sleep(1.1)  # both TTLs run out
        assert await resolver.txt("gone.test") == ["now here"]
        assert await resolver.txt("cached.test") == ["v=spf1 -all"]
        assert len(dns.queries) == 4
    async with DnsServer() as bare:  # negative answers without an SOA: never kept
        resolver = DnsResolver(bare.servers, cache_size=10)
        for _ in range(2):
            with pytest.raises(NoSuchDomain):
                await resolver.txt("gone.test")
        assert len(bare.queries) == 2
        uncached = DnsResolver(bare.servers)
        bare.add("kept.test", "TXT", "x")
        await uncached.txt("kept.test")
        await uncached.txt("kept.test")
        assert bare.queries[-2:] == [("kept.test", "TXT")] * 2
