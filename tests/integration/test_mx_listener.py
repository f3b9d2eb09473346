"""The MX listener over real sockets, against an in-test inbound service: what the internet's senders
see (replies, limits, timeouts, TLS, smuggling attempts) and exactly what the service is handed."""

from __future__ import annotations

import asyncio
import re
import smtplib
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiosmtplib
import pytest
import trustme
import uvloop

from mailgate.domain.delivery import Reply
from mailgate.domain.errors import ConfigurationError
from mailgate.domain.inbound import InboundEnvelope
from mailgate.observability.metrics import REGISTRY
from mailgate.servers.listen import bind_listener
from mailgate.servers.smtp.mx import MxOptions, start_mx

HOSTNAME = "mx.test"
UNKNOWN = Reply(550, "5.1.1", "mailbox unavailable")
MESSAGE = b"From: a@sender.test\r\nTo: b@example.org\r\nSubject: hello\r\n\r\nfirst line\r\n.dotted line\r\n"
ENHANCED = re.compile(r"^(\d)\d\d[ -](\d)\.\d{1,3}\.\d{1,3}( |$)")


class RecordingPort:
    """An InboundPort that records what it stored and misbehaves on request."""

    def __init__(self) -> None:
        self.received: list[InboundEnvelope] = []
        self.checked: list[tuple[str, str]] = []
        self.unknown: set[str] = set()  # check_recipient refuses these with 550 5.1.1
        self.broken: set[str] = set()  # check_recipient raises on these
        self.reply: Reply | None = None  # receive answers this instead of storing
        self.fail = False  # receive raises
        self.delay = 0.0  # receive takes this long

    async def check_recipient(self, address: str, *, client_ip: str) -> Reply | None:
        self.checked.append((address, client_ip))
        if address in self.broken:
            raise RuntimeError("directory lookup bug")
        return UNKNOWN if address in self.unknown else None

    async def receive(self, envelope: InboundEnvelope) -> Reply:
        await asyncio.sleep(self.delay)
        if self.fail:
            raise RuntimeError("storage bug")
        if self.reply is not None:
            return self.reply
        self.received.append(envelope)
        return Reply(250, "2.0.0", f"Ok: queued as in_{len(self.received)}")


@asynccontextmanager
async def listening(
    port: RecordingPort, tls_context: ssl.SSLContext | None = None, **options: Any
) -> AsyncIterator[int]:
    """``start_mx`` on a free loopback port, closed afterwards; yields the port number."""
    sock = bind_listener("127.0.0.1", 0)
    server = await start_mx(port, sock, tls_context=tls_context, options=MxOptions(hostname=HOSTNAME, **options))
    try:
        yield sock.getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


