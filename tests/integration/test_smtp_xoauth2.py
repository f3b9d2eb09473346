"""The SMTP relay with auth=xoauth2: tokens from a real (fake) token endpoint, AUTH XOAUTH2 against a
real aiosmtpd server that checks them, the one retry with a fresh token, and clear failures."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, AuthResult

from mailgate.connectors.smtp_relay import SmtpRelayConfig, SmtpRelaySender
from mailgate.domain.delivery import Deferred, Delivered, DeliveryOutcome
from mailgate.domain.errors import InvalidInput
from mailgate.testing import smtp_sink
from mailgate.testing.fake_gmail import FakeGmail
from mailgate.testing.fake_graph import FakeGraph
from mailgate.testing.smtp_sink import SmtpSink

pytestmark = pytest.mark.timeout(30)

MAILBOX = "relay@example.test"
MESSAGE = b"From: relay@example.test\r\nTo: user@example.net\r\nSubject: hi\r\n\r\nbody\r\n"
GMAIL = {"client_id": "gmail-app", "client_secret": "gsecret", "refresh_token": "1//r"}


class _XOAuth2Handler(smtp_sink._Handler):
    """Speaks AUTH XOAUTH2 the way Gmail does: a refused token gets a 334 with a base64 JSON error,
    then 535 once the client answers the challenge with an empty line."""

    def __init__(self, sink: SmtpSink, valid: Callable[[str], bool]) -> None:
        super().__init__(sink)
        self.valid = valid
        self.attempts: list[str] = []

    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:
        try:
            fields = base64.b64decode(args[1], validate=True).split(b"\x01")
            user = fields[0].removeprefix(b"user=").decode()
            token = fields[1].removeprefix(b"auth=Bearer ").decode()
        except (IndexError, ValueError):
            return AuthResult(success=False, handled=False, message="501 5.5.2 Cannot decode the response")
        self.attempts.append(token)
        if user == MAILBOX and self.valid(token):
            return AuthResult(success=True, auth_data=user)
        error = json.dumps({"status": "401", "schemes": "bearer", "scope": "https://mail.google.com/"})
        await server.challenge_auth(error.encode())
        return AuthResult(success=False, handled=False, message="535 5.7.8 Username and Password not accepted")


class XOAuth2Sink(SmtpSink):
    def __init__(self, valid: Callable[[str], bool], **kwargs: Any) -> None:
        super().__init__(auth=("unused", "unused"), **kwargs)  # any auth makes the sink require AUTH
        self.xoauth2 = _XOAuth2Handler(self, valid)
        self._handler = self.xoauth2


@pytest.fixture
async def gmail() -> AsyncIterator[FakeGmail]:
    async with FakeGmail(**GMAIL, user=MAILBOX) as fake:
        yield fake


@pytest.fixture
async def sink(gmail: FakeGmail) -> AsyncIterator[XOAuth2Sink]:
    server = XOAuth2Sink(gmail.token_valid)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def relays() -> AsyncIterator[list[SmtpRelaySender]]:
    made: list[SmtpRelaySender] = []
    yield made
    for sender in made:
        await asyncio.wait_for(sender.close(), 10)


def relay(made: list[SmtpRelaySender], port: int, **kwargs: Any) -> SmtpRelaySender:
    values: dict[str, Any] = {"tls": "none", "timeout": 5, "helo_name": "relay.test", "username": MAILBOX}
    sender = SmtpRelaySender(SmtpRelayConfig(host="127.0.0.1", port=port, **{**values, **kwargs}), name="relay")
    made.append(sender)
    return sender


def gmail_relay(made: list[SmtpRelaySender], sink: SmtpSink, gmail: FakeGmail, **kwargs: Any) -> SmtpRelaySender:
    return relay(made, sink.port, auth="xoauth2", token_url=gmail.token_url, **{**GMAIL, **kwargs})


def only(outcomes: dict[str, DeliveryOutcome]) -> DeliveryOutcome:
    distinct = set(outcomes.values())
    assert len(distinct) == 1, outcomes
    return distinct.pop()


async def test_logs_in_with_a_token_and_reuses_it_across_connections(
    sink: XOAuth2Sink, gmail: FakeGmail, relays: list[SmtpRelaySender]
) -> None:
    sender = gmail_relay(relays, sink, gmail, max_messages_per_connection=1)

    for _ in range(3):
        assert isinstance(only(await sender.send("bounce@example.test", ["user@example.net"], MESSAGE)), Delivered)

    assert [m.username for m in sink.messages] == [MAILBOX] * 3
    assert sink.messages[0].data.replace(b"\r\n", b"\n") == MESSAGE.replace(b"\r\n", b"\n")
    assert sink.connections == 3
    assert gmail.token_requests == 1


async def test_a_refused_token_is_replaced_once(
    sink: XOAuth2Sink, gmail: FakeGmail, relays: list[SmtpRelaySender]
) -> None:
    sender = gmail_relay(relays, sink, gmail, max_messages_per_connection=1)
    await sender.send("", ["user@example.net"], MESSAGE)
    gmail.expire_tokens()  # revoked server side: the relay's cache does not know yet

    assert isinstance(only(await sender.send("", ["user@example.net"], MESSAGE)), Delivered)
    assert gmail.token_requests == 2
    assert len(sink.xoauth2.attempts) == 3
    assert sink.xoauth2.attempts[1] == sink.xoauth2.attempts[0] != sink.xoauth2.attempts[2]


async def test_a_token_refused_twice_is_a_credentials_failure(gmail: FakeGmail, relays: list[SmtpRelaySender]) -> None:
    async with XOAuth2Sink(lambda token: False) as sink:
        outcome = only(await gmail_relay(relays, sink, gmail).send("", ["user@example.net"], MESSAGE))

    assert isinstance(outcome, Deferred) and outcome.connector_fault
    assert "rejected the connector's credentials" in outcome.reason and "535" in outcome.reason
    assert gmail.token_requests == 2


async def test_wrong_client_secret_is_reported_as_such(
    sink: XOAuth2Sink, gmail: FakeGmail, relays: list[SmtpRelaySender]
) -> None:
    outcome = only(
        await gmail_relay(relays, sink, gmail, client_secret="wrong").send("", ["user@example.net"], MESSAGE)
    )

    assert isinstance(outcome, Deferred) and outcome.connector_fault
    assert "no OAuth2 access token" in outcome.reason and "invalid_client" in outcome.reason
    assert sink.xoauth2.attempts == []


async def test_token_endpoint_outage_defers(sink: XOAuth2Sink, gmail: FakeGmail, relays: list[SmtpRelaySender]) -> None:
    gmail.fail_token(503)

    outcome = only(await gmail_relay(relays, sink, gmail).send("", ["user@example.net"], MESSAGE))

    assert isinstance(outcome, Deferred) and outcome.connector_fault and "503" in outcome.reason


async def test_a_server_without_xoauth2_is_a_connector_fault(gmail: FakeGmail, relays: list[SmtpRelaySender]) -> None:
    async with SmtpSink(auth=("user", "pw")) as sink:
        outcome = only(await gmail_relay(relays, sink, gmail).send("", ["user@example.net"], MESSAGE))

    assert isinstance(outcome, Deferred) and outcome.connector_fault
    assert "does not offer AUTH XOAUTH2" in outcome.reason
    assert gmail.token_requests == 0


async def test_client_credentials_grant_for_exchange_online(relays: list[SmtpRelaySender]) -> None:
    scope = "https://outlook.office365.com/.default"
    entra = FakeGraph(tenant_id="contoso", client_id="app", client_secret="s", scope=scope)
    async with entra, XOAuth2Sink(entra.token_valid) as sink:
        sender = relay(
            relays,
            sink.port,
            auth="xoauth2",
            token_url=f"{entra.base_url}/contoso/oauth2/v2.0/token",
            client_id="app",
            client_secret="s",
            scope=scope,
        )
        outcome = only(await sender.send("", ["user@example.net"], MESSAGE))

    assert isinstance(outcome, Delivered)
    assert entra.token_requests == 1


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"auth": "kerberos"}, "auth"),
        ({"username": None}, "username"),
        ({"password": "pw"}, "password"),
        ({"token_url": None}, "token_url"),
        ({"token_url": "http://accounts.example.com/token"}, "token_url"),
        ({"client_id": None}, "client_id"),
        ({"refresh_token": None}, "refresh_token"),
        ({"refresh_token": None, "client_secret": None, "scope": "s"}, "refresh_token"),
    ],
)
def test_xoauth2_config_is_validated(overrides: dict[str, Any], field: str) -> None:
    values: dict[str, Any] = {
        "host": "smtp.gmail.com",
        "port": 587,
        "username": MAILBOX,
        "auth": "xoauth2",
        "token_url": "https://oauth2.googleapis.com/token",
        **GMAIL,
    }
    with pytest.raises(InvalidInput) as caught:
        SmtpRelayConfig(**{**values, **overrides})
    assert caught.value.field == field


def test_oauth_fields_need_auth_xoauth2() -> None:
    with pytest.raises(InvalidInput) as caught:
        SmtpRelayConfig(host="smtp.example.com", port=587, username="u", password="p", refresh_token="1//r")
    assert caught.value.field == "refresh_token"


def test_client_credentials_without_refresh_token_is_accepted() -> None:
    cfg = SmtpRelayConfig(
        host="smtp.office365.com",
        port=587,
        username=MAILBOX,
        auth="xoauth2",
        token_url="https://login.microsoftonline.com/contoso/oauth2/v2.0/token",
        client_id="app",
        client_secret="s",
        scope="https://outlook.office365.com/.default",
    )
    assert cfg.refresh_token is None
