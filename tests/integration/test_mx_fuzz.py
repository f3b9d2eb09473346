"""Malformed SMTP sessions against the running MX listener, over real sockets.

Hypothesis writes sessions of valid and invalid commands, junk bytes, over-long lines and random DATA
(bare CR and LF, leading dots, 8 bit, too long, too big). Whatever it writes:

- every reply is well formed: ``ddd`` + space or hyphen, CRLF, printable, a code from SMTP's vocabulary,
  and an enhanced code of the same class wherever RFC 2034 asks for one;
- a local error (``451 4.3.0``) is only ever the answer to the service failing on purpose;
- every message answered ``250`` after DATA was handed to the service exactly once, with exactly the
  bytes sent (less dot-stuffing), its sender, its accepted recipients and its HELO name; none other was;
- the server never closes a session unannounced, and afterwards takes a fresh connection and a message,
  with every connection slot given back.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mailgate.domain.delivery import Reply
from mailgate.domain.inbound import InboundEnvelope
from mailgate.servers.smtp import _common as common_module
from mailgate.servers.smtp import mx as mx_module
from tests.integration.test_mx_listener import RecordingPort, Session, listening

MAX_SIZE = 2000
MAX_RECIPIENTS = 5
PER_IP = 3
LINE_LIMIT = 1001  # aiosmtpd's: 998 octets, CRLF, and a transparent dot
CODES = {214, 220, 221, 250, 252, 354, 421, 451, 452, 454, 500, 501, 502, 503, 504, 530, 550, 552, 553, 554, 555}
REPLY_LINE = re.compile(rb"(\d{3})([ -])([^\x00-\x1f\x7f]*)\r\n")
ENHANCED = re.compile(rb"([245])\.\d{1,3}\.\d{1,3}(?: |$)")
LOCAL_ERROR = b"451 4.3.0 Requested action aborted: local error in processing"
ADDRESS = re.compile(rb"(?i)(?:MAIL FROM|RCPT TO):<([^>]*)>")

ADDRESSES = [
    b"a@example.org",
    b"b@example.org",
    b"unknown@example.org",  # the service refuses it
    b"broken@example.org",  # the service raises on it
    "üser@exämple.org".encode(),
    b'"q p"@example.org',
    b"postmaster",
    b"",
]


class FuzzPort(RecordingPort):
    """Refuses ``unknown@``, raises on ``broken@``, and answers DATA as its ``X-Fail`` header says."""

    def __init__(self) -> None:
        super().__init__()
        self.unknown.add("unknown@example.org")
        self.broken.add("broken@example.org")

    async def receive(self, envelope: InboundEnvelope) -> Reply:
        if b"X-Fail: raise" in envelope.data:
            raise RuntimeError("storage bug")
        if b"X-Fail: 451" in envelope.data:
            return Reply(451, "4.3.0", "cannot store now")
        if b"X-Fail: spam" in envelope.data:
            return Reply(550, "5.7.1", "message refused as spam")
        return await super().receive(envelope)


def _with(keyword: bytes, params: list[bytes]) -> st.SearchStrategy[bytes]:
    return st.builds(lambda a, p: keyword + b"<" + a + b">" + p, st.sampled_from(ADDRESSES), st.sampled_from(params))


ODD_PARAMS = [b"", b" SIZE=10", b" SIZE=999999", b" SIZE=x", b" BODY=8BITMIME", b" SMTPUTF8", b" RET=HDRS", b" X"]
COMMANDS = st.one_of(
    st.sampled_from(
        [
            b"EHLO client.test",
            b"HELO client.test",
            b"ehlo other.test",
            b"EHLO",
            b"RSET",
            b"NOOP",
            b"HELP",
            b"HELP MAIL",
            b"VRFY a@example.org",
            b"EXPN list",
            b"STARTTLS",
            b"AUTH PLAIN AGEAYg==",
            b"DATA",
            b"DATA now",
            b"QUIT",
            b"",
        ]
    ),
    _with(b"MAIL FROM:", ODD_PARAMS),
    _with(b"mail from:", ODD_PARAMS),
    _with(b"RCPT TO:", ODD_PARAMS),
    st.binary(max_size=60).filter(lambda b: b"\n" not in b),  # junk: one line, whatever it holds
    st.text(max_size=40).map(str.encode).filter(lambda b: b"\n" not in b),
    st.integers(500, 2500).map(lambda n: b"NOOP " + b"x" * n),  # over aiosmtpd's command and line limits
)
TERMINATORS = st.sampled_from([b"\r\n", b"\r\n", b"\n"])  # a bare LF ends a command line too
# DATA lines: no CRLF inside (that would make two), but bare CR and LF, leading dots, 8 bit and long ones.
DATA_LINES = st.one_of(
    st.binary(max_size=80).filter(lambda line: b"\r\n" not in line),
    st.sampled_from([b"", b".", b"..", b". x", b"\n.\n", b"\r", b"\n", b".\r", b"\xff\xfe"]),
)
LONG_LINES = st.one_of(  # mostly nothing; else a line about the limit, or enough lines to pass MAX_SIZE
    st.just([]),
    st.just([]),
    st.just([]),
    st.integers(990, 1010).map(lambda n: [b"y" * n]),
    st.integers(1, 6).map(lambda n: [b"z" * 500] * n),
)
BODIES = st.builds(
    lambda marker, lines, long: [marker, *lines, *long],
    st.sampled_from([b"", b"", b"X-Fail: 451", b"X-Fail: spam", b"X-Fail: raise"]),
    st.lists(DATA_LINES, max_size=30),
    LONG_LINES,
)


@dataclass
class Action:
    """Command lines sent in one write (more than one: pipelined), each answered in turn; ``body``
    follows a ``354``."""

    lines: list[bytes]
    terminator: bytes = b"\r\n"
    body: list[bytes] = field(default_factory=list)


def _transaction(
    greeting: list[bytes], mail: bytes, rcpts: list[bytes], body: list[bytes], pipelined: bool
) -> list[Action]:
    """A whole transaction, so that random sessions reach DATA; RFC 2920 style when ``pipelined``."""
    greet = [Action([line]) for line in greeting]
    if pipelined:
        return [*greet, Action([mail, *rcpts, b"DATA"], body=body)]
    return [*greet, Action([mail]), *(Action([rcpt]) for rcpt in rcpts), Action([b"DATA"], body=body)]


TRANSACTIONS = st.builds(
    _transaction,
    st.sampled_from([[], [b"EHLO client.test"], [b"HELO client.test"]]),
    _with(b"MAIL FROM:", [b"", b"", b" BODY=8BITMIME", b" SMTPUTF8", b" SIZE=100"]),
    st.lists(_with(b"RCPT TO:", [b""]), min_size=1, max_size=MAX_RECIPIENTS + 2),
    BODIES,
    st.booleans(),
)
NOISE = st.builds(  # a random line is hardly ever answered 354: a short body will do
    lambda line, terminator, body: [Action([line], terminator, body)],
    COMMANDS,
    TERMINATORS,
    st.lists(DATA_LINES, max_size=3),
)


def sessions(blocks: int) -> st.SearchStrategy[list[Action]]:
    """Up to ``blocks`` pieces, each a random command or a whole transaction, in any order."""
    return st.lists(st.one_of(NOISE, TRANSACTIONS), max_size=blocks).map(lambda parts: [a for p in parts for a in p])


@dataclass
class Transcript:
    """A session as the client saw it, and from that the messages the service must have been handed."""

    expected: list[tuple[str, tuple[str, ...], bytes, str]] = field(default_factory=list)
    mail_from: str | None = None
    recipients: list[str] = field(default_factory=list)
    helo: str = ""

    def track(self, line: bytes, code: int) -> None:
        """Follow the transaction as aiosmtpd does: EHLO/HELO with a name and RSET start it over, a
        ``250`` to MAIL or RCPT adds to it."""
        name, _, arg = line.rstrip(b"\r\n").partition(b" ")
        name = name.upper()
        if name in (b"EHLO", b"HELO") and arg.strip():
            self.mail_from, self.recipients = None, []
            if code == 250:
                self.helo = arg.strip().decode("utf-8", "surrogateescape")
        elif name == b"RSET" and code == 250:
            self.mail_from, self.recipients = None, []
        elif name in (b"MAIL", b"RCPT") and code == 250:
            match = ADDRESS.match(line)
            assert match, f"250 to {line!r}, which names no address this test knows how to read"
            address = match[1].decode("utf-8", "surrogateescape")
            if name == b"MAIL":
                self.mail_from, self.recipients = address, []
            else:
                self.recipients.append(address)

    def answered(self, stored: bytes, code: int) -> None:
        """The final reply to DATA: a 250 means the service holds this message; any reply ends it."""
        if code == 250:
            assert self.mail_from is not None
            self.expected.append((self.mail_from, tuple(self.recipients), stored, self.helo))
        self.mail_from, self.recipients = None, []


def _check_reply(lines: list[bytes], sent: bytes, *, may_fail: bool) -> int:
    """Assert that ``lines`` are one well-formed reply to ``sent``, a local error only if ``may_fail``
    (the service was made to fail); return its code."""
    command = sent.rstrip(b"\r\n").partition(b" ")[0].upper()
    codes = set()
    for raw in lines:
        match = REPLY_LINE.fullmatch(raw)
        assert match, f"malformed reply line {raw!r} to {sent!r}"
        code = int(match[1])
        codes.add(code)
        if code not in (220, 354) and not (command in (b"EHLO", b"HELO") and code == 250):
            enhanced = ENHANCED.match(match[3])
            assert enhanced and enhanced[1] == match[1][:1], f"no enhanced code in {raw!r} to {sent!r}"
    assert len(codes) == 1 and codes <= CODES, f"reply {lines!r} to {sent!r}"
    assert may_fail or not lines[-1].startswith(LOCAL_ERROR), f"local error answering {sent!r}"
    return codes.pop()


async def _read_reply(session: Session) -> list[bytes] | None:
    lines: list[bytes] = []
    while not lines or lines[-1][3:4] == b"-":
        raw = await asyncio.wait_for(session.reader.readline(), 10)
        if not raw:
            assert not lines, f"reply cut short: {lines!r}"
            return None
        lines.append(raw)
    return lines


def _wire(body: list[bytes]) -> bytes:
    """DATA content as sent, without the final dot; a lone dot would end it early, so it goes doubled."""
    return b"".join((b".." if line == b"." else line) + b"\r\n" for line in body)


def _stored(wire: bytes) -> bytes:
    """What the server must make of ``wire``: each line without its first dot (RFC 5321 4.5.2)."""
    return b"".join((line[1:] if line.startswith(b".") else line) + b"\r\n" for line in wire.split(b"\r\n")[:-1])


def _expected_final(wire: bytes, stored: bytes) -> tuple[int, ...]:
    """The codes the final reply to DATA may have."""
    if len(wire) > MAX_SIZE or any(len(line) + 2 > LINE_LIMIT for line in wire.split(b"\r\n")):
        return (500, 552)  # line too long, or too much mail data: aiosmtpd answers whichever came first
    for marker, code in ((b"X-Fail: raise", 451), (b"X-Fail: 451", 451), (b"X-Fail: spam", 550)):
        if marker in stored:
            return (code,)
    return (250,)


async def _reply_to(session: Session, line: bytes, *, may_fail: bool = False) -> tuple[int, list[bytes]]:
    reply = await _read_reply(session)
    assert reply is not None, f"closed without a reply to {line!r}"
    return _check_reply(reply, line, may_fail=may_fail), reply


async def _data(session: Session, body: list[bytes], seen: Transcript) -> None:
    """After a 354: send ``body`` and check the final reply against what the service must have made of it."""
    wire = _wire(body)
    session.writer.write(wire + b".\r\n")
    stored = _stored(wire)
    code, reply = await _reply_to(session, b"DATA", may_fail=b"X-Fail: raise" in stored)
    assert code in _expected_final(wire, stored), (reply, wire)
    event(f"DATA answered {code}")
    seen.answered(stored, code)


async def _step(session: Session, action: Action, seen: Transcript) -> bool:
    """Send one action and check every reply; False once the server has closed the session, which it
    must have announced."""
    session.writer.write(b"".join(line + action.terminator for line in action.lines))
    for line in action.lines:
        code, reply = await _reply_to(session, line, may_fail=line.upper().startswith(b"RCPT TO:<BROKEN@"))
        seen.track(line, code)
        if code == 354:
            assert line is action.lines[-1], f"354 to {line!r}, in the middle of {action.lines!r}"
            await _data(session, action.body, seen)
        elif code in (221, 421) or b"goodbye" in reply[-1]:
            event(f"closed after {code}")
            assert line is action.lines[-1], f"closed after {line!r}, in the middle of {action.lines!r}"
            assert await session.closed()
            return False
    return True


async def _play(smtp_port: int, actions: list[Action], host: str) -> Transcript:
    """One session from ``host``; it ends with QUIT unless the server ended it first."""
    seen = Transcript()
    session, greeting = await Session.open(smtp_port, host)
    try:
        assert greeting and greeting[-1].startswith("220 ")
        for action in [*actions, Action([b"QUIT"])]:
            if not await _step(session, action, seen):
                return seen
        raise AssertionError("QUIT did not end the session")
    finally:
        await session.close()


async def _still_serving(smtp_port: int, port: FuzzPort) -> None:
    """A fresh client gets every connection slot of its address, and its message through."""
    sessions = [(await Session.open(smtp_port))[0] for _ in range(PER_IP)]
    try:
        last = sessions[-1]
        lines = [b"HELO fresh.test", b"MAIL FROM:<a@example.org>", b"RCPT TO:<b@example.org>", b"DATA", b"hi\r\n."]
        assert [(await last.command(line))[:3] for line in lines] == ["250", "250", "250", "354", "250"]
        assert port.received[-1].data == b"hi\r\n" and port.received[-1].helo == "fresh.test"
    finally:
        for session in sessions:
            await session.close()


def _delivered(port: FuzzPort, host: str) -> list[tuple[str, tuple[str, ...], bytes, str]]:
    return [(e.mail_from, e.recipients, e.data, e.helo) for e in port.received if e.client_ip == host]


class Logs:
    """Stands in for the listener's loggers: rendering the tracebacks of the failures this test provokes
    (rich, in a test run) would cost more than the sessions, and what gets logged is a check of its own."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def _record(self, event: str, **_: object) -> None:
        self.events.append(event)

    debug = info = warning = error = exception = _record