class Session:
    """A raw SMTP client: bytes out, one reply (all its lines) in, nothing interpreted."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, host: str = "127.0.0.1") -> tuple[Session, list[str] | None]:
        """Connect (from ``host``, a loopback address) and read the greeting, None if closed at once."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(host, 0))
        session = cls(reader, writer)
        return session, await session.reply()

    async def reply(self, timeout: float = 5.0) -> list[str] | None:
        """The next reply's lines without CRLF, or None at end of stream."""
        lines: list[str] = []
        while not lines or lines[-1][3:4] == "-":
            raw = await asyncio.wait_for(self.reader.readline(), timeout)
            if not raw:
                assert not lines, f"reply cut short: {lines}"
                return None
            assert raw.endswith(b"\r\n"), raw
            lines.append(raw[:-2].decode("utf-8"))
        return lines

    async def send(self, *lines: bytes) -> None:
        self.writer.write(b"".join(line + b"\r\n" for line in lines))
        await self.writer.drain()

    async def last_line(self) -> str:
        """The last line of the next reply (the one that carries its outcome)."""
        reply = await self.reply()
        assert reply is not None, "closed instead of a reply"
        return reply[-1]

    async def command(self, line: bytes) -> str:
        await self.send(line)
        return await self.last_line()

    async def closed(self) -> bool:
        return await asyncio.wait_for(self.reader.read(), 5) == b""

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _tls() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a trustme certificate for mx.test and 127.0.0.1, and a client trusting it."""
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(HOSTNAME, "127.0.0.1").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client


@asynccontextmanager
async def connected(
    port: RecordingPort, client_tls: ssl.SSLContext | None = None, **listen: Any
) -> AsyncIterator[aiosmtplib.SMTP]:
    """A listener (``listen`` as for ``listening``) and an aiosmtplib client past EHLO; QUIT at the end."""
    async with listening(port, **listen) as smtp_port:
        client = aiosmtplib.SMTP(
            hostname="127.0.0.1", port=smtp_port, local_hostname="client.example", tls_context=client_tls, timeout=5
        )
        await client.connect(start_tls=False)
        await client.ehlo()
        try:
            yield client
        finally:
            await client.quit()


async def test_two_messages_in_one_session_reach_the_service_byte_for_byte() -> None:
    port = RecordingPort()
    second = b"Subject: =?utf-8?q?zwei?=\r\n\r\n\xc3\xbcber 8 bit\r\n..two dots\r\n"
    accepted = _metric("mailgate_mx_messages_total", outcome="accepted", status="2.0.0")
    async with connected(port) as client:
        extensions = client.esmtp_extensions
        assert {"pipelining", "8bitmime", "smtputf8", "enhancedstatuscodes"} <= set(extensions)
        assert extensions["size"] == str(MxOptions().max_message_size)
        assert "auth" not in extensions and "starttls" not in extensions  # no AUTH on MX; no certificate
        errors, reply = await client.sendmail("a@sender.test", ["b@example.org"], MESSAGE)
        assert not errors and reply == "2.0.0 Ok: queued as in_1"
        errors, reply = await client.sendmail(
            "c@sender.test", ["b@example.org", "d@example.org"], second, mail_options=["BODY=8BITMIME"]
        )
        assert not errors and reply == "2.0.0 Ok: queued as in_2"
    first_envelope = InboundEnvelope("127.0.0.1", "client.example", "a@sender.test", ("b@example.org",), MESSAGE)
    assert port.received[0] == first_envelope
    assert port.received[1].data == second  # aiosmtplib dot-stuffs, the listener unstuffs; 8 bit kept
    assert port.received[1].recipients == ("b@example.org", "d@example.org")
    assert port.checked == [
        ("b@example.org", "127.0.0.1"),
        ("b@example.org", "127.0.0.1"),
        ("d@example.org", "127.0.0.1"),
    ]
    assert _metric("mailgate_mx_messages_total", outcome="accepted", status="2.0.0") == accepted + 2


async def test_unknown_recipient_is_refused_at_rcpt_and_the_others_still_get_the_message() -> None:
    port = RecordingPort()
    port.unknown.add("nobody@example.org")
    async with connected(port) as client:
        recipients = ["b@example.org", "nobody@example.org", "üser@exämple.org"]
        errors, _ = await client.sendmail("a@sender.test", recipients, MESSAGE, mail_options=["SMTPUTF8"])
    assert {address: (r.code, r.message) for address, r in errors.items()} == {
        "nobody@example.org": (550, "5.1.1 mailbox unavailable")
    }
    assert port.received[0].recipients == ("b@example.org", "üser@exämple.org")


async def test_null_sender_is_accepted_for_bounces() -> None:
    port = RecordingPort()
    async with listening(port) as smtp_port:

        def send_bounce() -> dict[str, tuple[int, bytes]]:
            with smtplib.SMTP("127.0.0.1", smtp_port, timeout=5) as client:  # an independent client
                return client.sendmail("", ["b@example.org"], MESSAGE)

        assert await asyncio.to_thread(send_bounce) == {}
    assert port.received[0].mail_from == ""
    assert port.received[0].helo  # smtplib's EHLO name


async def test_oversize_messages_get_552_and_nothing_is_stored() -> None:
    port = RecordingPort()
    async with listening(port, max_message_size=1000) as smtp_port:
        session, _ = await Session.open(smtp_port)
        try:
            await session.send(b"EHLO client.example")
            assert "250-SIZE 1000" in (await session.reply() or [])
            declared = await session.command(b"MAIL FROM:<a@sender.test> SIZE=5000")
            assert declared.startswith("552 5.3.4 ")
            assert (await session.command(b"MAIL FROM:<a@sender.test>")).startswith("250 2.1.0")
            assert (await session.command(b"RCPT TO:<b@example.org>")).startswith("250 2.1.5")
            assert (await session.command(b"DATA")).startswith("354")
            await session.send(*[b"x" * 78] * 20, b".")
            assert (await session.last_line()).startswith("552 5.3.4 ")
            assert port.received == []
            assert (await session.command(b"MAIL FROM:<a@sender.test> SIZE=100")).startswith("250 ")  # goes on
            assert (await session.command(b"RCPT TO:<b@example.org>")).startswith("250 ")
            assert (await session.command(b"DATA")).startswith("354")
            assert (await session.command(b"Subject: small\r\n\r\nfits\r\n.")).startswith("250 2.0.0")
        finally:
            await session.close()
    assert [e.data for e in port.received] == [b"Subject: small\r\n\r\nfits\r\n"]


async def test_too_many_recipients_get_452_and_the_first_ones_the_message() -> None:
    port = RecordingPort()
    async with connected(port, max_recipients=3) as client:
        await client.mail("a@sender.test")
        codes = [(await client.rcpt(f"r{i}@example.org")).code for i in range(3)]
        with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
            await client.rcpt("r3@example.org")
        assert codes == [250] * 3 and (refused.value.code, refused.value.message[:5]) == (452, "4.5.3")
        assert (await client.data(MESSAGE)).code == 250
    assert port.received[0].recipients == ("r0@example.org", "r1@example.org", "r2@example.org")


async def test_starttls_is_offered_and_recorded_on_the_envelope_and_auth_never() -> None:
    port = RecordingPort()
    server_context, client_context = _tls()
    async with connected(port, client_tls=client_context, tls_context=server_context) as client:
        assert "starttls" in client.esmtp_extensions and "auth" not in client.esmtp_extensions
        await client.sendmail("a@sender.test", ["b@example.org"], MESSAGE)  # plaintext is allowed
        await client.starttls()
        await client.ehlo()
        assert "starttls" not in client.esmtp_extensions and "auth" not in client.esmtp_extensions
        refused = await client.execute_command(b"AUTH", b"PLAIN", b"AGEAYg==")
        assert (refused.code, refused.message) == (503, "5.5.1 Error: authentication not enabled")
        await client.sendmail("a@sender.test", ["b@example.org"], MESSAGE)
    assert [e.tls for e in port.received] == [False, True]


async def test_required_tls_refuses_mail_before_starttls() -> None:
    port = RecordingPort()
    server_context, client_context = _tls()
    async with connected(port, client_tls=client_context, tls_context=server_context, require_tls=True) as client:
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
            await client.mail("a@sender.test")
        assert (refused.value.code, refused.value.message[:5]) == (530, "5.7.0")
        await client.starttls()
        await client.ehlo()
        assert not (await client.sendmail("a@sender.test", ["b@example.org"], MESSAGE))[0]
    assert port.received[0].tls
    with bind_listener("127.0.0.1", 0) as sock, pytest.raises(ConfigurationError):
        await start_mx(port, sock, tls_context=None, options=MxOptions(require_tls=True))


async def test_a_failing_service_gets_451_and_the_session_goes_on() -> None:
    port = RecordingPort()
    port.broken.add("broken@example.org")
    async with connected(port) as client:
        port.fail = True
        with pytest.raises(aiosmtplib.SMTPDataError) as deferred:
            await client.sendmail("a@sender.test", ["b@example.org"], MESSAGE)
        assert (deferred.value.code, deferred.value.message[:5]) == (451, "4.3.0")
        port.fail = False
        errors, reply = await client.sendmail("a@sender.test", ["broken@example.org", "b@example.org"], MESSAGE)
        assert errors["broken@example.org"].code == 451 and reply.startswith("2.0.0")
    assert [(e.helo, e.recipients) for e in port.received] == [("client.example", ("b@example.org",))]


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (Reply(451, "4.3.0", "cannot store now"), (451, "4.3.0 cannot store now")),
        (Reply(550, "5.7.1", "message refused as spam"), (550, "5.7.1 message refused as spam")),
        (Reply(554, None, "no\r\n250 injected"), (554, "5.0.0 no 250 injected")),  # one line, a code added
        (Reply(200, "2.0.0", "not a refusal"), (451, "4.3.0 Requested action aborted: local error in processing")),
    ],
)
async def test_the_services_answer_after_data_is_the_senders_reply(answer: Reply, expected: tuple[int, str]) -> None:
    port = RecordingPort()
    port.reply = answer
    async with connected(port) as client:
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await client.sendmail("a@sender.test", ["b@example.org"], MESSAGE)
        assert (refused.value.code, refused.value.message) == expected
        assert (await client.noop()).code == 250


async def test_a_slow_service_gets_451_at_the_data_deadline_and_the_session_goes_on() -> None:
    port = RecordingPort()
    port.delay = 5.0
    async with connected(port, data_timeout=0.5, command_timeout=2.0) as client:
        started = asyncio.get_running_loop().time()
        with pytest.raises(aiosmtplib.SMTPDataError) as deferred:
            await client.sendmail("a@sender.test", ["b@example.org"], MESSAGE)
        assert deferred.value.code == 451 and asyncio.get_running_loop().time() - started < 2
        port.delay = 0
        assert not (await client.sendmail("a@sender.test", ["b@example.org"], MESSAGE))[0]
    assert len(port.received) == 1


async def test_idle_clients_and_stalled_data_get_421_and_are_closed() -> None:
    port = RecordingPort()
    async with listening(port, command_timeout=0.3, data_timeout=0.6) as smtp_port:
        idle, greeting = await Session.open(smtp_port)
        assert greeting and greeting[0].startswith(f"220 {HOSTNAME}")
        assert (await idle.reply()) == [f"421 4.4.2 {HOSTNAME} Error: timeout exceeded"]
        assert await idle.closed()
        stalled, _ = await Session.open(smtp_port)
        for line in (b"HELO client.example", b"MAIL FROM:<a@sender.test>", b"RCPT TO:<b@example.org>", b"DATA"):
            await asyncio.sleep(0.2)  # slower than nothing, faster than the idle timeout
            assert (await stalled.command(line))[0] in "23"
        await stalled.send(b"Subject: never finished")
        assert (await stalled.last_line()).startswith("421 4.4.2")
        assert await stalled.closed()
    assert port.received == []


async def test_connections_over_the_per_address_and_overall_limits_get_421() -> None:
    port = RecordingPort()
    refused = _metric("mailgate_smtp_connections_total", listener="mx", outcome="limit_per_ip")
    async with listening(port, max_connections_per_ip=2, max_connections=3) as smtp_port:
        first, _ = await Session.open(smtp_port)
        second, _ = await Session.open(smtp_port)
        third, greeting = await Session.open(smtp_port)
        assert greeting == [f"421 4.7.0 {HOSTNAME} Error: too many connections"] and await third.closed()
        other, greeting = await Session.open(smtp_port, host="127.0.0.2")  # another address has room
        assert greeting and greeting[0].startswith("220")
        last, greeting = await Session.open(smtp_port, host="127.0.0.3")
        assert greeting and greeting[0].startswith("421 4.7.0") and await last.closed()  # 3 in all
        assert (await first.command(b"QUIT")).startswith("221") and await first.closed()
        again, greeting = await Session.open(smtp_port)
        assert greeting and greeting[0].startswith("220")  # the slot was given back
        for session in (second, third, other, last, again):
            await session.close()
    assert _metric("mailgate_smtp_connections_total", listener="mx", outcome="limit_per_ip") == refused + 1


def test_limits_timeouts_and_messages_on_uvloop() -> None:
    """``mailgate serve`` runs on uvloop, whose transports are not asyncio's classes, only alike."""
    port = RecordingPort()

    async def scenario() -> None:
        async with listening(port, max_connections_per_ip=1, command_timeout=0.5) as smtp_port:
            first, _ = await Session.open(smtp_port)
            second, greeting = await Session.open(smtp_port)
            assert greeting == [f"421 4.7.0 {HOSTNAME} Error: too many connections"] and await second.closed()
            for line in (b"EHLO client.example", b"MAIL FROM:<>", b"RCPT TO:<b@example.org>", b"DATA"):
                assert (await first.command(line))[0] in "23"
            assert (await first.command(b"hi\r\n.")).startswith("250 2.0.0")
            assert await first.last_line() == f"421 4.4.2 {HOSTNAME} Error: timeout exceeded"
            assert await first.closed()
            await first.close()
            await second.close()

    uvloop.run(scenario())
    assert [(e.mail_from, e.data) for e in port.received] == [("", b"hi\r\n")]


