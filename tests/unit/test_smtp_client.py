"""The SMTP client's framing against raw loopback servers that send exactly the bytes each case needs."""

import asyncio
import base64
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailgate.connectors.smtp_client import (
    Response,
    SmtpClient,
    SmtpDisconnected,
    SmtpProtocolError,
    SmtpTimeout,
    auth_plain,
    auth_xoauth2,
    data_payload,
)

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
Serve = Callable[[Script], Awaitable[int]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[asyncio.Server] = []

    async def start(script: Script) -> int:
        server = await asyncio.start_server(script, "127.0.0.1", 0)
        servers.append(server)
        port: int = server.sockets[0].getsockname()[1]
        return port

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


def greeting_then(*chunks: bytes, close: bool = False) -> Script:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 test ESMTP\r\n")
        await reader.readline()
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
            await asyncio.sleep(0.01)  # separate segments: replies split across reads
        if close:
            writer.close()
            return
        await reader.read()  # until the client goes

    return script


async def connect(port: int, timeout: float = 2.0) -> SmtpClient:
    client, greeting = await SmtpClient.connect("127.0.0.1", port, reply_timeout=timeout)
    assert greeting == Response(220, "test ESMTP")
    return client


async def test_a_multi_line_reply_split_across_segments_is_one_response(serve: Serve) -> None:
    port = await serve(
        greeting_then(
            b"250-test greets relay.test\r\n250-PIPE", b"LINING\r\n250-SIZE 1000\r\n", b"250 AUTH PLAIN LOGIN\r\n"
        )
    )
    client = await connect(port)
    reply = await client.ehlo("relay.test")
    assert reply.code == 250 and reply.text.split("\n")[0] == "test greets relay.test"
    assert client.supports("pipelining") and client.extensions["SIZE"] == "1000"
    assert client.auth_methods == {"PLAIN", "LOGIN"}
    client.close()


async def test_pipelined_replies_are_read_in_order(serve: Serve) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 test ESMTP\r\n")
        lines = [await reader.readline() for _ in range(3)]
        writer.write(b"".join(b"250 got " + line.strip() + b"\r\n" for line in lines))
        await reader.read()

    client = await connect(await serve(script))
    replies: list[Response] = []
    await client.pipeline([b"MAIL FROM:<a@b>", b"RCPT TO:<c@d>", b"DATA"], replies, "MAIL")
    assert [r.text for r in replies] == ["got MAIL FROM:<a@b>", "got RCPT TO:<c@d>", "got DATA"]
    client.close()


@pytest.mark.parametrize(
    ("sent", "error", "words"),
    [
        (b"hello there\r\n", SmtpProtocolError, "malformed reply line"),
        (b"25 short\r\n", SmtpProtocolError, "malformed"),
        (b"250-" + b"x" * 70_000 + b"\r\n", SmtpProtocolError, "too long"),
        (b"250-line\r\n" * 150, SmtpProtocolError, "more than 100 lines"),
        (b"250-half a reply", SmtpDisconnected, "closed"),
    ],
)
async def test_what_is_not_a_reply_is_an_error_not_a_hang(
    serve: Serve, sent: bytes, error: type[Exception], words: str
) -> None:
    client = await connect(await serve(greeting_then(sent, close=True)))
    with pytest.raises(error) as caught:
        await client.command(b"NOOP", "NOOP")
    assert words in caught.value.message and caught.value.stage == "NOOP"
    client.close()


async def test_silence_times_out_within_the_reply_timeout(serve: Serve) -> None:
    client = await connect(await serve(greeting_then()), timeout=0.3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(SmtpTimeout) as caught:
        await client.command(b"NOOP", "NOOP")
    assert 0.25 <= loop.time() - started < 1.5 and caught.value.stage == "NOOP"
    client.close()


async def test_a_server_that_never_greets_times_out(serve: Serve) -> None:
    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    with pytest.raises(SmtpTimeout) as caught:
        await SmtpClient.connect("127.0.0.1", await serve(mute), reply_timeout=0.3)
    assert caught.value.stage == "greeting"


async def test_quit_never_raises_even_on_a_dead_connection(serve: Serve) -> None:
    client = await connect(await serve(greeting_then(close=True)))
    await asyncio.sleep(0.05)
    await client.quit(0.5)
    assert not client.is_connected


def test_data_payload_stuffs_dots_and_ends_with_a_lone_dot() -> None:
    assert data_payload(b"Subject: x\r\n\r\n.hidden\r\nok\r\n") == b"Subject: x\r\n\r\n..hidden\r\nok\r\n.\r\n"
    assert data_payload(b".first\r\nlast") == b"..first\r\nlast\r\n.\r\n"
    assert data_payload(b"bare\nlf\rcr\r\n.dot\n") == b"bare\r\nlf\r\ncr\r\n..dot\r\n.\r\n"


@given(st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")), max_size=30))
def test_data_payload_round_trips_through_a_servers_unstuffing(lines: list[bytes]) -> None:
    """What a server reads back (RFC 5321 4.5.2: drop one leading dot, stop at the lone dot) is the
    message with CRLF line endings, whatever its line endings and leading dots were."""
    message = b"\n".join(lines)
    wire = data_payload(message).split(b"\r\n")
    assert wire[-2:] == [b".", b""]
    received = [line[1:] if line.startswith(b".") else line for line in wire[:-2]]
    assert all(line != b"." for line in wire[:-2])
    expected = message.split(b"\n")
    if message.endswith(b"\n"):
        expected.pop()  # the last line's terminator, not an empty line after it
    assert received == expected


def test_auth_encodings() -> None:
    assert base64.b64decode(auth_plain("app", "pw")) == b"\0app\0pw"
    assert base64.b64decode(auth_xoauth2("u@x.test", "tok")) == b"user=u@x.test\x01auth=Bearer tok\x01\x01"


async def test_a_command_with_a_line_break_is_refused_before_anything_is_sent(serve: Serve) -> None:
    received: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 test ESMTP\r\n")
        while line := await reader.readline():
            received.append(line)
            writer.write(b"250 ok\r\n")

    client = await connect(await serve(script))
    for smuggled in (b"MAIL FROM:<a@b>\r\nRCPT TO:<evil@x>", b"RCPT TO:<a@b>\nDATA"):
        with pytest.raises(ValueError, match="CR or LF"):
            await client.pipeline([b"RSET", smuggled], [], "MAIL")
        with pytest.raises(ValueError, match="CR or LF"):
            await client.command(smuggled, "MAIL")
    assert (await client.command(b"NOOP", "NOOP")).code == 250
    await asyncio.sleep(0.05)
    assert received == [b"NOOP\r\n"]
    client.close()
