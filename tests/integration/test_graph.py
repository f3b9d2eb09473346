"""The Graph connector and its OAuth2 token manager against FakeGraph on a real loopback socket: token
reuse and refresh, throttling, outages, permanent refusals, credentials, and recipients that only
the envelope names."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from mailgate.connectors._http import api_copy
from mailgate.connectors.graph import GraphConfig, GraphSender
from mailgate.connectors.oauth2 import TokenError, TokenManager
from mailgate.domain.delivery import Bounced, Deferred, Delivered, DeliveryOutcome, Failed
from mailgate.domain.errors import InvalidInput
from mailgate.testing.fake_graph import FakeGraph
from tests.conftest import free_port

pytestmark = pytest.mark.timeout(30)

TENANT = "contoso.test"
CLIENT = "app-1"
SECRET = "s3cret"
MAILBOX = "sender@contoso.test"
MESSAGE = (
    b"From: sender@contoso.test\r\nTo: Ann <ann@example.net>\r\nCc: bob@example.org\r\n"
    b"Subject: hello\r\nMessage-ID: <1@contoso.test>\r\n\r\nbody\r\n.leading dot\r\n"
)
RCPTS = ["ann@example.net", "bob@example.org"]

SenderFactory = Callable[..., GraphSender]


class Clock:
    """Shared by the fake and the token manager, so tokens expire without anyone sleeping."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def graph(clock: Clock) -> AsyncIterator[FakeGraph]:
    async with FakeGraph(
        tenant_id=TENANT, client_id=CLIENT, client_secret=SECRET, users={MAILBOX}, clock=clock
    ) as fake:
        yield fake


def config(graph: FakeGraph, **overrides: Any) -> GraphConfig:
    values: dict[str, Any] = {
        "tenant_id": TENANT,
        "client_id": CLIENT,
        "client_secret": SECRET,
        "user_id": MAILBOX,
        "base_url": graph.base_url,
        "authority": graph.base_url,
        "timeout": 5,
        **overrides,
    }
    return GraphConfig(**values)


@pytest.fixture
async def make_sender(graph: FakeGraph, clock: Clock) -> AsyncIterator[SenderFactory]:
    made: list[GraphSender] = []

    def make(**overrides: Any) -> GraphSender:
        cfg = config(graph, **overrides)
        tokens = TokenManager.client_credentials(
            cfg.token_url, client_id=cfg.client_id, client_secret=cfg.client_secret, scope=cfg.scope, clock=clock
        )
        sender = GraphSender(cfg, name="graph", tokens=tokens)
        made.append(sender)
        return sender

    yield make
    for sender in made:
        await sender.close()


def only(outcomes: dict[str, DeliveryOutcome]) -> DeliveryOutcome:
    """Graph answers for the whole message: every recipient must get the same outcome."""
    distinct = set(outcomes.values())
    assert len(distinct) == 1, outcomes
    return distinct.pop()


def connector_fault(outcome: DeliveryOutcome, *words: str) -> Deferred:
    assert isinstance(outcome, Deferred), outcome
    assert outcome.connector_fault, outcome
    text = f"{outcome.reason} {outcome.reply or ''}".lower()
    for word in words:
        assert word.lower() in text, text
    return outcome


# ----- delivery and the MIME that arrives -----


async def test_delivers_the_message_byte_for_byte(graph: FakeGraph, make_sender: SenderFactory) -> None:
    outcomes = await make_sender().send("bounces@contoso.test", RCPTS, MESSAGE)

    assert list(outcomes) == RCPTS
    outcome = only(outcomes)
    assert isinstance(outcome, Delivered)
    assert outcome.reply.code == 250
    assert "202 Accepted" in outcome.reply.text and "request-id" in outcome.reply.text
    assert [m.mime for m in graph.sent] == [MESSAGE]
    assert graph.sent[0].user_id == MAILBOX


async def test_non_ascii_message_arrives_intact(graph: FakeGraph, make_sender: SenderFactory) -> None:
    message = "From: sender@contoso.test\r\nTo: jörg@exämple.de\r\nSubject: grüße\r\n\r\nß 漢字\r\n".encode()

    outcome = only(await make_sender().send("", ["jörg@exämple.de"], message))

    assert isinstance(outcome, Delivered)
    assert graph.sent[0].mime == message


# ----- tokens -----


async def test_one_token_serves_many_sends(graph: FakeGraph, make_sender: SenderFactory) -> None:
    sender = make_sender()
    for _ in range(3):
        assert isinstance(only(await sender.send("", RCPTS, MESSAGE)), Delivered)

    assert graph.token_requests == 1
    assert sender.tokens.requests == 1
    assert len({m.token for m in graph.sent}) == 1