async def test_bad_commands_get_precise_codes_and_every_reply_an_enhanced_code() -> None:
    port = RecordingPort()
    expected = [
        (b"MAIL FROM:<a@sender.test>", "503 5.5.1"),  # no HELO yet
        (b"EHLO", "501 5.5.4"),
        (b"HELO client.example", f"250 {HOSTNAME}"),  # HELO's reply takes no enhanced code (RFC 2034)
        (b"RCPT TO:<b@example.org>", "503 5.5.1"),  # no MAIL yet
        (b"DATA", "503 5.5.1"),
        (b"MAIL FROM:", "501 5.5.4"),
        (b"MAIL FROM:<a@sender.test> RET=FULL", "501 5.5.4"),  # ESMTP parameters after HELO
        (b"EHLO client.example", "250 HELP"),
        (b"MAIL FROM:<a@sender.test> RET=FULL", "555 5.5.4"),  # unknown parameter
        (b"MAIL FROM:<a\x01b@sender.test>", "501 5.1.7"),
        (b"MAIL FROM:<a@sender.test>", "250 2.1.0"),
        (b"MAIL FROM:<c@sender.test>", "503 5.5.1"),  # nested
        (b"RCPT TO:<a@b@example.org>", "553 5.1.3"),
        (b"RCPT TO:<a@[192.0.2.1>", "553 5.1.3"),  # the stdlib's parser raises on this one
        (b"RCPT TO:<>", "501 5.1.3"),
        (b"RCPT TO:<\xff@example.org>", "501 5.1.3"),  # not UTF-8
        (b"DATA now", "503 5.5.1"),  # no recipient yet
        (b"AUTH PLAIN AGEAYg==", "503 5.5.1"),
        (b"NOOP " + b"x" * 600, "500 5.5.2"),  # command line too long
        (b"VRFY", "501 5.5.4"),
        (b"EXPN list", "502 5.5.1"),
        (b"RSET now", "501 5.5.4"),
        (b"RSET", "250 2.0.0"),
        (b"", "500 5.5.2"),
        (b"\x00\x01\x02", "500 5.5.2"),
    ]
    async with listening(port) as smtp_port:
        session, _ = await Session.open(smtp_port)
        try:
            for line, want in expected:
                await session.send(line)
                reply = await session.reply()
                assert reply is not None and reply[-1].startswith(want), (line, reply)
                assert all(c >= " " for text in reply for c in text), reply  # printable, whatever was echoed
                if not line.startswith(b"HELO") and not line.startswith(b"EHLO "):
                    assert (m := ENHANCED.match(reply[-1])) and m[1] == m[2], reply
            replies = [await session.command(b"BOGUS%d" % i) for i in range(3)]  # "\x00\x01\x02" was the first
            assert all(r.startswith("500 5.5.2 ") for r in replies)
            assert (await session.command(b"BOGUS")).startswith("502 5.5.1")  # the fifth unrecognised: goodbye
            assert await session.closed()
        finally:
            await session.close()
    assert port.checked == []