@pytest.fixture
async def mx(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[int, FuzzPort]]:
    logs = Logs()
    monkeypatch.setattr(mx_module, "log", logs)
    monkeypatch.setattr(common_module, "log", logs)
    port = FuzzPort()
    options = {"max_message_size": MAX_SIZE, "max_recipients": MAX_RECIPIENTS, "max_connections_per_ip": PER_IP}
    async with listening(port, command_timeout=10.0, data_timeout=10.0, **options) as smtp_port:
        yield smtp_port, port
    assert "smtp session error" not in logs.events  # aiosmtpd's catch-all: an exception nothing else handled


SHARED_LISTENER = [HealthCheck.function_scoped_fixture]  # one listener serves every example, on purpose


@settings(max_examples=150, deadline=None, suppress_health_check=SHARED_LISTENER)
@given(actions=sessions(12))
async def test_random_sessions(mx: tuple[int, FuzzPort], actions: list[Action]) -> None:
    smtp_port, port = mx
    port.received.clear()
    seen = await _play(smtp_port, actions, "127.0.0.2")
    assert _delivered(port, "127.0.0.2") == seen.expected
    await _still_serving(smtp_port, port)


@pytest.mark.fuzz
@pytest.mark.timeout(1200)  # `make fuzz` runs 5000 examples: minutes, not the suite's 120 s
@settings(deadline=None, suppress_health_check=SHARED_LISTENER)
@given(scripts=st.lists(sessions(40), min_size=2, max_size=4))
async def test_random_concurrent_sessions(mx: tuple[int, FuzzPort], scripts: list[list[Action]]) -> None:
    """Several long sessions at once, each from its own address, so that their messages can be told apart."""
    smtp_port, port = mx
    port.received.clear()
    hosts = [f"127.0.0.{i}" for i in range(2, 2 + len(scripts))]
    transcripts = await asyncio.gather(*(_play(smtp_port, a, h) for a, h in zip(scripts, hosts, strict=True)))
    for host, seen in zip(hosts, transcripts, strict=True):
        assert _delivered(port, host) == seen.expected
    await _still_serving(smtp_port, port)