async def test_concurrent_sends_cause_one_token_request(graph: FakeGraph, make_sender: SenderFactory) -> None:
    graph.token_delay = 0.2  # every sender arrives while the first token request is still out
    sender = make_sender()

    results = await asyncio.gather(*(sender.send("", RCPTS, MESSAGE) for _ in range(10)))

    assert all(isinstance(only(r), Delivered) for r in results)
    assert graph.token_requests == 1
    assert len(graph.sent) == 10


async def test_concurrent_senders_share_a_token_failure(graph: FakeGraph, make_sender: SenderFactory) -> None:
    graph.token_delay = 0.2
    graph.fail_token(503)
    sender = make_sender()

    results = await asyncio.gather(*(sender.send("", RCPTS, MESSAGE) for _ in range(5)))

    assert all(isinstance(only(r), Deferred) for r in results)
    assert graph.token_requests == 1


async def test_token_is_renewed_shortly_before_it_expires(
    graph: FakeGraph, make_sender: SenderFactory, clock: Clock
) -> None:
    graph.token_lifetime = 3600
    sender = make_sender()
    await sender.send("", RCPTS, MESSAGE)
    clock.now += 3000  # still well inside the lifetime: reused
    await sender.send("", RCPTS, MESSAGE)
    assert graph.token_requests == 1

    clock.now += 580  # 20 s left: too close to send with
    outcome = only(await sender.send("", RCPTS, MESSAGE))

    assert isinstance(outcome, Delivered)
    assert graph.token_requests == 2
    assert graph.sent[2].token != graph.sent[0].token


async def test_a_401_gets_one_fresh_token_and_one_retry(graph: FakeGraph, make_sender: SenderFactory) -> None:
    sender = make_sender()
    await sender.send("", RCPTS, MESSAGE)
    graph.expire_tokens()  # revoked early: our cache still thinks it is good

    outcome = only(await sender.send("", RCPTS, MESSAGE))

    assert isinstance(outcome, Delivered)
    assert graph.token_requests == 2
    assert graph.send_requests == 3
    assert len(graph.sent) == 2


async def test_a_second_401_is_the_connectors_fault(graph: FakeGraph, make_sender: SenderFactory) -> None:
    graph.fail(401, "InvalidAuthenticationToken", "Access token validation failure.", times=2)

    outcome = connector_fault(only(await make_sender().send("", RCPTS, MESSAGE)), "InvalidAuthenticationToken")

    assert outcome.reply is not None and (outcome.reply.code, outcome.reply.enhanced) == (454, "4.7.0")
    assert graph.token_requests == 2
    assert graph.send_requests == 2


async def test_wrong_client_secret_says_so(graph: FakeGraph, make_sender: SenderFactory) -> None:
    outcome = connector_fault(
        only(await make_sender(client_secret="wrong").send("", RCPTS, MESSAGE)),
        "invalid_client",
        "AADSTS7000215",
        "client id and secret",
    )

    assert outcome.reply is not None and outcome.reply.code == 454
    assert graph.send_requests == 0


async def test_token_manager_classifies_endpoint_errors(graph: FakeGraph) -> None:
    def manager(url: str = f"{graph.base_url}/{TENANT}/oauth2/v2.0/token", **overrides: str) -> TokenManager:
        values = {"client_id": CLIENT, "client_secret": SECRET, "scope": "https://graph.microsoft.com/.default"}
        return TokenManager.client_credentials(url, **{**values, **overrides})

    cases: list[tuple[TokenManager, bool, str]] = [
        (manager(client_secret="wrong"), True, "invalid_client"),
        (manager(client_id="nobody"), True, "unauthorized_client"),
        (manager(scope="Mail.Send"), True, "invalid_scope"),
        (manager(url=f"{graph.base_url}/other-tenant/oauth2/v2.0/token"), True, "invalid_request"),
        (manager(url=f"{graph.base_url}/not-a-token-endpoint"), True, "404"),
        (manager(url=f"http://127.0.0.1:{free_port()}/token"), False, "cannot reach"),
    ]
    for tokens, permanent, word in cases:
        with pytest.raises(TokenError) as caught:
            await tokens.token()
        await tokens.aclose()
        assert caught.value.permanent is permanent, caught.value.reason
        assert word in caught.value.reason, caught.value.reason

    graph.fail_token(503)
    tokens = manager()
    with pytest.raises(TokenError) as caught:
        await tokens.token()
    assert not caught.value.permanent
    assert await tokens.token()  # the failure is not cached
    await tokens.aclose()