async def test_pipelined_commands_are_answered_in_order() -> None:
    port = RecordingPort()
    port.unknown.add("nobody@example.org")
    async with listening(port) as smtp_port:
        session, _ = await Session.open(smtp_port)
        try:
            await session.send(b"EHLO client.example")
            assert "250-PIPELINING" in (await session.reply() or [])
            rcpts = [b"RCPT TO:<b@example.org>", b"RCPT TO:<nobody@example.org>", b"RCPT TO:<c@example.org>"]
            await session.send(b"MAIL FROM:<a@sender.test>", *rcpts, b"DATA")
            codes = [(await session.last_line())[:3] for _ in range(5)]
            assert codes == ["250", "250", "550", "250", "354"]
            await session.send(b"one", b".", b"MAIL FROM:<>", b"RCPT TO:<b@example.org>", b"DATA")
            codes = [(await session.last_line())[:3] for _ in range(4)]
            assert codes == ["250", "250", "250", "354"]
            await session.send(b"two", b".", b"QUIT")
            assert [(await session.last_line())[:3] for _ in range(2)] == ["250", "221"]
        finally:
            await session.close()
    assert [(e.mail_from, e.recipients, e.data) for e in port.received] == [
        ("a@sender.test", ("b@example.org", "c@example.org"), b"one\r\n"),
        ("", ("b@example.org",), b"two\r\n"),
    ]


