"""The SMTP relay connector against real SmtpSink servers on loopback: TLS, AUTH, every fault mode,
per-recipient outcomes, and the connection pool (reuse, limits, dead connections, restarts)."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trustme

from mailgate.connectors._smtp import address_problem, parse_reply
from mailgate.connectors.smtp_relay import SmtpRelayConfig, SmtpRelaySender
from mailgate.domain.delivery import Bounced, Deferred, Delivered, DeliveryOutcome, Failed, Reply
from mailgate.domain.errors import InvalidInput
from mailgate.testing.smtp_sink import SinkMode, SmtpSink
from tests.conftest import free_port

pytestmark = pytest.mark.timeout(30)

MESSAGE = b"From: app@acme.test\r\nTo: user@example.net\r\nSubject: hello\r\n\r\nbody\r\n.leading dot\r\n"

SinkFactory = Callable[..., Any]
RelayFactory = Callable[..., SmtpRelaySender]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    return ctx


@pytest.fixture
async def sink_factory() -> AsyncIterator[SinkFactory]:
    started: list[SmtpSink] = []

    async def make(**kwargs: Any) -> SmtpSink:
        sink = SmtpSink(**kwargs)
        await sink.start()
        started.append(sink)
        return sink

    yield make
    for sink in started:
        await sink.stop()


@pytest.fixture(params=[False, True], ids=["one-by-one", "pipelined"])
async def sink(sink_factory: SinkFactory, request: pytest.FixtureRequest) -> SmtpSink:
    """Every behaviour holds whether the server takes commands one at a time or pipelined."""
    result: SmtpSink = await sink_factory(pipelining=request.param)
    return result


@pytest.fixture
async def relay_factory() -> AsyncIterator[RelayFactory]:
    made: list[SmtpRelaySender] = []

    def make(port: int, **kwargs: Any) -> SmtpRelaySender:
        kwargs.setdefault("tls", "none")
        kwargs.setdefault("timeout", 5)
        kwargs.setdefault("helo_name", "relay.test")
        sender = SmtpRelaySender(SmtpRelayConfig(host="127.0.0.1", port=port, **kwargs), name="relay")
        made.append(sender)
        return sender

    yield make
    for sender in made:
        await asyncio.wait_for(sender.close(), 10)


def assert_connector_fault(outcome: DeliveryOutcome, *words: str) -> Deferred:
    assert isinstance(outcome, Deferred), outcome
    assert outcome.connector_fault, outcome
    for word in words:
        assert word.lower() in outcome.reason.lower(), outcome.reason
    return outcome


# ----- replies and envelopes, no sockets -----


@pytest.mark.parametrize(
    ("code", "text", "want"),
    [
        (250, "2.0.0 OK queued as 7", Reply(250, "2.0.0", "OK queued as 7")),
        (451, "4.3.0 Temporary failure", Reply(451, "4.3.0", "Temporary failure")),
        (550, "5.1.1 No such user\n5.1.1 try another", Reply(550, "5.1.1", "No such user try another")),
        (550, "No such user", Reply(550, None, "No such user")),
        (451, "5.1.1 class disagrees", Reply(451, None, "5.1.1 class disagrees")),
        (250, "", Reply(250, None, "")),
    ],
)
def test_enhanced_status_codes_are_parsed(code: int, text: str, want: Reply) -> None:
    assert parse_reply(code, text) == want


@pytest.mark.parametrize(
    ("address", "ok"),
    [
        ("user@example.net", True),
        ('"john doe"@example.net', True),
        ("Postmaster", True),
        ("名前@例え.jp", True),
        ("a@b>\r\nRCPT TO:<c@d", False),
        ("user@example.net SIZE=1", False),
        ("<user@example.net>", False),
        ("nodomain", False),
    ],
)
def test_only_addresses_that_would_corrupt_the_command_are_refused(address: str, ok: bool) -> None:
    assert (address_problem(address) is None) is ok


def test_config_errors_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as caught:
        SmtpRelayConfig(host="relay.test", port=0)
    assert caught.value.field == "port"
    with pytest.raises(InvalidInput) as caught:
        SmtpRelaySender(SmtpRelayConfig(host="relay.test", port=25, ca_file=str(tmp_path / "missing.pem")))
    assert caught.value.field == "ca_file"


# ----- TLS -----


async def test_delivers_without_tls(sink: SmtpSink, relay_factory: RelayFactory) -> None:
    relay = relay_factory(sink.port)
    outcomes = await relay.send("app@acme.test", ["user@example.net"], MESSAGE)
    outcome = outcomes["user@example.net"]
    assert isinstance(outcome, Delivered)
    assert outcome.reply.code == 250 and outcome.reply.enhanced == "2.0.0"
    [received] = sink.messages
    assert received.mail_from == "app@acme.test" and received.rcpt_tos == ["user@example.net"]
    assert received.data == MESSAGE  # dot-stuffing undone, CRLF kept
    assert not received.tls


async def test_tls_none_never_upgrades_even_when_offered(
    sink_factory: SinkFactory, relay_factory: RelayFactory, server_tls: ssl.SSLContext
) -> None:
    sink = await sink_factory(starttls=server_tls)
    outcome = (await relay_factory(sink.port).send("app@acme.test", ["u@example.net"], MESSAGE))["u@example.net"]
    assert isinstance(outcome, Delivered)
    assert not sink.messages[0].tls


async def test_delivers_over_starttls_trusting_the_ca_file(
    sink_factory: SinkFactory, relay_factory: RelayFactory, server_tls: ssl.SSLContext, ca_file: str
) -> None:
    sink = await sink_factory(starttls=server_tls)
    relay = relay_factory(sink.port, tls="starttls", ca_file=ca_file)
    outcome = (await relay.send("app@acme.test", ["u@example.net"], MESSAGE))["u@example.net"]
    assert isinstance(outcome, Delivered), outcome
    assert sink.messages[0].tls


async def test_delivers_over_implicit_tls(
    sink_factory: SinkFactory, relay_factory: RelayFactory, server_tls: ssl.SSLContext, ca_file: str
) -> None:
    sink = await sink_factory(implicit_tls=server_tls)
    relay = relay_factory(sink.port, tls="implicit", ca_file=ca_file)
    outcome = (await relay.send("app@acme.test", ["u@example.net"], MESSAGE))["u@example.net"]
    assert isinstance(outcome, Delivered), outcome
    assert sink.messages[0].tls


@pytest.mark.parametrize("tls", ["starttls", "implicit"])
async def test_an_untrusted_certificate_is_a_connector_fault(
    sink_factory: SinkFactory, relay_factory: RelayFactory, server_tls: ssl.SSLContext, tls: str
) -> None:
    sink = await sink_factory(**{"starttls" if tls == "starttls" else "implicit_tls": server_tls})
    relay = relay_factory(sink.port, tls=tls)  # trusts only the system CAs
    outcome = (await relay.send("app@acme.test", ["u@example.net"], MESSAGE))["u@example.net"]
    assert_connector_fault(outcome, "certificate")
    assert not sink.messages
    unchecked = relay_factory(sink.port, tls=tls, validate_certs=False)
    assert isinstance((await unchecked.send("app@acme.test", ["u@example.net"], MESSAGE))["u@example.net"], Delivered)


async def test_starttls_is_required_when_configured(sink: SmtpSink, relay_factory: RelayFactory) -> None:
    relay = relay_factory(sink.port, tls="starttls")
    outcome = (await relay.send("app@acme.test", ["u@example.net"], MESSAGE))["u@example.net"]
    assert_connector_fault(outcome, "does not offer STARTTLS")
    assert not sink.messages


# ----- AUTH -----


async def test_auth_succeeds_after_starttls(
    sink_factory: SinkFactory, relay_factory: RelayFactory, server_tls: ssl.SSLContext, ca_file: str
) -> None:
    sink = await sink_factory(starttls=server_tls, auth=("app", "s3cret"))
    relay = relay_factory(sink.port, tls="starttls", ca_file=ca_file, username="app", password="s3cret")
    outcome = (await relay.send("app@acme.test", ["u@example.net"], MESSAGE))["u@example.net"]
    assert isinstance(outcome, Delivered), outcome
    assert sink.messages[0].username == "app" and sink.messages[0].tls


async def test_auth_over_implicit_tls(
    sink_factory: SinkFactory, relay_factory: RelayFactory, server_tls: ssl.SSLContext, ca_file: str
) -> None:
    sink = await sink_factory(implicit_tls=server_tls, auth=("app", "s3cret"))
    relay = relay_factory(sink.port, tls="implicit", ca_file=ca_file, username="app", password="s3cret")
    assert isinstance((await relay.send("app@acme.test", ["u@example.net"], MESSAGE))["u@example.net"], Delivered)


async def test_rejected_credentials_are_a_connector_fault(
    sink_factory: SinkFactory, relay_factory: RelayFactory, server_tls: ssl.SSLContext, ca_file: str
) -> None:
    sink = await sink_factory(starttls=server_tls, auth=("app", "s3cret"))
    relay = relay_factory(sink.port, tls="starttls", ca_file=ca_file, username="app", password="wrong")
    started = time.monotonic()
    outcomes = await relay.send("app@acme.test", ["a@example.net", "b@example.net"], MESSAGE)
    assert time.monotonic() - started < 2  # a 535, not a client timeout (the aiosmtpd trap)
    for outcome in outcomes.values():
        fault = assert_connector_fault(outcome, "credentials")
        assert fault.reply is not None and fault.reply.code == 535 and fault.reply.enhanced == "5.7.8"
    assert not sink.messages


async def test_missing_credentials_are_a_connector_fault(
    sink_factory: SinkFactory, relay_factory: RelayFactory
) -> None:
    sink = await sink_factory(auth=("app", "s3cret"))
    outcome = (await relay_factory(sink.port).send("app@acme.test", ["u@example.net"], MESSAGE))["u@example.net"]
    fault = assert_connector_fault(outcome)
    assert fault.reply is not None and fault.reply.code == 530


# ----- outcomes -----


@pytest.mark.parametrize(
    ("mode", "kind", "code", "enhanced"),
    [
        ("tempfail_rcpt", Deferred, 451, "4.3.0"),
        ("permfail_rcpt", Bounced, 550, "5.1.1"),
        ("tempfail_data", Deferred, 451, "4.3.0"),
        ("permfail_data", Bounced, 554, "5.7.1"),
    ],
)
async def test_refusals_map_to_recipient_outcomes(
    sink: SmtpSink, relay_factory: RelayFactory, mode: SinkMode, kind: type, code: int, enhanced: str
) -> None:
    sink.mode = mode
    relay = relay_factory(sink.port)
    outcomes = await relay.send("app@acme.test", ["a@example.net", "b@example.net"], MESSAGE)
    assert set(outcomes) == {"a@example.net", "b@example.net"}
    for outcome in outcomes.values():
        assert isinstance(outcome, kind), outcome
        assert isinstance(outcome, Deferred | Bounced)
        assert outcome.reply is not None
        assert (outcome.reply.code, outcome.reply.enhanced) == (code, enhanced)
        if isinstance(outcome, Deferred):
            assert not outcome.connector_fault
    assert not sink.messages
    sink.mode = "accept"  # the connection survives a refusal and is reused, after an RSET
    assert isinstance((await relay.send("app@acme.test", ["c@example.net"], MESSAGE))["c@example.net"], Delivered)
    assert sink.connections == 1


@pytest.mark.parametrize(
    ("mode", "words", "code"),
    [
        ("drop", ["closed the connection"], None),
        ("drop_data", ["closed the connection", "DATA"], None),
        ("busy", ["refused the session"], 421),
        ("hang_mail", ["timed out", "MAIL"], None),
        ("hang_data", ["timed out", "DATA"], None),
    ],
)
async def test_path_failures_are_connector_faults(
    sink: SmtpSink, relay_factory: RelayFactory, mode: SinkMode, words: list[str], code: int | None
) -> None:
    sink.mode = mode
    relay = relay_factory(sink.port, timeout=1)
    outcomes = await relay.send("app@acme.test", ["a@example.net", "b@example.net"], MESSAGE)
    for outcome in outcomes.values():
        fault = assert_connector_fault(outcome, *words)
        assert (fault.reply.code if fault.reply else None) == code
    assert relay.open_connections == 0


async def test_connection_refused_is_a_connector_fault(relay_factory: RelayFactory) -> None:
    relay = relay_factory(free_port())
    outcome = (await relay.send("app@acme.test", ["u@example.net"], MESSAGE))["u@example.net"]
    assert_connector_fault(outcome, "cannot connect")


async def test_a_hung_greeting_times_out_quickly(sink: SmtpSink, relay_factory: RelayFactory) -> None:
    sink.mode = "hang"
    relay = relay_factory(sink.port, timeout=1)
    started = time.monotonic()
    outcome = (await relay.send("app@acme.test", ["u@example.net"], MESSAGE))["u@example.net"]
    elapsed = time.monotonic() - started
    assert_connector_fault(outcome, "timed out")
    assert 0.9 <= elapsed < 2.5


async def test_a_slow_server_within_the_timeout_is_fine_and_beyond_it_a_fault(
    sink_factory: SinkFactory, relay_factory: RelayFactory
) -> None:
    sink = await sink_factory(delay=0.2)
    assert isinstance(
        (await relay_factory(sink.port, timeout=1).send("a@acme.test", ["u@x.test"], MESSAGE))["u@x.test"], Delivered
    )
    sink.delay = 1.0
    outcome = (await relay_factory(sink.port, timeout=0.5).send("a@acme.test", ["u@x.test"], MESSAGE))["u@x.test"]
    assert_connector_fault(outcome, "timed out")


async def test_partial_refusal_in_one_transaction(sink: SmtpSink, relay_factory: RelayFactory) -> None:
    sink.rcpt_replies["gone@example.net"] = "550 5.1.1 No such user"
    sink.rcpt_replies["full@example.net"] = "452 4.2.2 Mailbox full"
    relay = relay_factory(sink.port)
    outcomes = await relay.send("app@acme.test", ["ok@example.net", "gone@example.net", "full@example.net"], MESSAGE)
    assert isinstance(outcomes["ok@example.net"], Delivered)
    gone, full = outcomes["gone@example.net"], outcomes["full@example.net"]
    assert isinstance(gone, Bounced) and gone.reply == Reply(550, "5.1.1", "No such user")
    assert isinstance(full, Deferred) and not full.connector_fault
    assert full.reply == Reply(452, "4.2.2", "Mailbox full")
    assert [m.rcpt_tos for m in sink.messages] == [["ok@example.net"]]


async def test_all_recipients_refused_sends_no_data(sink: SmtpSink, relay_factory: RelayFactory) -> None:
    sink.rcpt_replies.update({"a@example.net": "550 5.1.1 No", "b@example.net": "550 5.1.1 No"})
    outcomes = await relay_factory(sink.port).send("app@acme.test", ["a@example.net", "b@example.net"], MESSAGE)
    assert all(isinstance(o, Bounced) for o in outcomes.values())
    assert not sink.messages


async def test_a_421_mid_transaction_keeps_decided_refusals(sink: SmtpSink, relay_factory: RelayFactory) -> None:
    sink.rcpt_replies["gone@example.net"] = "550 5.1.1 No such user"
    sink.rcpt_replies["boom@example.net"] = "421 4.3.2 Shutting down"
    relay = relay_factory(sink.port)
    outcomes = await relay.send(
        "app@acme.test", ["ok@example.net", "gone@example.net", "boom@example.net", "late@example.net"], MESSAGE
    )
    assert isinstance(outcomes["gone@example.net"], Bounced)
    for rcpt in ("ok@example.net", "boom@example.net", "late@example.net"):
        fault = assert_connector_fault(outcomes[rcpt], "RCPT")
        assert fault.reply is not None and fault.reply.code == 421
    assert not sink.messages
    del sink.rcpt_replies["boom@example.net"]
    assert isinstance((await relay.send("app@acme.test", ["ok@example.net"], MESSAGE))["ok@example.net"], Delivered)


async def test_null_sender_and_duplicate_recipients(sink: SmtpSink, relay_factory: RelayFactory) -> None:
    outcomes = await relay_factory(sink.port).send("", ["u@example.net", "u@example.net"], MESSAGE)
    assert list(outcomes) == ["u@example.net"] and isinstance(outcomes["u@example.net"], Delivered)
    assert sink.messages[0].mail_from == "" and sink.messages[0].rcpt_tos == ["u@example.net"]


async def test_unsendable_addresses_fail_without_touching_the_server(
    sink: SmtpSink, relay_factory: RelayFactory
) -> None:
    relay = relay_factory(sink.port)
    outcomes = await relay.send("app@acme.test", ["ok@example.net", "x@y\r\nRSET"], MESSAGE)
    assert isinstance(outcomes["ok@example.net"], Delivered)
    assert isinstance(outcomes["x@y\r\nRSET"], Failed)
    bad_sender = await relay.send("a b@acme.test", ["ok@example.net"], MESSAGE)
    assert isinstance(bad_sender["ok@example.net"], Failed)
    assert len(sink.messages) == 1
    assert await relay.send("app@acme.test", [], MESSAGE) == {}


async def test_smtputf8_is_used_when_the_envelope_needs_it(sink: SmtpSink, relay_factory: RelayFactory) -> None:
    relay = relay_factory(sink.port)
    outcomes = await relay.send("app@acme.test", ["ascii@example.net", "名前@例え.jp"], MESSAGE)
    assert all(isinstance(o, Delivered) for o in outcomes.values()), outcomes
    assert "SMTPUTF8" in sink.messages[0].mail_options
    assert sink.messages[0].rcpt_tos == ["ascii@example.net", "名前@例え.jp"]
    plain = await relay.send("app@acme.test", ["ascii@example.net"], MESSAGE)
    assert isinstance(plain["ascii@example.net"], Delivered)
    assert "SMTPUTF8" not in sink.messages[1].mail_options


async def test_non_ascii_envelope_bounces_on_a_server_without_smtputf8(
    sink_factory: SinkFactory, relay_factory: RelayFactory
) -> None:
    sink = await sink_factory(smtputf8=False)
    relay = relay_factory(sink.port)
    outcomes = await relay.send("app@acme.test", ["ascii@example.net", "名前@例え.jp"], MESSAGE)
    assert isinstance(outcomes["ascii@example.net"], Delivered)
    bounced = outcomes["名前@例え.jp"]
    assert isinstance(bounced, Bounced) and bounced.reply.code == 553 and bounced.reply.enhanced == "5.6.7"
    assert "SMTPUTF8" in bounced.reply.text
    assert sink.messages[0].rcpt_tos == ["ascii@example.net"]
    from_utf8 = await relay.send("名前@例え.jp", ["ascii@example.net"], MESSAGE)
    assert isinstance(from_utf8["ascii@example.net"], Bounced)
    only_utf8 = await relay.send("app@acme.test", ["名前@例え.jp"], MESSAGE)
    assert isinstance(only_utf8["名前@例え.jp"], Bounced)
    assert len(sink.messages) == 1
    assert isinstance((await relay.send("app@acme.test", ["b@example.net"], MESSAGE))["b@example.net"], Delivered)
    assert sink.connections == 1


# ----- the pool -----


async def test_sequential_sends_reuse_one_connection(sink: SmtpSink, relay_factory: RelayFactory) -> None:
    relay = relay_factory(sink.port)
    for i in range(50):
        outcome = (await relay.send("app@acme.test", [f"u{i}@example.net"], MESSAGE))[f"u{i}@example.net"]
        assert isinstance(outcome, Delivered), outcome
    assert len(sink.messages) == 50
    assert sink.connections == 1


async def test_concurrent_sends_stay_within_max_connections(
    sink_factory: SinkFactory, relay_factory: RelayFactory
) -> None:
    sink = await sink_factory(delay=0.005)
    relay = relay_factory(sink.port, max_connections=4)

    async def worker(w: int) -> list[DeliveryOutcome]:
        results = []
        for i in range(6):
            rcpt = f"w{w}-{i}@example.net"
            results.append((await relay.send("app@acme.test", [rcpt], MESSAGE))[rcpt])
        return results

    outcomes = [o for batch in await asyncio.gather(*(worker(w) for w in range(8))) for o in batch]
    assert all(isinstance(o, Delivered) for o in outcomes)
    assert len(sink.messages) == 48
    assert sink.connections <= 4 and sink.peak_connections <= 4
    assert relay.open_connections <= 4


async def test_a_connection_is_retired_after_max_messages(sink: SmtpSink, relay_factory: RelayFactory) -> None:
    relay = relay_factory(sink.port, max_messages_per_connection=3)
    for i in range(7):
        assert isinstance((await relay.send("app@acme.test", [f"u{i}@x.test"], MESSAGE))[f"u{i}@x.test"], Delivered)
    assert sink.connections == 3


async def test_a_dead_pooled_connection_is_replaced_once(sink: SmtpSink, relay_factory: RelayFactory) -> None:
    sink.mode = "drop_reused"  # the server closes each connection when it is reused
    relay = relay_factory(sink.port)
    for i in range(3):
        outcome = (await relay.send("app@acme.test", [f"u{i}@example.net"], MESSAGE))[f"u{i}@example.net"]
        assert isinstance(outcome, Delivered), outcome
    assert len(sink.messages) == 3
    assert sink.connections == 3


async def test_a_connection_the_server_closed_while_idle_is_not_used(
    sink: SmtpSink, relay_factory: RelayFactory
) -> None:
    relay = relay_factory(sink.port)
    assert isinstance((await relay.send("app@acme.test", ["a@x.test"], MESSAGE))["a@x.test"], Delivered)
    await sink.close_connections()
    await asyncio.sleep(0.05)
    assert isinstance((await relay.send("app@acme.test", ["b@x.test"], MESSAGE))["b@x.test"], Delivered)
    assert sink.connections == 2


async def test_stopped_server_is_a_connector_fault_until_it_returns(
    sink: SmtpSink, relay_factory: RelayFactory
) -> None:
    relay = relay_factory(sink.port, max_connections=2)
    await asyncio.gather(*(relay.send("app@acme.test", [f"u{i}@x.test"], MESSAGE) for i in range(4)))
    assert relay.open_connections >= 1
    await sink.stop()
    outcome = (await relay.send("app@acme.test", ["down@x.test"], MESSAGE))["down@x.test"]
    assert_connector_fault(outcome)
    await sink.start()  # the same port
    outcome = (await relay.send("app@acme.test", ["back@x.test"], MESSAGE))["back@x.test"]
    assert isinstance(outcome, Delivered), outcome
    assert sink.messages[-1].rcpt_tos == ["back@x.test"]


async def test_restart_on_the_same_port_with_a_new_sink(sink: SmtpSink, relay_factory: RelayFactory) -> None:
    relay = relay_factory(sink.port)
    assert isinstance((await relay.send("app@acme.test", ["a@x.test"], MESSAGE))["a@x.test"], Delivered)
    port = sink.port
    await sink.stop()
    async with SmtpSink(port=port) as revived:
        assert isinstance((await relay.send("app@acme.test", ["b@x.test"], MESSAGE))["b@x.test"], Delivered)
        assert [m.rcpt_tos for m in revived.messages] == [["b@x.test"]]


async def test_idle_connections_are_closed(sink: SmtpSink, relay_factory: RelayFactory) -> None:
    relay = relay_factory(sink.port, idle_timeout=0.2)
    assert isinstance((await relay.send("app@acme.test", ["a@x.test"], MESSAGE))["a@x.test"], Delivered)
    assert sink.active_connections == 1
    deadline = time.monotonic() + 3
    while sink.active_connections and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert sink.active_connections == 0 and relay.open_connections == 0
    assert isinstance((await relay.send("app@acme.test", ["b@x.test"], MESSAGE))["b@x.test"], Delivered)
    assert sink.connections == 2


async def test_close_releases_pooled_connections(sink: SmtpSink, relay_factory: RelayFactory) -> None:
    relay = relay_factory(sink.port, max_connections=3)
    await asyncio.gather(*(relay.send("app@acme.test", [f"u{i}@x.test"], MESSAGE) for i in range(6)))
    assert sink.active_connections >= 1
    await relay.close()
    deadline = time.monotonic() + 3
    while sink.active_connections and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert sink.active_connections == 0
    assert isinstance((await relay.send("app@acme.test", ["again@x.test"], MESSAGE))["again@x.test"], Delivered)


async def test_stop_cuts_hung_connections(sink: SmtpSink, relay_factory: RelayFactory) -> None:
    sink.mode = "hang"
    relay = relay_factory(sink.port, timeout=10)
    pending = asyncio.create_task(relay.send("app@acme.test", ["u@x.test"], MESSAGE))
    while not sink.active_connections:
        await asyncio.sleep(0.01)
    started = time.monotonic()
    await sink.stop()
    outcome = (await asyncio.wait_for(pending, 5))["u@x.test"]
    assert time.monotonic() - started < 2
    assert_connector_fault(outcome, "closed the connection")


async def test_commands_are_pipelined_only_where_offered(
    sink_factory: SinkFactory, relay_factory: RelayFactory
) -> None:
    rcpts = ["a@example.net", "b@example.net", "c@example.net"]
    for pipelining, waiting in ((True, len(rcpts) + 1), (False, 0)):
        sink = await sink_factory(pipelining=pipelining)
        relay = relay_factory(sink.port)
        for _ in range(3):
            outcomes = await relay.send("app@acme.test", rcpts, MESSAGE)
            assert all(isinstance(o, Delivered) for o in outcomes.values())
        # at each MAIL the server already holds every RCPT and the DATA (the RSET of a reused
        # connection was read before the MAIL), or nothing at all
        assert sink.commands_waiting == [waiting] * 3, pipelining
        assert sink.connections == 1 and [m.data for m in sink.messages] == [MESSAGE] * 3


async def test_a_pipelined_data_taken_without_recipients_closes_the_connection(relay_factory: RelayFactory) -> None:
    """RFC 2920 3.1: a server may answer DATA with 354 although it refused every RCPT. The content
    must not be sent (nobody would get it, or the server would take an empty message), and the
    session is in the middle of DATA, so it is not reused."""
    sessions: list[list[bytes]] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen: list[bytes] = []
        sessions.append(seen)
        writer.write(b"220 odd.test ESMTP\r\n")
        replies = {b"EHLO": b"250-odd.test\r\n250 PIPELINING\r\n", b"MAIL": b"250 ok\r\n", b"RCPT": b"550 5.1.1 no\r\n"}
        while line := await reader.readline():
            seen.append(line)
            verb = line[:4].upper()
            writer.write(b"354 go ahead\r\n" if verb == b"DATA" else replies.get(verb, b"250 ok\r\n"))
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        relay = relay_factory(server.sockets[0].getsockname()[1])
        outcome = (await relay.send("app@acme.test", ["u@example.net"], MESSAGE))["u@example.net"]
        assert isinstance(outcome, Bounced) and outcome.reply == Reply(550, "5.1.1", "no")
        assert relay.open_connections == 0
        await asyncio.sleep(0.05)
        assert [line.split(b" ")[0].strip() for line in sessions[0]][-3:] == [b"MAIL", b"RCPT", b"DATA"]
    finally:
        server.close()
        await server.wait_closed()