async def test_invalidate_drops_only_the_refused_token(graph: FakeGraph, make_sender: SenderFactory) -> None:
    tokens = make_sender().tokens
    first = await tokens.token()
    tokens.invalidate("some-older-token")
    assert await tokens.token() == first
    tokens.invalidate(first)
    assert await tokens.token() != first
    assert graph.token_requests == 2


async def test_token_endpoint_outage_is_transient(graph: FakeGraph, make_sender: SenderFactory) -> None:
    graph.fail_token(503)

    outcome = connector_fault(only(await make_sender().send("", RCPTS, MESSAGE)), "no access token", "503")

    assert outcome.reply is None  # nothing to fix in the configuration: the retry will do
    assert graph.send_requests == 0


# ----- throttling and outages -----


async def test_429_defers_citing_retry_after_and_pauses_the_connector(
    graph: FakeGraph, make_sender: SenderFactory
) -> None:
    graph.throttle(retry_after=30)
    sender = make_sender()

    outcome = connector_fault(only(await sender.send("", RCPTS, MESSAGE)), "throttling", "Retry-After: 30s")
    assert outcome.reply is not None and (outcome.reply.code, outcome.reply.enhanced) == (451, "4.4.5")
    assert "429" in outcome.reply.text and "TooManyRequests" in outcome.reply.text

    # the pause holds: no request reaches Graph until Retry-After has passed
    paused = connector_fault(only(await sender.send("", RCPTS, MESSAGE)), "pause")
    assert paused.reply == outcome.reply
    assert graph.send_requests == 1
    assert graph.sent == []


async def test_429_without_retry_after_does_not_pause(graph: FakeGraph, make_sender: SenderFactory) -> None:
    graph.throttle(retry_after=None)
    sender = make_sender()

    connector_fault(only(await sender.send("", RCPTS, MESSAGE)), "throttling")
    assert isinstance(only(await sender.send("", RCPTS, MESSAGE)), Delivered)


async def test_pause_ends_after_retry_after(graph: FakeGraph, make_sender: SenderFactory) -> None:
    graph.throttle(retry_after=1)
    sender = make_sender()
    connector_fault(only(await sender.send("", RCPTS, MESSAGE)))
    await asyncio.sleep(1.05)

    assert isinstance(only(await sender.send("", RCPTS, MESSAGE)), Delivered)


@pytest.mark.parametrize(("status", "code"), [(500, "UnknownError"), (503, "ServiceUnavailable"), (504, "")])
async def test_server_errors_are_connector_faults(
    graph: FakeGraph, make_sender: SenderFactory, status: int, code: str
) -> None:
    graph.fail(status, code, "try later")

    outcome = connector_fault(only(await make_sender().send("", RCPTS, MESSAGE)), "unavailable", str(status))

    assert outcome.reply is not None and (outcome.reply.code, outcome.reply.enhanced) == (451, "4.3.0")


async def test_no_answer_is_a_connector_fault_that_may_have_sent(graph: FakeGraph, make_sender: SenderFactory) -> None:
    graph.hang()

    connector_fault(only(await make_sender(timeout=0.5).send("", RCPTS, MESSAGE)), "0.5s", "may have been sent")


async def test_unreachable_graph_is_a_connector_fault(graph: FakeGraph, make_sender: SenderFactory) -> None:
    sender = make_sender()
    await sender.tokens.token()
    await graph.stop()

    connector_fault(only(await sender.send("", RCPTS, MESSAGE)), "unreachable")


# ----- permanent refusals -----


@pytest.mark.parametrize(
    ("status", "code", "reply"),
    [
        (400, "ErrorInvalidRecipients", (550, "5.1.3")),
        (400, "ErrorMimeContentInvalidBase64String", (554, "5.6.0")),
        (400, "ErrorMessageSizeExceeded", (552, "5.3.4")),
        (413, "RequestEntityTooLarge", (552, "5.3.4")),
    ],
)
async def test_refused_messages_bounce(
    graph: FakeGraph, make_sender: SenderFactory, status: int, code: str, reply: tuple[int, str]
) -> None:
    graph.fail(status, code, "refused by the test")

    outcome = only(await make_sender().send("", RCPTS, MESSAGE))

    assert isinstance(outcome, Bounced), outcome
    assert (outcome.reply.code, outcome.reply.enhanced) == reply
    assert code in outcome.reply.text and "refused by the test" in outcome.reply.text