@pytest.mark.parametrize("fake_end", [b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n", b"\r\n.\r"])
async def test_a_bare_lf_dot_does_not_end_the_message(fake_end: bytes) -> None:
    """SMTP smuggling: a second message hidden behind an end-of-data that some servers accept and
    others do not. Here only CRLF.CRLF ends DATA, so the "second message" is text of the first."""
    port = RecordingPort()
    smuggled = b"MAIL FROM:<ceo@bank.test>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\nSubject: smuggled\r\n\r\nx"
    async with listening(port) as smtp_port:
        session, _ = await Session.open(smtp_port)
        try:
            for line in (b"EHLO client.example", b"MAIL FROM:<a@sender.test>", b"RCPT TO:<b@example.org>", b"DATA"):
                await session.command(line)
            await session.send(b"Subject: hi\r\n\r\nbody" + fake_end + smuggled + b"\r\n.")
            assert (await session.last_line()).startswith("250 2.0.0 Ok: queued as in_1")
            assert await session.command(b"NOOP") == "250 2.0.0 OK"  # no reply of a smuggled command before it
        finally:
            await session.close()
    assert len(port.received) == 1 and b"MAIL FROM:<ceo@bank.test>" in port.received[0].data
    assert [a for a, _ in port.checked] == ["b@example.org"]
