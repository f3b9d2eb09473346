"""The SMTP relay connector against a real Postfix: mailgate → Postfix (a throwaway instance) → an
SmtpSink, so what Postfix accepted, refused and passed on can all be checked.

The SmtpSink tests prove the connector agrees with aiosmtpd; most relays in the field are Postfix,
which replies, pipelines and closes connections its own way. Needs root and the postfix package
(``scripts/ensure-services.sh``); without them the tests skip, which CI counts as a failure.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from mailgate.connectors.smtp_relay import SmtpRelayConfig, SmtpRelaySender
from mailgate.domain.delivery import Bounced, Deferred, Delivered
from mailgate.testing.postfix import PostfixRelay, PostfixUnavailable
from mailgate.testing.smtp_sink import SmtpSink

pytestmark = pytest.mark.timeout(60)

REFUSED_DOMAIN = "refused.test"


def message(n: int) -> bytes:
    """Date and Message-ID present, so Postfix adds nothing but its Received header; the body has a
    leading dot (dot-stuffing both ways), 8-bit text and trailing spaces, which must all survive."""
    return (
        f"From: App <app@acme.test>\r\nTo: user{n}@example.net\r\nSubject: message {n}\r\n"
        f"Date: Tue, 02 Dec 2025 10:00:00 +0000\r\nMessage-ID: <m{n}@acme.test>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
        f"\r\nbody {n}\r\n.leading dot\r\nGrüße  \r\n\r\nlast line\r\n"
    ).encode()


@dataclass
class Chain:
    relay: PostfixRelay
    sink: SmtpSink
    sender: SmtpRelaySender


@pytest.fixture
async def chain() -> AsyncIterator[Chain]:
    """connector → Postfix, which refuses every recipient in REFUSED_DOMAIN → SmtpSink."""
    async with SmtpSink() as sink:
        relay = PostfixRelay(
            next_hop_port=sink.port,
            main_cf={"smtpd_recipient_restrictions": f"check_recipient_access inline:{{{REFUSED_DOMAIN}=REJECT}}"},
        )
        try:
            await relay.start()
        except PostfixUnavailable as exc:
            pytest.skip(str(exc))
        sender = SmtpRelaySender(
            SmtpRelayConfig(host="127.0.0.1", port=relay.port, tls="none", timeout=10, helo_name="mailgate.test"),
            name="postfix",
        )
        try:
            yield Chain(relay, sink, sender)
        finally:
            print(relay.maillog())  # pytest shows a teardown's output when the test failed
            await sender.close()
            await relay.stop()


async def test_messages_arrive_byte_identical(chain: Chain) -> None:
    originals = {f"user{n}@example.net": message(n) for n in range(12)}
    outcomes = await asyncio.gather(
        *(chain.sender.send("app@acme.test", [rcpt], data) for rcpt, data in originals.items())
    )
    for rcpt, outcome in zip(originals, outcomes, strict=True):
        result = outcome[rcpt]
        assert isinstance(result, Delivered), result
        assert result.reply.code == 250 and result.reply.enhanced == "2.0.0" and "queued as" in result.reply.text

    received = await chain.sink.wait_for(len(originals), timeout=20)
    assert len(received) == len(originals)
    for got in received:
        assert got.mail_from == "app@acme.test" and len(got.rcpt_tos) == 1
        original = originals[got.rcpt_tos[0]]
        prefix, _, rest = got.data.partition(original)
        assert rest == b"", "the message must arrive unchanged after Postfix's own headers"
        assert prefix.startswith(b"Received: from mailgate.test (localhost [127.0.0.1])")
        assert all(line.startswith((b"Received:", b"\t", b" ")) for line in prefix.splitlines())


async def test_several_messages_over_one_connection(chain: Chain) -> None:
    sender = SmtpRelaySender(
        SmtpRelayConfig(host="127.0.0.1", port=chain.relay.port, tls="none", timeout=10, max_connections=1)
    )
    try:
        for n in range(5):
            outcome = await sender.send("app@acme.test", [f"user{n}@example.net"], message(n))
            assert isinstance(outcome[f"user{n}@example.net"], Delivered), outcome
            assert sender.open_connections == 1
    finally:
        await sender.close()  # QUIT: Postfix's smtpd then logs the session's command counts
    await chain.sink.wait_for(5, timeout=20)
    # the one session carried all five transactions, each after the first opened with RSET
    await wait_for_log(chain.relay, " mail=5 rcpt=5 data=5 rset=4 quit=1 commands=")


async def test_recipient_refused_by_postfix_is_bounced_with_its_reply(chain: Chain) -> None:
    refused, accepted = f"nobody@{REFUSED_DOMAIN}", "user1@example.net"
    outcomes = await chain.sender.send("app@acme.test", [refused, accepted], message(1))

    bounced = outcomes[refused]
    assert isinstance(bounced, Bounced), bounced
    assert bounced.reply.code == 554 and bounced.reply.enhanced == "5.7.1"
    assert bounced.reply.text == f"<{refused}>: Recipient address rejected: Access denied"
    assert isinstance(outcomes[accepted], Delivered)
    [got] = await chain.sink.wait_for(1, timeout=20)
    assert got.rcpt_tos == [accepted]


async def test_postfix_stopped_defers_as_connector_fault(chain: Chain) -> None:
    first = await chain.sender.send("app@acme.test", ["user1@example.net"], message(1))
    assert isinstance(first["user1@example.net"], Delivered)
    assert chain.sender.open_connections == 1  # pooled: the next send first finds it dead
    await chain.relay.stop()

    outcome = (await chain.sender.send("app@acme.test", ["user2@example.net"], message(2)))["user2@example.net"]
    assert isinstance(outcome, Deferred), outcome
    assert outcome.connector_fault
    assert outcome.reason.startswith(f"cannot connect to 127.0.0.1:{chain.relay.port}: Connect call failed")


async def wait_for_log(relay: PostfixRelay, fragment: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while fragment not in relay.maillog():
        if time.monotonic() > deadline:
            raise AssertionError(f"{fragment!r} not in Postfix's log within {timeout}s")
        await asyncio.sleep(0.05)