@pytest.mark.parametrize(
    ("status", "code"), [(403, "ErrorAccessDenied"), (403, "ErrorSendAsDenied"), (404, "MailboxNotEnabledForRESTAPI")]
)
async def test_permission_problems_are_the_connectors_fault(
    graph: FakeGraph, make_sender: SenderFactory, status: int, code: str
) -> None:
    graph.fail(status, code, "Access is denied. Check credentials and try again.")

    outcome = connector_fault(only(await make_sender().send("", RCPTS, MESSAGE)), code, "credentials or permissions")

    assert outcome.reply is not None and outcome.reply.code == 454


async def test_unknown_mailbox_is_the_connectors_fault(graph: FakeGraph, make_sender: SenderFactory) -> None:
    connector_fault(only(await make_sender(user_id="nobody@contoso.test").send("", RCPTS, MESSAGE)), "ErrorInvalidUser")


# ----- recipients: headers versus envelope -----


async def test_envelope_only_recipients_become_bcc(graph: FakeGraph, make_sender: SenderFactory) -> None:
    outcomes = await make_sender().send("", [*RCPTS, "hidden@example.com"], MESSAGE)

    assert all(isinstance(o, Delivered) for o in outcomes.values())
    assert graph.sent[0].mime == b"Bcc: hidden@example.com\r\n" + MESSAGE


async def test_a_bcc_header_names_only_this_deliverys_recipients(graph: FakeGraph, make_sender: SenderFactory) -> None:
    with_bcc = MESSAGE.replace(b"Subject:", b"Bcc: old@example.com,\r\n  hidden@example.com\r\nSubject:", 1)

    await make_sender().send("", [*RCPTS, "hidden@example.com"], with_bcc)

    assert graph.sent[0].mime == b"Bcc: hidden@example.com\r\n" + MESSAGE


async def test_a_visible_address_outside_the_envelope_is_refused(graph: FakeGraph, make_sender: SenderFactory) -> None:
    outcomes = await make_sender().send("", ["ann@example.net"], MESSAGE)

    outcome = outcomes["ann@example.net"]
    assert isinstance(outcome, Failed)
    assert "bob@example.org" in outcome.reason and "SMTP connector" in outcome.reason
    assert graph.send_requests == 0


def test_recipients_compare_without_case() -> None:
    assert api_copy(MESSAGE, ["ANN@Example.NET", "Bob@example.org"], "Graph") == MESSAGE


async def test_addresses_that_would_forge_headers_fail(graph: FakeGraph, make_sender: SenderFactory) -> None:
    outcomes = await make_sender().send("", [*RCPTS, "x@example.com\r\nSubject: forged"], MESSAGE)

    assert isinstance(outcomes["x@example.com\r\nSubject: forged"], Failed)
    assert isinstance(outcomes["ann@example.net"], Delivered)
    assert graph.sent[0].mime == MESSAGE


# ----- lifecycle and configuration -----


async def test_sender_works_again_after_close(graph: FakeGraph, make_sender: SenderFactory) -> None:
    sender = make_sender()
    await sender.send("", RCPTS, MESSAGE)
    await sender.close()

    assert isinstance(only(await sender.send("", RCPTS, MESSAGE)), Delivered)
    assert graph.token_requests == 1  # the token outlives the connection


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"tenant_id": ""}, "tenant_id"),
        ({"tenant_id": "a/b"}, "tenant_id"),
        ({"client_secret": " "}, "client_secret"),
        ({"user_id": "user@x.test/../me"}, "user_id"),
        ({"base_url": "http://graph.example.com"}, "base_url"),
        ({"base_url": "ftp://graph.microsoft.com"}, "base_url"),
        ({"authority": "https://user:pw@login.example.com"}, "authority"),
        ({"timeout": 0}, "timeout"),
    ],
)
def test_config_is_validated(overrides: dict[str, Any], field: str) -> None:
    values: dict[str, Any] = {"tenant_id": TENANT, "client_id": CLIENT, "client_secret": SECRET, "user_id": MAILBOX}
    with pytest.raises(InvalidInput) as caught:
        GraphConfig(**{**values, **overrides})
    assert caught.value.field == field


def test_config_defaults_point_at_microsoft() -> None:
    cfg = GraphConfig(tenant_id=TENANT, client_id=CLIENT, client_secret=SECRET, user_id=MAILBOX)
    assert cfg.token_url == "https://login.microsoftonline.com/contoso.test/oauth2/v2.0/token"
    assert cfg.send_url == "https://graph.microsoft.com/v1.0/users/sender@contoso.test/sendMail"
